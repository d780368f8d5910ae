r"""A recorded-answers LLM server: vLLM's OpenAI-compatible chat API, answering with an LLM's RECORDED answers.

    python -m bench.replay_llm --answers ../shared/datasets/banking77/llm_answers/test_gpt4.csv \
        [--host 127.0.0.1] [--port 8010] [--model gpt-4-recorded] [--latency-ms 0] [--check-text TEXT]

It stands in for vLLM so that Cascade can be measured against a strong LLM on machines that cannot run one. Every
figure measured through it comes from RECORDED answers (GPT-4's on Banking77, from the OCaTS paper): the specialist,
the queues, the workers and the policy are real; only the LLM's answers are replayed. Point Cascade at it with
``CASCADE_LLM_URL=http://127.0.0.1:8010/v1 CASCADE_LLM_MODEL=gpt-4-recorded`` (a request for another model gets
vLLM's 404). The answers file is a CSV with ``text``, ``label`` (gold) and ``llm_label`` (the recorded answer).

**Finding the item.** Texts are keyed normalised (whitespace runs collapsed to one space, casefolded). The item is
looked for in the request's user messages, first hit wins:
1. the whole last user message;
2. a ``Message:`` block of the last user message (Cascade's prompt: ``Message:\n{text}\n\nLabels:...``), cut at
   the next ``Header:`` line after a blank line, or at the first blank line;
3. a recorded text contained in a user message, bounded by non-alphanumeric characters: the last user message
   first, then earlier ones, newest first; within a message the longest recorded text wins.
A text recorded twice keeps its first row (Banking77 test has one duplicate, with the same answer); the count of
duplicate rows, and of those whose answers differ, is logged at start-up and exported as ``replay_answers``.

**Answering.** Without ``structured_outputs`` the recorded answer is returned as is (``INVALID_77`` included).
With ``structured_outputs.choice`` the answer is always one of the choices, as from a constrained model:
- the recorded answer is a choice: it is answered (``system_fingerprint: "replay"``);
- it is not (``INVALID_77``, or a label outside Cascade's top-k candidates): the server never invents a correct
  answer. It answers the first choice that differs from the gold label (``"replay-off-choice"``, counted as
  ``replay_requests_total{outcome="off_choice"}``); when every choice is the gold label it answers HTTP 409 with
  ``x-should-retry: false``, so that the item counts as an LLM failure without retries.
Other structured outputs (json, regex, grammar) are refused with 400: they cannot be replayed.

**Contract check.** Cascade's LLM worker refuses a server that does not pick one of the given choices, asking
``Reply with the single word hello and nothing else.`` (``--check-text``; ``''`` turns it off). That prompt, under
``structured_outputs.choice``, is answered with the first choice (``"replay-contract-check"``): the only answer not
taken from the recordings. Any other unknown text gets 404 with OpenAI's error object naming its first 80 chars.

**Confidence and tokens.** Labels are cut into pseudo-tokens of 4 characters. Each carries logprob 0 (probability
1, also for off-choice answers) and, when ``top_logprobs`` is asked for, itself as the only alternative: Cascade
reads confidence 1. Usage is estimated at 4 characters a token: prompt tokens are ceil(chars / 4) + 4 per message
(the chat template), completion tokens the pseudo-tokens sent; ``max_tokens`` truncates (``finish_reason:
length``), as in vLLM.

**Metrics** (``GET /metrics``, a registry of its own): vLLM's ``vllm:num_requests_running``,
``vllm:num_requests_waiting`` (always 0), ``vllm:kv_cache_usage_perc`` (always 0), ``vllm:prompt_tokens_total``,
``vllm:generation_tokens_total`` and ``vllm:e2e_request_latency_seconds`` (labelled ``model_name``), plus
``replay_requests_total{outcome}`` (recorded, off_choice, contract_check, unknown_text, no_wrong_choice,
rejected) and ``replay_answers{kind}``.

In-process (tests): ``uvicorn.run(create_app(path, model))``, or ``with serve_in_thread(create_app(...)) as url``.
"""

import argparse
import asyncio
import csv
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from openai.types import CompletionUsage, Model
from openai.types.chat import ChatCompletion, ChatCompletionMessage, ChatCompletionTokenLogprob
from openai.types.chat.chat_completion import Choice, ChoiceLogprobs
from openai.types.chat.chat_completion_token_logprob import TopLogprob
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MODEL = "gpt-4-recorded"
CHECK_TEXT = "Reply with the single word hello and nothing else."  # Cascade's contract-check prompt
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4  # the chat template's role markers, per message
# vLLM's e2e latency buckets, with finer ones below 0.3 s for replayed answers
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0)

Outcome = Literal["recorded", "off_choice", "contract_check", "unknown_text", "no_wrong_choice", "rejected"]
OUTCOMES: tuple[Outcome, ...] = (
    "recorded",
    "off_choice",
    "contract_check",
    "unknown_text",
    "no_wrong_choice",
    "rejected",
)

log = logging.getLogger("bench.replay_llm")

_MESSAGE = re.compile(r"message\s*:", re.IGNORECASE)
_NEXT_HEADER = re.compile(r"\n[ \t]*\n[ \t]*[^\n:]{1,40}:")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def message_blocks(text: str) -> list[str]:
    """Candidate item texts after each ``Message:`` (the last first), cut at the next header or blank line."""
    blocks = []
    for start in reversed([m.end() for m in _MESSAGE.finditer(text)]):
        rest = text[start:]
        for end in (_NEXT_HEADER.search(rest), _BLANK_LINE.search(rest)):
            blocks.append(rest[: end.start()] if end else rest)
    return blocks


def _contains(haystack: str, needle: str) -> bool:
    """``needle`` occurs in ``haystack`` with no letter or digit right before or after it."""
    start = haystack.find(needle)
    while start >= 0:
        end = start + len(needle)
        if (start == 0 or not haystack[start - 1].isalnum()) and (end == len(haystack) or not haystack[end].isalnum()):
            return True
        start = haystack.find(needle, start + 1)
    return False


@dataclass(frozen=True)
class Recorded:
    text: str
    label: str  # gold
    llm_label: str  # the recorded answer


class Answers:
    """The recorded answers by normalised text, and the texts of the contract check (known, never recorded)."""

    def __init__(
        self, rows: dict[str, Recorded], check_texts: Sequence[str] = (), duplicates: int = 0, conflicting: int = 0
    ) -> None:
        self.rows = rows
        self.checks = {normalise(t) for t in check_texts if t.strip()} - rows.keys()
        self.duplicates = duplicates
        self.conflicting = conflicting
        self._longest_first = sorted(self.rows.keys() | self.checks, key=len, reverse=True)

    @classmethod
    def load(cls, path: Path, check_texts: Sequence[str] = (CHECK_TEXT,)) -> "Answers":
        rows: dict[str, Recorded] = {}
        duplicates = conflicting = 0
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                recorded = Recorded(row["text"], row["label"], row["llm_label"])
                key = normalise(recorded.text)
                if key in rows:  # the first row wins
                    duplicates += 1
                    conflicting += rows[key].llm_label != recorded.llm_label
                else:
                    rows[key] = recorded
        if not rows:
            raise ValueError(f"{path} holds no recorded answer")
        return cls(rows, check_texts, duplicates, conflicting)

    def find(self, user_messages: Sequence[str]) -> str | None:
        """The key of the item in the user messages (oldest first), by the strategy in the module docstring."""
        if not user_messages:
            return None
        last = user_messages[-1]
        for candidate in (last, *message_blocks(last)):
            key = normalise(candidate)
            if key in self.rows or key in self.checks:
                return key
        for message in reversed(user_messages):
            haystack = normalise(message)
            found = next((k for k in self._longest_first if len(k) <= len(haystack) and _contains(haystack, k)), None)
            if found is not None:
                return found
        return None


# --- the request, as much of OpenAI's / vLLM's as the replay needs; other fields are accepted and ignored


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content or [] if p.type == "text" and p.text is not None)


class StructuredOutputs(BaseModel):
    model_config = ConfigDict(extra="allow")
    choice: list[str] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    n: int | None = Field(default=1, ge=1, le=1)
    stream: bool | None = False
    structured_outputs: StructuredOutputs | None = None


class ReplayError(Exception):
    """An answer the server refuses, as OpenAI's error object."""

    def __init__(self, status: int, message: str, code: str, param: str | None, outcome: Outcome) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.outcome = outcome

    def response(self) -> JSONResponse:
        kind = "not_found_error" if self.status == 404 else "invalid_request_error"
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers={"x-should-retry": "false"})


@dataclass(frozen=True)
class Decision:
    label: str
    outcome: Outcome
    fingerprint: str


def decide(answers: Answers, key: str, choices: list[str] | None) -> Decision:
    """The answer to the item ``key`` under the allowed ``choices`` (None: unconstrained)."""
    if key in answers.checks:
        if not choices:
            raise ReplayError(
                404,
                "the contract-check prompt is answered only under structured_outputs.choice",
                "unknown_text",
                "messages",
                "unknown_text",
            )
        return Decision(choices[0], "contract_check", "replay-contract-check")
    row = answers.rows[key]
    if choices is None or row.llm_label in choices:
        return Decision(row.llm_label, "recorded", "replay")
    wrong = next((c for c in choices if c != row.label), None)
    if wrong is None:
        raise ReplayError(
            409,
            f"the recorded answer {row.llm_label!r} is not a choice, and every choice is the gold "
            "label: a replay cannot answer without inventing a correct answer",
            "no_wrong_choice",
            "structured_outputs",
            "no_wrong_choice",
        )
    return Decision(wrong, "off_choice", "replay-off-choice")


def pseudo_tokens(text: str) -> list[str]:
    return [text[i : i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]


def prompt_tokens(messages: Sequence[ChatMessage]) -> int:
    return sum(math.ceil(len(m.text()) / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS for m in messages)


def _logprobs(tokens: Sequence[str], top: int) -> ChoiceLogprobs:
    def entry(t: str) -> TopLogprob:
        return TopLogprob(token=t, logprob=0.0, bytes=list(t.encode()))

    content = [
        ChatCompletionTokenLogprob(token=t, logprob=0.0, bytes=list(t.encode()), top_logprobs=[entry(t)] if top else [])
        for t in tokens
    ]
    return ChoiceLogprobs(content=content)


def build_completion(request: ChatRequest, decision: Decision, model: str) -> ChatCompletion:
    tokens = pseudo_tokens(decision.label)
    limit = request.max_completion_tokens or request.max_tokens
    finish: Literal["stop", "length"] = "stop"
    if limit is not None and len(tokens) > limit:
        tokens, finish = tokens[:limit], "length"
    completion_tokens, prompt = len(tokens), prompt_tokens(request.messages)
    choice = Choice(
        index=0,
        finish_reason=finish,
        message=ChatCompletionMessage(role="assistant", content="".join(tokens)),
        logprobs=_logprobs(tokens, request.top_logprobs or 0) if request.logprobs else None,
    )
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        object="chat.completion",
        created=int(time.time()),
        model=model,
        choices=[choice],
        system_fingerprint=decision.fingerprint,
        usage=CompletionUsage(
            prompt_tokens=prompt, completion_tokens=completion_tokens, total_tokens=prompt + completion_tokens
        ),
    )


def _check_request(request: ChatRequest, model: str) -> list[str] | None:
    """The allowed choices (None: unconstrained); raises ``ReplayError`` for what cannot be replayed."""
    if request.model != model:
        raise ReplayError(404, f"The model `{request.model}` does not exist.", "model_not_found", "model", "rejected")
    if request.stream:
        raise ReplayError(400, "stream is not supported by the replay server", "unsupported", "stream", "rejected")
    outputs = request.structured_outputs
    if outputs is None:
        return None
    if not outputs.choice:
        raise ReplayError(
            400,
            "only a non-empty structured_outputs.choice can be replayed",
            "unsupported",
            "structured_outputs",
            "rejected",
        )
    return outputs.choice


def _unknown(user_messages: Sequence[str]) -> ReplayError:
    last = user_messages[-1] if user_messages else ""
    blocks = message_blocks(last)
    text = " ".join((blocks[0] if blocks else last).split())
    return ReplayError(
        404, f"no recorded answer for the text {text[:80]!r}", "unknown_text", "messages", "unknown_text"
    )


class ReplayMetrics:
    """vLLM's metrics that Cascade's dashboards read, and the replay's own, in a registry of their own."""

    def __init__(self, model: str, answers: Answers) -> None:
        self.registry = CollectorRegistry()
        r, by_model = self.registry, ["model_name"]
        running = Gauge("vllm:num_requests_running", "Requests being answered.", by_model, registry=r)
        self.running = running.labels(model)
        Gauge("vllm:num_requests_waiting", "Requests waiting (always 0).", by_model, registry=r).labels(model)
        Gauge("vllm:kv_cache_usage_perc", "KV cache usage (always 0).", by_model, registry=r).labels(model)
        self.prompt = Counter("vllm:prompt_tokens", "Prompt tokens (estimated).", by_model, registry=r).labels(model)
        self.generation = Counter(
            "vllm:generation_tokens", "Generated tokens (estimated).", by_model, registry=r
        ).labels(model)
        self.latency = Histogram(
            "vllm:e2e_request_latency_seconds",
            "End-to-end latency of answered requests.",
            by_model,
            buckets=LATENCY_BUCKETS,
            registry=r,
        ).labels(model)
        self.requests = Counter("replay_requests", "Chat requests by outcome.", ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        loaded = Gauge("replay_answers", "The recorded answers loaded.", ["kind"], registry=r)
        loaded.labels("texts").set(len(answers.rows))
        loaded.labels("duplicate_rows").set(answers.duplicates)
        loaded.labels("conflicting_duplicates").set(answers.conflicting)


def create_app(
    answers: Path, model: str = DEFAULT_MODEL, latency_ms: float = 0.0, check_texts: Sequence[str] = (CHECK_TEXT,)
) -> FastAPI:
    """The replay server for the answers CSV ``answers``, serving them as ``model``."""
    recorded = Answers.load(answers, check_texts)
    log.info(
        "%d recorded texts from %s (%d duplicate rows, %d with a different answer; the first row wins)",
        len(recorded.rows),
        answers,
        recorded.duplicates,
        recorded.conflicting,
    )
    metrics = ReplayMetrics(model, recorded)
    app = FastAPI(title="Cascade replay LLM (recorded answers)")

    @app.exception_handler(ReplayError)
    async def replay_error(_: Request, error: ReplayError) -> JSONResponse:
        metrics.requests.labels(error.outcome).inc()
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        metrics.requests.labels("rejected").inc()
        return ReplayError(400, str(error.errors())[:500], "invalid_request", None, "rejected").response()

    @app.post("/v1/chat/completions")
    async def chat(request: ChatRequest) -> JSONResponse:
        start = time.perf_counter()
        with metrics.running.track_inprogress():
            if latency_ms > 0:
                await asyncio.sleep(latency_ms / 1000)
            choices = _check_request(request, model)
            user = [m.text() for m in request.messages if m.role == "user"]
            key = recorded.find(user)
            if key is None:
                raise _unknown(user)
            decision = decide(recorded, key, choices)
            completion = build_completion(request, decision, model)
        usage = completion.usage
        assert usage is not None
        metrics.requests.labels(decision.outcome).inc()
        metrics.prompt.inc(usage.prompt_tokens)
        metrics.generation.inc(usage.completion_tokens)
        metrics.latency.observe(time.perf_counter() - start)
        return JSONResponse(completion.model_dump(mode="json", exclude_none=True))

    @app.get("/v1/models")
    async def models() -> dict[str, object]:
        served = Model(id=model, object="model", created=int(time.time()), owned_by="replay")
        return {"object": "list", "data": [served.model_dump(mode="json", exclude_none=True)]}

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` in a thread of this process; yields the base URL (``http://HOST:PORT/v1``)."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the replay server did not start")
            time.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{bound}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.replay_llm", description="vLLM's chat API answering with recorded answers."
    )
    parser.add_argument("--answers", type=Path, required=True, help="CSV with text,label,llm_label")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the served model name")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="simulated delay per request")
    parser.add_argument("--check-text", default=CHECK_TEXT, help="the contract-check prompt ('' to refuse it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = create_app(args.answers, args.model, args.latency_ms, [args.check_text])
    print(f"replaying RECORDED answers from {args.answers} as {args.model!r} on http://{args.host}:{args.port}/v1")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
