"""The LLM chunk over the in-memory store, against a fake LLM server that injects faults (malformed answers, a
worker killed mid-chunk). The fake is for fault injection only; the real server is tested in test_e2e_vllm."""

import asyncio
import json
from collections.abc import Callable

import httpx2
import pytest

from cascade.workers.config import LLMConfig
from cascade.workers.items import Escalation, ItemResult, Route, Tier
from cascade.workers.jobs import JobSpec, JobStatus, OnLLMError
from cascade.workers.llm import BAD, LLMClient
from cascade.workers.memory import MemoryJobStore
from cascade.workers.pipeline import run_llm_chunk
from tests.workers.store_contract import items

SPEC = JobSpec(model_path="m", model_sha256="s", threshold=0.5, top_k=2, llm_model="x")
CONFIG = LLMConfig(
    url="http://llm.test/v1", model="m", api_key="k", concurrency=1, timeout=5, max_retries=0, max_tokens=8
)


class Killed(BaseException):
    """Stands for the worker process being killed: nothing below it catches it."""


def completion(content: str) -> dict[str, object]:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


def fake_llm(answer: Callable[[int], httpx2.Response]) -> tuple[httpx2.AsyncClient, list[str]]:
    """A fake LLM server (fault injection): ``answer(n)`` gives the n-th response; the texts asked are kept."""
    asked: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        asked.append(json.loads(request.content)["messages"][-1]["content"])
        return answer(len(asked))

    return httpx2.AsyncClient(transport=httpx2.MockTransport(handler)), asked


def job_with_escalations(
    store: MemoryJobStore, n: int, on_error: OnLLMError = OnLLMError.KEEP
) -> tuple[str, list[Escalation]]:
    job = store.create(SPEC.model_copy(update={"on_llm_error": on_error}))
    store.put_chunk(job, 0, items(n))
    store.finish_intake(job, total=n, chunks=1)
    escalations = [
        Escalation(
            custom_id=i.custom_id,
            line=i.line,
            text=f"text of {i.custom_id}",
            gold="b",
            specialist_label="a",
            specialist_confidence=0.3,
            candidates=["a", "b"],
        )
        for i in items(n)
    ]
    return job, escalations


def run(store: MemoryJobStore, job: str, escalations: list[Escalation], http: httpx2.AsyncClient, **kw: int) -> None:
    async def go() -> None:
        async with LLMClient(CONFIG, http_client=http) as client:
            await run_llm_chunk(store, client, job, 0, escalations, **kw)

    asyncio.run(go())


@pytest.mark.parametrize(
    "response",
    [
        httpx2.Response(200, content=b"{not json", headers={"content-type": "application/json"}),
        httpx2.Response(200, json={**completion("b"), "choices": []}),
        httpx2.Response(200, content=b"<html><body>gateway</body></html>", headers={"content-type": "text/html"}),
        httpx2.Response(200, json={**completion("b"), "choices": [{"index": 0, "message": None}]}),
    ],
    ids=["not-json", "no-choices", "html", "no-message"],
)
def test_a_malformed_answer_is_a_bad_response_on_its_item_never_a_dropped_chunk(response: httpx2.Response) -> None:
    store = MemoryJobStore()
    job, escalations = job_with_escalations(store, 5)
    http, _ = fake_llm(lambda n: response)
    run(store, job, escalations, http)
    results = list(store.iter_results(job))
    assert len(results) == 5
    assert all(r.llm_error_kind == BAD and r.label == "a" and r.tier is Tier.SPECIALIST for r in results)
    assert store.status(job) is JobStatus.COMPLETED


def test_bad_responses_fail_the_items_when_the_job_asks_so() -> None:
    store = MemoryJobStore()
    job, escalations = job_with_escalations(store, 3, OnLLMError.FAIL)
    http, _ = fake_llm(lambda n: httpx2.Response(200, json={**completion("b"), "choices": []}))
    run(store, job, escalations, http)
    errors = list(store.iter_errors(job))
    assert [(e.code.value, e.llm_error_kind) for e in errors] == [("llm_error", BAD)] * 3


def test_answers_are_recorded_as_they_arrive_so_a_killed_worker_pays_again_only_for_a_few() -> None:
    store = MemoryJobStore()
    job, escalations = job_with_escalations(store, 40)

    def killed_after_25(n: int) -> httpx2.Response:
        if n > 25:
            raise Killed
        return httpx2.Response(200, json=completion("b"))

    http, first = fake_llm(killed_after_25)
    with pytest.raises(Killed):
        run(store, job, escalations, http, group=4)
    recorded = len(list(store.iter_results(job)))
    assert recorded >= 25 - 4  # at most one unflushed group lost (concurrency 1: nothing else in flight)

    http, second = fake_llm(lambda n: httpx2.Response(200, json=completion("b")))
    run(store, job, escalations, http, group=4)  # the chunk delivered again
    results = list(store.iter_results(job))
    assert sorted(r.custom_id for r in results) == sorted(e.custom_id for e in escalations)
    assert all(isinstance(r, ItemResult) and r.label == "b" and r.route is Route.ESCALATE for r in results)
    assert len(second) == 40 - recorded
    assert len(first) - 1 + len(second) <= 40 + 4  # requests bought twice: at most one group
    assert store.status(job) is JobStatus.COMPLETED
