"""The LLM chunk with the answer cache, over the in-memory store and the in-memory answer cache (a fake), against a
fake LLM server (an httpx transport: it counts the requests). The real Redis cache is tested in
tests/broker/test_answer_cache.py, the whole path through workers and vLLM in tests/test_e2e_answer_cache.py."""

import asyncio
import json
import time
from collections.abc import Callable, Sequence

import httpx2
import pytest
from prometheus_client import REGISTRY

from cascade.workers.answers import CachedAnswer, Claim, Claiming, answer_key
from cascade.workers.config import LLMConfig
from cascade.workers.items import AnswerSource, Escalation, Item, ItemResult, Route, Tier
from cascade.workers.jobs import JobSpec, JobStatus
from cascade.workers.llm import PROMPT_VERSION, LLMAnswer, LLMClient
from cascade.workers.memory import MemoryAnswerCache, MemoryJobStore
from cascade.workers.pipeline import run_llm_chunk

PRICE = 1e-6
SPEC = JobSpec(model_path="m", model_sha256="s", threshold=0.5, top_k=2, llm_model="m", usd_per_llm_token=PRICE)
CONFIG = LLMConfig(
    url="http://llm.test/v1", model="m", api_key="k", concurrency=4, timeout=5, max_retries=0, max_tokens=8
)
FAST = Claiming(owner="this-worker", seconds=30, poll_seconds=0.05)


class Killed(BaseException):
    """Stands for the worker process being killed: nothing below it catches it."""


class FakeLLM:
    """A fake vLLM server: answers each request with the last of its candidates in sorted order (3 prompt tokens
    and 1 completion token), answers HTTP 500 to a text that says "fail", keeps the texts it was asked about."""

    def __init__(self, delay: float = 0.0, killed_at: int | None = None) -> None:
        self.delay, self.killed_at = delay, killed_at
        self.asked: list[str] = []

    async def handle(self, request: httpx2.Request) -> httpx2.Response:
        user = json.loads(request.content)["messages"][-1]["content"]
        text = user.removeprefix("Message:\n").split("\n\nLabels:\n")[0]
        labels = [line[2:] for line in user.split("\n\nLabels:\n")[1].split("\n\n")[0].splitlines()]
        self.asked.append(text)
        if self.killed_at is not None and len(self.asked) >= self.killed_at:
            raise Killed
        await asyncio.sleep(self.delay)
        if "fail" in text:
            return httpx2.Response(500, json={"error": {"message": "down"}})
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": max(labels)}}
        body = {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]}
        return httpx2.Response(200, json={**body, "usage": {"prompt_tokens": 3, "completion_tokens": 1}})


def key(text: str, candidates: Sequence[str] = ("a", "b")) -> str:
    return answer_key(CONFIG.model, PROMPT_VERSION, candidates, text)


def job(
    store: MemoryJobStore,
    texts: list[str],
    spec: JobSpec = SPEC,
    candidates: Callable[[int], list[str]] = lambda i: ["a", "b"],
    explore: set[int] = frozenset(),  # type: ignore[assignment]
) -> tuple[str, list[Escalation]]:
    items = [Item(custom_id=f"c{i}", text=t, line=i + 1, label="b") for i, t in enumerate(texts)]
    job_id = store.create(spec)
    store.put_chunk(job_id, 0, items)
    store.finish_intake(job_id, total=len(items), chunks=1)
    escalations = [
        Escalation(
            custom_id=i.custom_id,
            line=i.line,
            text=i.text,
            gold=i.label,
            specialist_label="a",
            specialist_confidence=0.3,
            candidates=candidates(n),
            route=Route.EXPLORE if n in explore else Route.ESCALATE,
        )
        for n, i in enumerate(items)
    ]
    return job_id, escalations


def run(
    store: MemoryJobStore,
    job_id: str,
    escalations: list[Escalation],
    llm: FakeLLM,
    cache: MemoryAnswerCache | None,
    claiming: Claiming = FAST,
    config: LLMConfig = CONFIG,
    meanwhile: Callable[[asyncio.AbstractEventLoop], None] = lambda loop: None,
) -> list[tuple[Escalation, LLMAnswer]]:
    async def go() -> list[tuple[Escalation, LLMAnswer]]:
        meanwhile(asyncio.get_running_loop())
        http = httpx2.AsyncClient(transport=httpx2.MockTransport(llm.handle))
        async with LLMClient(config, http_client=http) as client:
            return await run_llm_chunk(store, client, job_id, 0, escalations, cache=cache, claiming=claiming)

    return asyncio.run(go())


def counted() -> dict[str, float]:
    """The cache results and the LLM cost counted so far in this process."""
    values = {
        r: REGISTRY.get_sample_value("cascade_llm_cache_total", {"result": r}) or 0.0 for r in ("hit", "shared", "miss")
    }
    values["cost"] = REGISTRY.get_sample_value("cascade_cost_usd_total", {"tier": "llm"}) or 0.0
    return values


def since(before: dict[str, float]) -> dict[str, float]:
    now = counted()
    return {k: round(now[k] - before[k], 12) for k in now}


def results(store: MemoryJobStore, job_id: str) -> dict[str, ItemResult]:
    return {r.custom_id: r for r in store.iter_results(job_id)}


@pytest.mark.parametrize("with_cache", [True, False], ids=["cache", "no-cache"])
def test_duplicates_in_a_chunk_are_asked_once_and_share_the_answer(with_cache: bool) -> None:
    store, llm = MemoryJobStore(), FakeLLM()
    texts = ["Hello world", "  hello   WORLD", "HELLO\tworld", "other text", "Other text "]
    job_id, escalations = job(store, texts, candidates=lambda i: ["b", "a"] if i == 2 else ["a", "b"])
    before = counted()

    bought = run(store, job_id, escalations, llm, MemoryAnswerCache() if with_cache else None)

    assert sorted(llm.asked) == ["Hello world", "other text"]  # one request per distinct question
    got = results(store, job_id)
    assert all(r.llm_label == "b" and r.tier is Tier.LLM for r in got.values())
    assert {c for c, r in got.items() if r.llm_source is AnswerSource.LLM} == {"c0", "c3"}
    assert {c for c, r in got.items() if r.llm_source is AnswerSource.CACHE} == {"c1", "c2", "c4"}
    assert [got[c].llm_tokens for c in ("c0", "c1", "c2", "c3", "c4")] == [4, 0, 0, 4, 0]
    stats = store.stats(job_id)
    assert (stats.llm_requests, stats.llm_tokens, stats.llm_cache_hits) == (2, 8, 3)
    assert sorted((e.custom_id, a.label, a.prompt_tokens) for e, a in bought) == [("c0", "b", 3), ("c3", "b", 3)]
    assert since(before) == {"hit": 0, "shared": 3, "miss": 2, "cost": pytest.approx(8 * PRICE)}
    assert store.status(job_id) is JobStatus.COMPLETED


def test_answers_in_the_cache_are_not_asked_again_and_cost_nothing() -> None:
    store, llm, cache = MemoryJobStore(), FakeLLM(), MemoryAnswerCache()
    texts = [f"question number {i}" for i in range(6)]
    first, escalations = job(store, texts)
    assert len(run(store, first, escalations, llm, cache)) == 6
    assert len(cache.answers) == 6
    assert not cache.claims

    llm.asked.clear()
    before = counted()
    again = [t.upper() + "  " for t in texts]  # the same questions, as another job asks them (one explored)
    second, escalations = job(store, again, candidates=lambda i: ["b", "a"], explore={5})
    bought = run(store, second, escalations, llm, cache)

    assert llm.asked == []
    assert bought == []
    got = results(store, second)
    assert all(r.llm_source is AnswerSource.CACHE and r.llm_label == "b" for r in got.values())
    assert all(r.llm_prompt_tokens is None and r.llm_completion_tokens is None for r in got.values())
    assert (got["c0"].tier, got["c0"].label) == (Tier.LLM, "b")
    assert (got["c5"].tier, got["c5"].label, got["c5"].route) == (Tier.SPECIALIST, "a", Route.EXPLORE)
    stats = store.stats(second)
    assert (stats.llm_requests, stats.llm_tokens, stats.llm_cache_hits) == (0, 0, 6)
    assert since(before) == {"hit": 6, "shared": 0, "miss": 0, "cost": 0}
    assert store.status(second) is JobStatus.COMPLETED


def test_llm_errors_are_never_cached_and_their_claims_are_released() -> None:
    store, llm, cache = MemoryJobStore(), FakeLLM(), MemoryAnswerCache()
    first, escalations = job(store, ["please fail", "please fail ", "fine"])
    bought = run(store, first, escalations, llm, cache)

    assert sorted(llm.asked) == ["fine", "please fail"]
    assert [e.custom_id for e, _ in bought] == ["c2"]
    assert set(cache.answers) == {key("fine")}
    assert cache.claims == {}
    got = results(store, first)
    assert [(got[c].llm_error_kind, got[c].llm_source, got[c].tier) for c in ("c0", "c1")] == [
        ("status_5xx", None, Tier.SPECIALIST)
    ] * 2

    llm.asked.clear()
    second, escalations = job(store, ["please fail", "fine"])
    run(store, second, escalations, llm, cache)
    assert llm.asked == ["please fail"]  # asked again: its failure was not kept


def test_a_question_another_worker_is_asking_is_waited_for_not_asked() -> None:
    store, llm, cache = MemoryJobStore(), FakeLLM(), MemoryAnswerCache()
    assert cache.claim([key("shared question")], "another-worker", 30) == {key("shared question"): Claim.MINE}
    theirs = CachedAnswer(
        label="a", confidence=0.9, prompt_tokens=3, completion_tokens=1, model="m", prompt_version="p"
    )
    job_id, escalations = job(store, ["shared question", "Shared  question", "mine"])
    before = counted()

    def their_answer_arrives(loop: asyncio.AbstractEventLoop) -> None:
        loop.call_later(0.3, cache.put, {key("shared question"): theirs})

    bought = run(store, job_id, escalations, llm, cache, meanwhile=their_answer_arrives)

    assert llm.asked == ["mine"]
    got = results(store, job_id)
    assert [(got[c].llm_label, got[c].llm_source, got[c].llm_tokens) for c in ("c0", "c1")] == [
        ("a", AnswerSource.CACHE, 0)
    ] * 2
    assert [e.custom_id for e, _ in bought] == ["c2"]
    assert since(before) == {"hit": 0, "shared": 2, "miss": 1, "cost": pytest.approx(4 * PRICE)}


def test_a_claim_that_lapses_unanswered_is_claimed_again_and_asked() -> None:
    store, llm, cache = MemoryJobStore(), FakeLLM(), MemoryAnswerCache()
    cache.claim([key("orphan")], "a-worker-that-died", 0.4)
    job_id, escalations = job(store, ["orphan"])
    start = time.monotonic()

    bought = run(store, job_id, escalations, llm, cache)

    assert time.monotonic() - start >= 0.35  # waited for the claim to lapse
    assert llm.asked == ["orphan"]
    assert [e.custom_id for e, _ in bought] == ["c0"]
    assert results(store, job_id)["c0"].llm_source is AnswerSource.LLM
    assert set(cache.answers) == {key("orphan")}
    assert cache.claims == {}


def test_a_chunks_claims_are_renewed_while_its_requests_wait_their_turn() -> None:
    store, llm, cache = MemoryJobStore(), FakeLLM(delay=0.25), MemoryAnswerCache()
    texts = ["first", "second", "third", "fourth"]
    job_id, escalations = job(store, texts)
    one_at_a_time = CONFIG.model_copy(update={"concurrency": 1})
    seen: list[Claim | CachedAnswer] = []

    def another_worker_tries(loop: asyncio.AbstractEventLoop) -> None:
        # at 0.6 s the claims taken at the start (0.3 s) would have lapsed; the last request starts at ~0.75 s
        loop.call_later(0.6, lambda: seen.append(cache.claim([key("fourth")], "another-worker", 30)[key("fourth")]))

    claiming = Claiming(owner="this-worker", seconds=0.3, poll_seconds=0.05)
    run(store, job_id, escalations, llm, cache, claiming, one_at_a_time, another_worker_tries)

    assert seen == [Claim.THEIRS]
    assert sorted(llm.asked) == sorted(texts)


def test_a_job_without_the_answer_cache_neither_reads_nor_fills_it() -> None:
    store, llm, cache = MemoryJobStore(), FakeLLM(), MemoryAnswerCache()
    old = CachedAnswer(label="a", confidence=0.9, prompt_tokens=3, completion_tokens=1, model="m", prompt_version="p")
    cache.put({key("known"): old})
    job_id, escalations = job(store, ["known", "new", "new "], spec=SPEC.model_copy(update={"answer_cache": False}))

    run(store, job_id, escalations, llm, cache)

    assert sorted(llm.asked) == ["known", "new"]  # duplicates in the chunk are still asked once
    got = results(store, job_id)
    assert (got["c0"].llm_label, got["c0"].llm_source) == ("b", AnswerSource.LLM)
    assert got["c2"].llm_source is AnswerSource.CACHE
    assert set(cache.answers) == {key("known")}
    assert cache.claims == {}


def test_a_chunk_killed_mid_way_releases_its_claims_and_keeps_what_it_bought() -> None:
    store, llm, cache = MemoryJobStore(), FakeLLM(killed_at=3), MemoryAnswerCache()
    texts = ["one", "two", "three", "four", "five"]
    job_id, escalations = job(store, texts)
    one_at_a_time = CONFIG.model_copy(update={"concurrency": 1})

    with pytest.raises(Killed):
        run(store, job_id, escalations, llm, cache, config=one_at_a_time)

    assert len(cache.answers) == 2  # bought before the kill: in the cache, though not yet recorded
    assert cache.claims == {}  # the rest released at once, not left to lapse
    again = FakeLLM()
    run(store, job_id, escalations, again, cache)  # the chunk delivered again
    assert len(again.asked) == 3  # what was bought is not bought again
    assert store.status(job_id) is JobStatus.COMPLETED
