"""Input validation: each JSONL line becomes an ``Item`` or an ``ItemError`` naming its line and field.

Pure: no Redis, no Celery. Duplicate ``custom_id``s are found on local disk (``claims.IdClaims``), so that
the memory of reading a file does not grow with its length; ``duplicate`` makes their error.

``Intake.parse`` is total: whatever a line holds, it returns an item or an error, and quickly. Each line is
parsed in isolation under limits (bytes per line, nesting depth, ``custom_id`` and ``label`` length), and every
string kept must be encodable as UTF-8, so that Redis's Lua (cjson), JSON and pydantic all accept it later.
"""

import json
import re
from collections.abc import Collection
from typing import Any, cast

from pydantic_core import from_json

from cascade.workers.items import ErrorCode, Item, ItemError, Message, Role

MAX_CUSTOM_ID_CHARS = 512
"""Longest ``custom_id`` (and ``label``) accepted, in characters."""
MAX_DEPTH = 64
"""Deepest JSON nesting accepted; an OpenAI batch line needs about 6."""
MAX_LINE_BYTES = 16 * 1024 * 1024
"""Longest line accepted, in bytes, unless the text limit needs more (see ``Intake``)."""

Problem = tuple[ErrorCode, str]
"""Why a line is refused: its code and its message, without the line number."""

_decode = json.JSONDecoder().decode  # json.loads of a str, without its per-call checks


def _fast_decode(text: str) -> Any:
    """``json`` on a line pydantic's parser refuses, so that its error (and its message) is ``json``'s."""
    try:
        return from_json(text)
    except ValueError:
        return _decode(text)


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # a JSON string with its escapes; no backtracking
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


class Intake:
    """Validates the lines of one job, in order.

    ``max_line_bytes`` defaults to room for ``max_text_chars`` characters each written as a JSON escape, plus a
    MiB for the rest of the line, and at least ``MAX_LINE_BYTES``. ``models``: the ``body.model`` values an OpenAI
    line may name (the configured LLM and its aliases); None: any."""

    def __init__(
        self,
        max_text_chars: int,
        max_custom_id_chars: int = MAX_CUSTOM_ID_CHARS,
        max_line_bytes: int | None = None,
        max_depth: int = MAX_DEPTH,
        models: Collection[str] | None = None,
    ) -> None:
        self.max_text_chars = max_text_chars
        self.models = None if models is None else frozenset(models)
        self.max_custom_id_chars = max_custom_id_chars
        self.max_line_bytes = max_line_bytes or max(MAX_LINE_BYTES, 12 * max_text_chars + 1024 * 1024)
        self.max_depth = max_depth
        self._too_deep: Problem = ErrorCode.TOO_DEEP, f"JSON nested deeper than {max_depth} levels"

    def parse(self, line_no: int, raw: bytes) -> Item | ItemError:
        """The item of a line (without its line end), or the error that refuses it; never raises."""
        try:
            return self._parse(line_no, raw)
        except Exception as e:  # the last resort: no line may stop the intake
            return _error(line_no, None, ErrorCode.INVALID_LINE, f"could not be read ({type(e).__name__})")

    def too_long(self, line_no: int, size: int) -> ItemError:
        """The error of a line of ``size`` bytes, over ``max_line_bytes``."""
        message = f"the line has {size} bytes, over the limit of {self.max_line_bytes}"
        return _error(line_no, None, ErrorCode.LINE_TOO_LONG, message)

    def _parse(self, line_no: int, raw: bytes) -> Item | ItemError:
        if len(raw) > self.max_line_bytes:
            return self.too_long(line_no, len(raw))
        try:
            text = raw.decode("utf-8")
            # Most lines are one object of strings: one "{" and no "[", so no scan for depth.
            if ("[" in text or text.find("{", 1) >= 0) and _too_deep(raw, self.max_depth):
                return _error(line_no, None, *self._too_deep)
            # A line without escapes is read by pydantic's JSON parser (jiter), three times as fast as ``json``;
            # a line with escapes (which may hold a lone surrogate) by ``json``, whose errors the messages quote.
            obj = _decode(text) if "\\" in text else _fast_decode(text)
        except ValueError as e:
            return _error(line_no, None, *_load_problem(e))
        except RecursionError:
            return _error(line_no, None, *self._too_deep)
        if not isinstance(obj, dict):
            return _error(line_no, None, ErrorCode.NOT_AN_OBJECT, "not a JSON object")
        # Strictly decoded UTF-8 holds no surrogate: only a JSON escape (\\ud800) can make one.
        return self._parse_object(line_no, obj, escaped="\\" in text)

    def _parse_object(self, line_no: int, obj: dict[str, Any], escaped: bool) -> Item | ItemError:
        """The fast checks of a valid line come first; the ``_check_`` functions explain a refusal."""
        custom_id = obj.get("custom_id")
        if not (
            isinstance(custom_id, str)
            and 0 < len(custom_id) <= self.max_custom_id_chars
            and not custom_id.isspace()
            and not (escaped and _unencodable(custom_id))
        ):
            problem = _check_custom_id(custom_id, self.max_custom_id_chars)
            if problem is not None:
                return _error(line_no, None, *problem)
        custom_id = cast(str, custom_id)
        text, field, problem = obj.get("text"), "text", None
        context: list[Message] | None = None
        if "body" in obj or "url" in obj:  # OpenAI's batch line: the text is the last user message
            text, field, problem = _openai_text(obj)
            if problem is None:
                problem = self._check_model(obj["body"])
            if problem is None:
                found = _context(obj["body"]["messages"], field, self.max_text_chars, escaped)
                context, problem = (found or None, None) if isinstance(found, list) else (None, found)
            if "text" in obj:  # two texts: which one the user meant is theirs to say, not ours to guess
                message = "fields 'text' and 'body' are both given: give the text in one of them"
                text, field, problem = None, "text", (ErrorCode.INVALID_FIELD, message)
        label = obj.get("label")
        if problem is None and not (
            isinstance(text, str)
            and 0 < len(text) <= self.max_text_chars
            and not text.isspace()
            and (label is None or (isinstance(label, str) and len(label) <= self.max_custom_id_chars))
            and not (escaped and (_unencodable(text) or (label is not None and _unencodable(label))))
        ):
            problem = _check_text(text, self.max_text_chars, field) or _check_label(label, self.max_custom_id_chars)
        if problem is not None:
            return _error(line_no, custom_id, *problem)
        return Item(custom_id=custom_id, text=cast(str, text), line=line_no, label=label, context=context)

    def _check_model(self, body: dict[str, Any]) -> Problem | None:
        """``body.model``: absent, or one of ``models`` (the configured LLM and CASCADE_LLM_MODEL_ALIASES)."""
        model = body.get("model")
        if model is None or self.models is None or (isinstance(model, str) and model in self.models):
            return None
        shown = repr(model)[:80] if isinstance(model, str) else f"a {type(model).__name__}"
        served = ", ".join(repr(m) for m in sorted(self.models))
        message = (
            f"field 'body.model' is {shown}, not the LLM Cascade runs ({served}); to run such lines on it, add the "
            "name to CASCADE_LLM_MODEL_ALIASES"
        )
        return ErrorCode.INVALID_FIELD, message


def _load_problem(e: ValueError) -> Problem:
    if isinstance(e, UnicodeDecodeError):
        return ErrorCode.INVALID_UTF8, f"not valid UTF-8 ({e.reason})"
    if isinstance(e, json.JSONDecodeError):
        return ErrorCode.INVALID_JSON, f"not JSON ({e.msg})"
    return ErrorCode.INVALID_JSON, f"not JSON ({type(e).__name__})"  # e.g. an integer of too many digits


ENDPOINT = "/v1/chat/completions"


def _openai_text(obj: dict[str, Any]) -> tuple[object, str, Problem | None]:
    """The last user message's text and its field's name, or why there is none."""
    if obj.get("method", "POST") != "POST":
        return None, "method", (ErrorCode.INVALID_FIELD, "field 'method' must be POST")
    if obj.get("url") != ENDPOINT:
        return None, "url", (ErrorCode.INVALID_FIELD, f"field 'url' must be {ENDPOINT}")
    found = _last_user_message(obj.get("body"))
    if isinstance(found, tuple):
        return None, "body", found
    field = f"body.messages[{found}].content"
    content = obj["body"]["messages"][found].get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        content = _text_parts(content, field)
    if isinstance(content, tuple):
        return None, field, content
    if not isinstance(content, str):
        return None, field, (ErrorCode.INVALID_FIELD, f"field '{field}' must be text")
    return content, field, None


_ROLES = {"system": Role.SYSTEM, "developer": Role.SYSTEM, "user": Role.USER, "assistant": Role.ASSISTANT}
"""The roles a line's other messages may have; OpenAI's ``developer`` is a system message."""


def _context(messages: list[Any], text_field: str, max_chars: int, escaped: bool) -> list[Message] | Problem:
    """The messages of ``body.messages`` other than the text's (the last user message), in order: what the LLM
    reads with the text. Their contents together are held to ``max_chars``."""
    context: list[Message] = []
    size = 0
    for i, message in enumerate(messages):
        field = f"body.messages[{i}]"
        if text_field.startswith(field + "."):
            continue
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in _ROLES:
            shown = repr(role)[:40] if isinstance(role, str) else "missing"
            return (
                ErrorCode.INVALID_FIELD,
                f"field '{field}.role' is {shown}: expected system, developer, user or assistant",
            )
        content = message.get("content")
        if isinstance(content, list):
            content = _text_parts(content, f"{field}.content")
        if isinstance(content, tuple):
            return content
        if not isinstance(content, str):
            return ErrorCode.INVALID_FIELD, f"field '{field}.content' must be text (Cascade sends no tool calls)"
        if escaped and _unencodable(content):
            return _check_unicode(f"{field}.content", content) or (ErrorCode.INVALID_UNICODE, field)
        size += len(content)
        context.append(Message(role=_ROLES[role], content=content))
    if size > max_chars:
        return (
            ErrorCode.TEXT_TOO_LONG,
            f"the other messages of 'body.messages' have {size} characters, over the limit of {max_chars}",
        )
    return context


def _last_user_message(body: object) -> int | Problem:
    """The index of the last user message in ``body.messages``."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return ErrorCode.MISSING_FIELD, "field 'body.messages' is missing"
    users = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        return ErrorCode.MISSING_FIELD, "field 'body.messages' has no user message"
    return users[-1]


def _text_parts(parts: list[object], field: str) -> str | Problem:
    """The text parts of a message's content, one a line; images and other parts are not classified."""
    texts = [p.get("text") for p in parts if isinstance(p, dict) and p.get("type") == "text"]
    strings = [t for t in texts if isinstance(t, str)]
    if not texts:
        return ErrorCode.INVALID_FIELD, f"field '{field}' has no text part (only images or other parts)"
    if len(strings) < len(texts):
        return ErrorCode.INVALID_FIELD, f"field '{field}' has a text part that is not a string"
    return "\n".join(strings)


def _check_custom_id(custom_id: object, max_chars: int) -> Problem | None:
    if custom_id is None:
        return ErrorCode.MISSING_FIELD, "field 'custom_id' is missing"
    if not isinstance(custom_id, str) or not custom_id.strip():
        return ErrorCode.INVALID_FIELD, "field 'custom_id' must be a string, not empty nor only spaces"
    return _check_size("custom_id", custom_id, max_chars, ErrorCode.FIELD_TOO_LONG) or _check_unicode(
        "custom_id", custom_id
    )


def _check_text(text: object, max_chars: int, field: str = "text") -> Problem | None:
    if text is None:
        return ErrorCode.MISSING_FIELD, f"field '{field}' is missing"
    if not isinstance(text, str) or not text.strip():
        return ErrorCode.INVALID_FIELD, f"field '{field}' must be a non-empty string"
    return _check_size(field, text, max_chars, ErrorCode.TEXT_TOO_LONG) or _check_unicode(field, text)


def _check_label(label: object, max_chars: int) -> Problem | None:
    if label is None:
        return None
    if not isinstance(label, str):
        return ErrorCode.INVALID_FIELD, "field 'label' must be a string when given"
    return _check_size("label", label, max_chars, ErrorCode.FIELD_TOO_LONG) or _check_unicode("label", label)


def _check_size(field: str, value: str, max_chars: int, code: ErrorCode) -> Problem | None:
    if len(value) > max_chars:
        return code, f"field '{field}' has {len(value)} characters, over the limit of {max_chars}"
    return None


def _check_unicode(field: str, value: str) -> Problem | None:
    """A string that UTF-8 cannot encode (a lone surrogate, from a JSON escape such as ``\\ud800``) would be
    refused later by Redis's cjson or by pydantic's serializer."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return ErrorCode.INVALID_UNICODE, f"field '{field}' holds a lone surrogate at character {e.start}, not UTF-8"
    return None


def _unencodable(value: str) -> bool:
    return _check_unicode("", value) is not None


def _too_deep(raw: bytes, limit: int) -> bool:
    """Whether the JSON of ``raw`` nests deeper than ``limit``, brackets inside strings aside. Cheap: a line of
    few brackets is not scanned, and a scan stops at the first level over the limit."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    for byte in _STRING.sub(b"", raw).translate(None, _NOT_BRACKET):
        depth += 1 if byte in b"[{" else -1
        if depth > limit:
            return True
    return False


def duplicate(item: Item) -> ItemError:
    """The error of a valid line whose ``custom_id`` an earlier line already has."""
    return _error(item.line, item.custom_id, ErrorCode.DUPLICATE_ID, f"duplicate custom_id {item.custom_id!r}")


def _error(line_no: int, custom_id: str | None, code: ErrorCode, message: str) -> ItemError:
    return ItemError(line=line_no, custom_id=custom_id, code=code, message=f"line {line_no}: {message}")
