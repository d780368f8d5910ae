"""The LLM's prompt: Cascade's instruction, a job's prompt file, and the chat messages of one request.

A prompt file (``cascade-prompt/1``, JSON) adds to Cascade's system prompt (``instructions``) and describes labels
(a ``description`` and a few ``examples`` each). ``render`` turns a text, its candidate labels, the prompt and the
line's own conversation into the messages sent to the LLM; only the candidates' descriptions and examples are
included, so a request stays short. ``Prompt.version`` is the prompt's identity: it keys the answer cache, the
answer memory and the calibrated policy, so that an answer given under another prompt is never reused.
"""

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from cascade.workers.errors import InputError
from cascade.workers.items import Message, Role

__all__ = [
    "PROMPT_FORMAT",
    "PROMPT_VERSION",
    "SYSTEM_PROMPT",
    "USER_TEMPLATE",
    "LabelPrompt",
    "Message",
    "Prompt",
    "check_labels",
    "load_prompt",
    "render",
]

SYSTEM_PROMPT = (
    "You are a text classifier. Read the message and answer with exactly one label from the list, and nothing else."
)
USER_TEMPLATE = "Message:\n{text}\n\nLabels:\n{labels}\n\nAnswer with one label."
PROMPT_VERSION = hashlib.sha256(f"{SYSTEM_PROMPT}\0{USER_TEMPLATE}".encode()).hexdigest()[:16]
"""The default prompt's identity (no prompt file): part of every answer cache key and answer memory name."""

PROMPT_FORMAT = "cascade-prompt/1"
MAX_PROMPT_BYTES = 1024 * 1024
"""Largest prompt file read."""
MAX_EXAMPLE_CHARS = 300
"""An example's text is cut to this many characters (SmolLM2 is served with 2,048 tokens of context)."""


class LabelPrompt(BaseModel):
    """What a prompt file says of one label."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    description: str | None = None
    examples: list[str] = []
    """A few example texts of this label."""


class Prompt(BaseModel):
    """A job's prompt file: instructions added to Cascade's system prompt, and label descriptions and examples."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["cascade-prompt/1"] = "cascade-prompt/1"
    instructions: str | None = None
    """Added to Cascade's system prompt."""
    labels: dict[str, LabelPrompt] = {}

    @property
    def version(self) -> str:
        """SHA-256 (hex, 16 digits) of the canonical JSON with Cascade's templates; ``PROMPT_VERSION`` for the
        default prompt, so that answers cached and remembered without a prompt file stay valid."""
        if self == DEFAULT_PROMPT:
            return PROMPT_VERSION
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(f"{SYSTEM_PROMPT}\0{USER_TEMPLATE}\0{canonical}".encode()).hexdigest()[:16]


DEFAULT_PROMPT = Prompt()


def load_prompt(path: str | Path) -> Prompt:
    """The prompt file at ``path``; ``InputError`` (one line, naming the file and the field) when unusable."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_PROMPT_BYTES:
            raise InputError(f"prompt file {path}: larger than {MAX_PROMPT_BYTES} bytes")
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"prompt file {path}: cannot be read ({type(e).__name__}: {e})") from e
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise InputError(f"prompt file {path}: not JSON ({e})") from e
    try:
        return Prompt.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(the file)"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise InputError(f"prompt file {path}: field '{field}': {first['msg']}{more}") from e


def check_labels(prompt: Prompt, known: Sequence[str], source: str = "the prompt") -> None:
    """``InputError`` naming the labels of ``prompt`` that the model does not know."""
    unknown = sorted(set(prompt.labels) - set(known))
    if unknown:
        shown = ", ".join(repr(label) for label in unknown[:10]) + (" …" if len(unknown) > 10 else "")
        raise InputError(f"{source} describes {len(unknown)} label(s) the model does not know: {shown}")


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_EXAMPLE_CHARS else flat[: MAX_EXAMPLE_CHARS - 1] + "…"


def _user_message(text: str, candidates: Sequence[str], prompt: Prompt, examples: Sequence[tuple[str, str]]) -> str:
    lines = []
    for label in candidates:
        described = prompt.labels.get(label)
        lines.append(f"- {label}: {described.description}" if described and described.description else f"- {label}")
    shown = [
        (example, label) for label in candidates if label in prompt.labels for example in prompt.labels[label].examples
    ]
    shown += list(examples)
    if shown:
        lines += ["", "Examples:", *(f"- {_one_line(example)} => {label}" for example, label in shown)]
    return USER_TEMPLATE.format(text=text, labels="\n".join(lines))


def render(
    text: str,
    candidates: Sequence[str],
    prompt: Prompt | None = None,
    examples: Sequence[tuple[str, str]] = (),
    context: Sequence[Message] = (),
) -> list[dict[str, str]]:
    """The chat messages of one request.

    The system message: the line's own system messages first, then Cascade's label instruction (with the prompt's
    ``instructions``), as one system message (chat templates differ on several). Then the line's other turns, in
    order, and last the user message: the text, the candidate labels (with their descriptions), and the examples
    of the candidates (the prompt file's, then ``examples``: (text, label) pairs, e.g. retrieved neighbours).
    """
    prompt = prompt or DEFAULT_PROMPT
    system = SYSTEM_PROMPT if prompt.instructions is None else f"{SYSTEM_PROMPT}\n\n{prompt.instructions}"
    own_system = [m.content for m in context if m.role is Role.SYSTEM]
    turns = [{"role": m.role.value, "content": m.content} for m in context if m.role is not Role.SYSTEM]
    messages = [{"role": "system", "content": "\n\n".join([*own_system, system])}, *turns]
    messages.append({"role": "user", "content": _user_message(text, candidates, prompt, examples)})
    return messages
