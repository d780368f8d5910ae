"""Input validation: each JSONL line becomes an ``Item`` or an ``ItemError`` naming its line and field.

Pure: no Redis, no Celery. Duplicate ``custom_id``s are found by the job store (``claim_ids``), so that
the memory of reading a file does not grow with its length; ``duplicate`` makes their error.
"""

import json
from typing import Any

from cascade.workers.items import ErrorCode, Item, ItemError


class Intake:
    """Validates the lines of one job, in order."""

    def __init__(self, max_text_chars: int) -> None:
        self.max_text_chars = max_text_chars

    def parse(self, line_no: int, raw: bytes) -> Item | ItemError:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return _error(line_no, None, ErrorCode.INVALID_UTF8, f"line {line_no}: not valid UTF-8 ({e.reason})")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            return _error(line_no, None, ErrorCode.INVALID_JSON, f"line {line_no}: not JSON ({e.msg})")
        if not isinstance(obj, dict):
            return _error(line_no, None, ErrorCode.NOT_AN_OBJECT, f"line {line_no}: not a JSON object")
        return self._parse_object(line_no, obj)

    def _parse_object(self, line_no: int, obj: dict[str, Any]) -> Item | ItemError:
        custom_id = obj.get("custom_id")
        if custom_id is None:
            return _error(line_no, None, ErrorCode.MISSING_FIELD, f"line {line_no}: field 'custom_id' is missing")
        if not isinstance(custom_id, str) or not custom_id:
            return _error(
                line_no, None, ErrorCode.INVALID_FIELD, f"line {line_no}: field 'custom_id' must be a non-empty string"
            )
        if "body" in obj or "url" in obj:  # OpenAI's batch line: the text is the last user message
            text, problem = _openai_text(obj)
            if problem is not None:
                return _error(line_no, custom_id, problem[0], f"line {line_no}: {problem[1]}")
            obj = {**obj, "text": text}
        problem = _check_text(obj.get("text"), self.max_text_chars) or _check_label(obj.get("label"))
        if problem is not None:
            code, message = problem
            return _error(line_no, custom_id, code, f"line {line_no}: {message}")
        return Item(custom_id=custom_id, text=obj["text"], line=line_no, label=obj.get("label"))


ENDPOINT = "/v1/chat/completions"


def _openai_text(obj: dict[str, Any]) -> tuple[str | None, tuple[ErrorCode, str] | None]:
    if obj.get("method", "POST") != "POST":
        return None, (ErrorCode.INVALID_FIELD, "field 'method' must be POST")
    if obj.get("url") != ENDPOINT:
        return None, (ErrorCode.INVALID_FIELD, f"field 'url' must be {ENDPOINT}")
    body = obj.get("body")
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return None, (ErrorCode.MISSING_FIELD, "field 'body.messages' is missing")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        return None, (ErrorCode.MISSING_FIELD, "field 'body.messages' has no user message")
    content = users[-1].get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    if not isinstance(content, str):
        return None, (ErrorCode.INVALID_FIELD, "field 'body.messages[-1].content' must be text")
    return content, None


def _check_text(text: object, max_chars: int) -> tuple[ErrorCode, str] | None:
    if text is None:
        return ErrorCode.MISSING_FIELD, "field 'text' is missing"
    if not isinstance(text, str) or not text.strip():
        return ErrorCode.INVALID_FIELD, "field 'text' must be a non-empty string"
    if len(text) > max_chars:
        return ErrorCode.TEXT_TOO_LONG, f"field 'text' has {len(text)} characters, over the limit of {max_chars}"
    return None


def _check_label(label: object) -> tuple[ErrorCode, str] | None:
    if label is not None and not isinstance(label, str):
        return ErrorCode.INVALID_FIELD, "field 'label' must be a string when given"
    return None


def duplicate(item: Item) -> ItemError:
    """The error of a valid line whose ``custom_id`` an earlier line already has."""
    message = f"line {item.line}: duplicate custom_id {item.custom_id!r}"
    return _error(item.line, item.custom_id, ErrorCode.DUPLICATE_ID, message)


def _error(line_no: int, custom_id: str | None, code: ErrorCode, message: str) -> ItemError:
    return ItemError(line=line_no, custom_id=custom_id, code=code, message=message)
