"""The answer cache: an LLM answer is bought once, then shared by every worker, across jobs.

An answer is keyed by ``answer_key``: the model, the prompt's version, the candidate labels as a *set*, the
normalised text, and the digest of the line's own messages when it has some (``context_digest``: an answer given
under another system prompt is never reused). The set, not the order the prompt lists the candidates in (the
specialist's order, which moves with its confidences and versions): the same question among the same choices is
the same question. Only answers are cached, never an LLM error.

``resolve`` takes a chunk's distinct keys to their answers: ``AnswerCache.claim`` sorts them into answers already
cached, keys this caller now asks the LLM about (``Claim.MINE``) and keys another worker is asking about right now
(``Claim.THEIRS``), which are polled until their answer is there or their claim lapses (then claimed and asked
here). The cache's implementations: ``cascade.broker.answer_cache.RedisAnswerCache`` for production,
``cascade.workers.memory.MemoryAnswerCache`` for unit tests.
"""

import asyncio
import contextlib
import hashlib
import json
import math
import unicodedata
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from pydantic import BaseModel, ConfigDict

from cascade.workers.errors import LLMError
from cascade.workers.items import Message
from cascade.workers.llm import LLMAnswer, LLMClient
from cascade.workers.prompts import DEFAULT_PROMPT, Prompt


def normalise(text: str) -> str:
    """The text as the cache compares it: Unicode NFKC, case-folded, every run of whitespace one space, stripped."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(folded.split())


def context_digest(context: Sequence[Message]) -> str:
    """SHA-256 (hex) of a line's own messages (roles and exact contents, in order)."""
    messages = [[m.role.value, m.content] for m in context]
    return hashlib.sha256(json.dumps(messages, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def answer_key(
    model: str, prompt_version: str, candidates: Sequence[str], text: str, context: Sequence[Message] | None = None
) -> str:
    """SHA-256 (hex) of the model, the prompt's version (``Prompt.version``), the sorted candidate set, the
    normalised text and, for a line with its own messages (a system prompt, earlier turns), their digest, as one
    JSON array (so no field can run into the next). The key is the candidate *set*: the order the prompt lists them
    in is not part of it. A line without context keeps the key it had before contexts were carried."""
    fields: list[object] = [model, prompt_version, sorted(set(candidates)), normalise(text)]
    if context:
        fields.append(context_digest(context))
    return hashlib.sha256(json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Question:
    """What one answer key asks the LLM: a text among candidates, with the line's own messages."""

    text: str
    candidates: Sequence[str]
    context: Sequence[Message] = ()


class CachedAnswer(BaseModel):
    """One cached LLM answer, with what it cost when it was bought and where it came from."""

    model_config = ConfigDict(frozen=True)

    label: str
    confidence: float
    prompt_tokens: int
    completion_tokens: int
    model: str
    prompt_version: str

    @classmethod
    def of(cls, answer: LLMAnswer, model: str, prompt_version: str) -> "CachedAnswer":
        confidence = answer.confidence if math.isfinite(answer.confidence) else 0.0  # as the record keeps it
        return cls(
            label=answer.label,
            confidence=confidence,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            model=model,
            prompt_version=prompt_version,
        )

    def answer(self) -> LLMAnswer:
        return LLMAnswer(self.label, self.confidence, self.prompt_tokens, self.completion_tokens)


class Claim(str, Enum):
    """What ``claim`` says of a key that has no cached answer."""

    MINE = "mine"
    """Claimed by this caller: it asks the LLM, then ``put``s the answer (or ``release``s the claim)."""
    THEIRS = "theirs"
    """Another caller holds the claim and is asking the LLM now: wait for its answer."""


class AnswerCache(Protocol):
    """LLM answers by ``answer_key``, shared by every worker, and the claims that keep one key asked once."""

    def get(self, keys: Sequence[str]) -> dict[str, CachedAnswer]:
        """The cached answers among ``keys`` (the others are left out)."""
        ...

    def claim(self, keys: Sequence[str], owner: str, seconds: float) -> dict[str, CachedAnswer | Claim]:
        """Each key's cached answer; or else a claim for ``seconds``: ``MINE`` when no one else holds one (a claim
        ``owner`` already holds is renewed), ``THEIRS`` when another owner does."""
        ...

    def put(self, answers: Mapping[str, CachedAnswer]) -> None:
        """Store answers (the first answer stored for a key stays) and drop their claims."""
        ...

    def release(self, keys: Sequence[str], owner: str) -> None:
        """Drop ``owner``'s claims on ``keys`` (its LLM request failed), so that another caller may ask."""
        ...


class CacheResult(str, Enum):
    """How an escalated item got its LLM answer (the label of ``cascade_llm_cache_total``)."""

    HIT = "hit"
    """From the cache: bought earlier."""
    SHARED = "shared"
    """Another request's answer: a duplicate in its chunk, or another worker's request, waited for."""
    MISS = "miss"
    """The LLM was asked (and paid for)."""
    MEMORY = "memory"
    """The answer memory answered (the agreeing LLM answers of near neighbours, ``cascade.workers.recall``)."""


@dataclass(frozen=True)
class Resolution:
    """One key's answer: from the cache (``HIT``), waited for (``SHARED``), or asked (``MISS``: or its error)."""

    key: str
    answer: LLMAnswer | LLMError
    result: CacheResult


@dataclass(frozen=True)
class Claiming:
    """How a chunk claims its keys: as ``owner``, for ``seconds`` (renewed while asking), polling every
    ``poll_seconds`` for the keys another worker is asking about."""

    owner: str
    seconds: float
    poll_seconds: float = 0.5


class _Asking:
    """One chunk's distinct requests on their way to answers; they arrive in ``done`` (or what went wrong)."""

    def __init__(
        self, client: LLMClient, requests: Mapping[str, Question], claiming: Claiming, prompt: Prompt | None
    ) -> None:
        self.client, self.requests, self.claiming, self.prompt = client, requests, claiming, prompt
        self.done: asyncio.Queue[Resolution | BaseException] = asyncio.Queue()
        self.gate = asyncio.Semaphore(client.concurrency)
        self.asking: dict[str, asyncio.Task[None]] = {}
        self.theirs: set[str] = set()
        self.resolved: set[str] = set()

    def take(self, key: str, outcome: CachedAnswer | Claim, found: CacheResult) -> None:
        if isinstance(outcome, CachedAnswer):
            self.theirs.discard(key)
            self.done.put_nowait(Resolution(key, outcome.answer(), found))
        elif outcome is Claim.MINE:
            self.theirs.discard(key)
            self.asking[key] = asyncio.ensure_future(self._ask(key))
        else:
            self.theirs.add(key)

    async def _ask(self, key: str) -> None:
        question = self.requests[key]
        try:
            async with self.gate:
                try:
                    answer: LLMAnswer | LLMError = await self.client.classify(
                        question.text, question.candidates, self.prompt, question.context
                    )
                except LLMError as e:
                    answer = e
            self.done.put_nowait(Resolution(key, answer, CacheResult.MISS))
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # whatever else (a bug, the process told to stop) reaches the chunk
            self.done.put_nowait(e)

    async def watch(self, cache: AnswerCache) -> None:
        """Poll the keys another worker is asking about; renew this chunk's claims while its requests run."""
        loop = asyncio.get_running_loop()
        renew_at = loop.time() + self.claiming.seconds / 3
        try:
            while True:
                await asyncio.sleep(self.claiming.poll_seconds)
                if self.theirs:
                    outcome = cache.claim(sorted(self.theirs), self.claiming.owner, self.claiming.seconds)
                    for key, found in outcome.items():
                        self.take(key, found, CacheResult.SHARED)  # MINE: their claim lapsed unanswered
                if loop.time() >= renew_at:
                    renew_at = loop.time() + self.claiming.seconds / 3
                    if mine := self.unanswered():
                        cache.claim(mine, self.claiming.owner, self.claiming.seconds)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            self.done.put_nowait(e)

    def unanswered(self) -> list[str]:
        """The keys this chunk claimed and has no answer for yet."""
        return [key for key in self.asking if key not in self.resolved]

    def stop(self) -> None:
        for task in self.asking.values():
            task.cancel()


async def resolve(
    client: LLMClient,
    requests: Mapping[str, Question],
    cache: AnswerCache | None,
    claiming: Claiming,
    prompt: Prompt | None = None,
) -> AsyncGenerator[Resolution, None]:
    """Each key of ``requests`` (key -> the question to ask) to its answer, as each arrives: from the cache, from
    another worker's request, or from the LLM (under ``prompt``), at most ``client.concurrency`` requests in flight.
    Each answer bought is ``put`` before it is yielded, each failed request ``release``d. Without a cache every key
    is asked. Close it (``contextlib.aclosing``): a chunk that stops releases the claims it has not answered."""
    asking = _Asking(client, requests, claiming, prompt)
    version = (prompt or DEFAULT_PROMPT).version
    watcher: asyncio.Task[None] | None = None
    try:
        if cache is None:
            outcome: dict[str, CachedAnswer | Claim] = dict.fromkeys(requests, Claim.MINE)
        else:
            outcome = cache.claim(list(requests), claiming.owner, claiming.seconds)
            watcher = asyncio.ensure_future(asking.watch(cache))
        for key, found in outcome.items():
            asking.take(key, found, CacheResult.HIT)
        for _ in range(len(requests)):
            item = await asking.done.get()
            if isinstance(item, BaseException):
                raise item
            if cache is not None and item.result is CacheResult.MISS:
                _settle(cache, item, claiming.owner, client.model, version)
            asking.resolved.add(item.key)
            yield item
    finally:
        if watcher is not None:
            watcher.cancel()
        asking.stop()
        if cache is not None and (unanswered := asking.unanswered()):
            with contextlib.suppress(Exception):  # Redis gone: the claims lapse by themselves
                cache.release(unanswered, claiming.owner)


def _settle(cache: AnswerCache, item: Resolution, owner: str, model: str, prompt_version: str) -> None:
    """A key this chunk asked about: its answer into the cache, or, the request failed, its claim dropped."""
    if isinstance(item.answer, LLMAnswer):
        cache.put({item.key: CachedAnswer.of(item.answer, model, prompt_version)})
    else:
        cache.release([item.key], owner)
