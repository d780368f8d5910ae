"""The LLM tier: an async client for vLLM's OpenAI-compatible chat API.

Each request asks vLLM to constrain the answer to the candidate labels (``structured_outputs.choice``) and to
return log-probabilities, so every answer is a valid label and carries a confidence. Requests of a chunk are
sent concurrently, bounded by a semaphore: vLLM batches what is in flight. The ``openai`` client retries
connection errors, timeouts, 429 and 5xx answers with exponential backoff.
"""

import asyncio
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletion

from cascade.monitoring.metrics import STAGE_SECONDS
from cascade.workers.config import LLMConfig
from cascade.workers.errors import LLMContractError, LLMError
from cascade.workers.items import Message
from cascade.workers.prompts import PROMPT_VERSION, SYSTEM_PROMPT, USER_TEMPLATE, Prompt, render

__all__ = [
    "BAD",
    "PROMPT_VERSION",
    "SYSTEM_PROMPT",
    "USER_TEMPLATE",
    "LLMAnswer",
    "LLMClient",
    "build_messages",
    "choice_confidence",
    "estimate_tokens",
]
"""The prompt's templates and default version live in ``cascade.workers.prompts``; they are re-exported here."""


# The contract check: an unconstrained model answers "hello"; a constrained one must pick a choice.
_CHECK_PROMPT = "Reply with the single word hello and nothing else."
_CHECK_CHOICES = ["zq-alpha-7", "zq-beta-9"]


@dataclass(frozen=True)
class LLMAnswer:
    label: str
    confidence: float
    prompt_tokens: int
    completion_tokens: int


def build_messages(text: str, candidates: Sequence[str]) -> list[dict[str, str]]:
    """The messages of a request with the default prompt and no conversation (``prompts.render``)."""
    return render(text, candidates)


def _kind(error: openai.APIError) -> str:
    if isinstance(error, openai.APITimeoutError):
        return "timeout"
    if isinstance(error, openai.APIConnectionError):
        return "connection"
    if isinstance(error, openai.APIStatusError):
        return f"status_{error.status_code // 100}xx"
    return "other"


def estimate_tokens(text: str, top_k: int, context: Sequence[Message] = ()) -> float:
    """Rough prompt + completion tokens of one request, before it is sent (about 4 characters a token)."""
    return (len(SYSTEM_PROMPT) + len(text) + sum(len(m.content) for m in context)) / 4 + 30 + 8 * (top_k or 20)


def choice_confidence(tokens: Sequence[dict[str, Any]], candidates: Sequence[str]) -> float:
    """Probability of the chosen label among the candidates, from per-token log-probabilities.

    At each position the chosen token's probability is renormalised over the top alternatives that keep the
    answer a prefix of some candidate; the label's probability is the product over its tokens. With vLLM's
    processed log-probabilities (masked tokens at -9999) this is the constrained sequence probability; with raw
    ones it is the same quantity estimated from the top alternatives.
    """
    prefix = ""
    confidence = 1.0
    for position in tokens:
        token = str(position["token"])
        chosen = math.exp(float(position["logprob"]))
        allowed = chosen
        for alt in position.get("top_logprobs") or []:
            alt_token = str(alt["token"])
            if alt_token != token and any(c.startswith(prefix + alt_token) for c in candidates):
                allowed += math.exp(float(alt["logprob"]))
        confidence *= chosen / allowed if allowed > 0 else 0.0
        prefix += token
    return min(max(confidence, 0.0), 1.0)


BAD = "bad_response"
"""The error kind of an answer that is not a well-formed chat completion (no choices, no message, not JSON)."""


def _answer(response: ChatCompletion, candidates: Sequence[str]) -> LLMAnswer:
    """The label and its confidence from a completion; ``LLMError`` (bad_response) for any malformed one."""
    try:
        choice = response.choices[0]
        label = (choice.message.content or "").strip()
        tokens = [t.model_dump() for t in (choice.logprobs.content or [])] if choice.logprobs else []
        usage = response.usage
        prompt, completion = (int(usage.prompt_tokens), int(usage.completion_tokens)) if usage else (0, 0)
        confidence = choice_confidence(tokens, candidates) if tokens else float("nan")
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
        raise LLMError(f"the server's completion is malformed ({type(e).__name__}: {e})", BAD) from e
    if label not in candidates:
        raise LLMContractError(f"the server answered {label[:80]!r}, which is not one of the candidates")
    return LLMAnswer(label=label, confidence=confidence, prompt_tokens=prompt, completion_tokens=completion)


class LLMClient:
    """Classifies texts among candidate labels with a vLLM server. Create and use it inside one event loop."""

    def __init__(self, config: LLMConfig, top_logprobs: int = 5, http_client: httpx2.AsyncClient | None = None) -> None:
        self.model = config.model
        self.url = config.url
        self.max_tokens = config.max_tokens
        self.concurrency = config.concurrency
        self.top_logprobs = top_logprobs
        self._client = AsyncOpenAI(
            base_url=config.url,
            api_key=config.api_key,
            timeout=config.timeout,
            max_retries=config.max_retries,
            http_client=http_client,
        )

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> "LLMClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def classify(
        self, text: str, candidates: Sequence[str], prompt: Prompt | None = None, context: Sequence[Message] = ()
    ) -> LLMAnswer:
        """One item, under the job's ``prompt`` and with its line's own messages (``prompts.render``); raises
        ``LLMError`` when the server still fails after its retries."""
        if not candidates:
            raise ValueError("no candidate labels")
        start = time.perf_counter()
        try:
            response = await self._client.chat.completions.create(
                model=self.model,
                messages=render(text, candidates, prompt, context=context),  # type: ignore[arg-type]
                max_tokens=self.max_tokens,
                temperature=0.0,
                logprobs=True,
                top_logprobs=self.top_logprobs,
                extra_body={"structured_outputs": {"choice": list(candidates)}},
            )
        except openai.APIError as e:
            raise LLMError(f"{type(e).__name__}: {e}", kind=_kind(e)) from e
        except Exception as e:  # a 200 that is no chat completion (not JSON, an HTML page): the client's parse fails
            raise LLMError(f"the server's answer is not a chat completion ({type(e).__name__}: {e})", BAD) from e
        finally:
            STAGE_SECONDS.labels(stage="llm_request").observe(time.perf_counter() - start)
        return _answer(response, candidates)

    async def classify_each(
        self, requests: Sequence[tuple[str, Sequence[str]]]
    ) -> AsyncIterator[tuple[int, LLMAnswer | LLMError]]:
        """Many items at once, at most ``concurrency`` in flight, each answer (or its error) yielded with its index
        as soon as it arrives, so that the caller can record it at once."""
        gate = asyncio.Semaphore(self.concurrency)

        async def one(i: int, text: str, candidates: Sequence[str]) -> tuple[int, LLMAnswer | LLMError]:
            async with gate:
                try:
                    return i, await self.classify(text, candidates)
                except LLMError as e:
                    return i, e

        tasks = [asyncio.ensure_future(one(i, t, c)) for i, (t, c) in enumerate(requests)]
        try:
            for done in asyncio.as_completed(tasks):
                yield await done
        finally:
            for task in tasks:
                task.cancel()

    async def classify_many(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[LLMAnswer | LLMError]:
        """Many items at once; the answers in the order of the requests."""
        answers: dict[int, LLMAnswer | LLMError] = {}
        async for i, answer in self.classify_each(requests):
            answers[i] = answer
        return [answers[i] for i in range(len(requests))]

    async def check_constrained(self) -> None:
        """Refuse a server that does not constrain its answers to the given choices."""
        try:
            answer = await self.classify(_CHECK_PROMPT, _CHECK_CHOICES)
        except LLMContractError as e:
            raise LLMContractError(
                f"the LLM server at {self.url} ignores structured_outputs ({e}); Cascade needs a vLLM version "
                "that constrains output with structured_outputs.choice (vLLM 0.12 or later)"
            ) from e
        except LLMError as e:
            raise LLMError(f"the LLM server at {self.url} (model {self.model!r}) does not answer: {e}") from e
        if answer.label not in _CHECK_CHOICES:  # classify() already enforces this; kept for clarity
            raise LLMContractError(f"the LLM server at {self.url} does not constrain its output")
