"""LLM tier: items/s through the worker against a bare concurrent client, same requests, same vLLM server.

    python bench/llm_throughput.py [--items 300]

The bare client is the `openai` AsyncOpenAI client with a semaphore of CASCADE_LLM_CONCURRENCY (64), sending
the same prompts, candidates and options as the worker. It runs before and after the job (the server is noisy),
and the ratio is taken against their mean. The job runs with threshold 1, so that every item is escalated.
Needs the vLLM server at CASCADE_LLM_URL (deploy/local/vllm_serve.sh).
"""

import argparse
import asyncio
import json
import time

from openai import AsyncOpenAI

from bench.common import OUT, banking, bench_model, bench_settings, fresh_store, wait_done, workers
from cascade.broker.celery_app import app, configure, send_specialist_chunk
from cascade.broker.settings import Settings
from cascade.broker.submit import submit_file
from cascade.workers import specialist
from cascade.workers.jobs import JobSpec, JobStatus
from cascade.workers.llm import build_messages


async def bare_client(settings: Settings, requests: list[tuple[str, list[str]]]) -> float:
    """Seconds to send every request with a plain concurrent client."""
    client = AsyncOpenAI(base_url=settings.llm_url, api_key=settings.llm_api_key, timeout=settings.llm_timeout)
    gate = asyncio.Semaphore(settings.llm_concurrency)

    async def one(text: str, candidates: list[str]) -> None:
        async with gate:
            await client.chat.completions.create(
                model=settings.llm_model,
                messages=build_messages(text, candidates),  # type: ignore[arg-type]
                max_tokens=settings.llm_max_tokens,
                temperature=0.0,
                logprobs=True,
                top_logprobs=5,
                extra_body={"structured_outputs": {"choice": candidates}},
            )

    start = time.perf_counter()
    await asyncio.gather(*(one(t, c) for t, c in requests))
    elapsed = time.perf_counter() - start
    await client.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=300)
    args = parser.parse_args()
    settings = bench_settings()
    store = fresh_store(settings)

    model_dir, model = bench_model()
    texts = banking("test")[0][: args.items]
    proba = model.predict_proba(texts)
    requests = [
        (t, specialist.top_candidates(p, model.labels, settings.top_k)) for t, p in zip(texts, proba, strict=True)
    ]
    jsonl = OUT / f"llm-{args.items}.jsonl"
    jsonl.write_text("".join(json.dumps({"custom_id": f"i{i}", "text": t}) + "\n" for i, t in enumerate(texts)))

    before = asyncio.run(bare_client(settings, requests))

    configure(app, settings)
    spec = JobSpec(
        model_path=str(model_dir.resolve()),
        model_sha256=model.sha256,
        threshold=1.0,
        top_k=settings.top_k,
        llm_model=settings.llm_model,
    )
    with workers(settings, "specialist,llm", processes=1, concurrency=2):
        start = time.perf_counter()
        job = submit_file(store, lambda j, n: send_specialist_chunk(app, j, n), settings, jsonl, spec)
        wait_done(store, job)
        elapsed = time.perf_counter() - start
    view = store.get(job)
    if view.status is not JobStatus.COMPLETED or view.counts.escalated != args.items:
        raise SystemExit(f"expected every item escalated and answered: {view}")
    llm_answered = store.stats(job).tiers.get("llm")

    after = asyncio.run(bare_client(settings, requests))
    bare = args.items / ((before + after) / 2)
    cascade = args.items / elapsed
    print(
        f"items: {args.items}, all escalated; LLM answers {llm_answered.answered if llm_answered else 0}, "
        f"LLM errors {store.stats(job).llm_errors}; concurrency {settings.llm_concurrency}"
    )
    print(f"bare concurrent client: {args.items / before:.2f} items/s before, {args.items / after:.2f} after")
    print(f"cascade job through the worker (submit -> completed): {cascade:.2f} items/s")
    print(f"ratio cascade / bare client: {cascade / bare:.2f}  (goal >= 0.9)")


if __name__ == "__main__":
    main()
