"""Specialist tier: items/s of a 100k-item job through Redis and Celery, against predict_proba in one process.

    python -m bench.specialist_throughput [--items 100000] [--chunk-size N]

Three rates on the same texts (Banking77 test texts repeated), in the same run of this script: the Cascade job
(submit to completed; threshold 0, so nothing is escalated), a plain loop of the specialist's predict_proba, and a
plain TF-IDF + logistic regression script (fitted on the train split); both loops in batches of 2,000. Prints the
job's ratio to each (we aim for at least 0.9). The workers are warmed first by a small job (each pool process loads
the model on its first chunk, as a running service did long before), not timed.
"""

import argparse
import json
import time

from bench.common import (
    OUT,
    PLAIN_BATCH,
    banking,
    bench_model,
    bench_settings,
    fresh_store,
    items_per_second,
    plain_tfidf_lr,
    repeated,
    wait_done,
    workers,
)
from cascade.broker.celery_app import app, configure, send_specialist_chunk
from cascade.broker.submit import chunk_size, submit_file
from cascade.workers.jobs import JobSpec, JobStatus


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--processes", type=int, default=1, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=2, help="pool slots per worker process")
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="items per specialist chunk (CASCADE_CHUNK_SIZE; default: unset)"
    )
    args = parser.parse_args()

    settings = bench_settings(chunk_size=args.chunk_size)
    store = fresh_store(settings)
    model_dir, model = bench_model()

    test_texts, _ = banking("test")
    texts = repeated(test_texts, args.items)
    jsonl = OUT / f"specialist-{args.items}.jsonl"
    with jsonl.open("w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"custom_id": f"i{i}", "text": t}) + "\n")

    baseline = items_per_second(model.predict_proba, texts)
    plain = items_per_second(plain_tfidf_lr().fit(*banking("train")).predict_proba, texts)

    configure(app, settings)
    spec = JobSpec(
        model_path=str(model_dir.resolve()),
        model_sha256=model.sha256,
        threshold=0.0,
        top_k=5,
        llm_model=settings.llm_model,
    )
    size = chunk_size(settings, spec)  # unset: by the model's speed (its manifest), as a submission sizes them
    with workers(settings, "specialist", processes=args.processes, concurrency=args.concurrency):
        # Warm-up: every pool process loads (and verifies) the model on its first chunk, ~1.6 s here, as a running
        # service did long before; the plain loops have theirs loaded too. Not timed.
        slots = args.processes * args.concurrency
        warm = OUT / "specialist-warmup.jsonl"
        with warm.open("w") as f:
            for i, t in enumerate(texts[: 4 * slots * size]):
                f.write(json.dumps({"custom_id": f"w{i}", "text": t}) + "\n")
        wait_done(store, submit_file(store, lambda j, n: send_specialist_chunk(app, j, n), settings, warm, spec))
        start = time.time()
        job = submit_file(store, lambda j, n: send_specialist_chunk(app, j, n), settings, jsonl, spec)
        submitted = time.time() - start
        wait_done(store, job)
    view = store.get(job)
    if view.status is not JobStatus.COMPLETED or view.counts.completed != args.items or view.finished_at is None:
        raise SystemExit(f"the job did not complete every item: {view}")
    elapsed = view.finished_at - start  # the time its last chunk completed it, not when a poll next saw it
    cascade = args.items / elapsed

    print(
        f"items: {args.items}, chunk size {size}"
        + (" (CASCADE_CHUNK_SIZE unset: by the model's speed)" if settings.chunk_size is None else "")
        + ", "
        f"worker processes {args.processes} x {args.concurrency} slots"
    )
    print(f"submission (read, validate, store, enqueue) took {submitted:.2f} s of the job's {elapsed:.2f} s")
    print(f"busy time of the worker's pool processes: {view.specialist_seconds:.2f} s (over {slots} of them)")
    print(f"plain loop of the specialist's predict_proba (batches of {PLAIN_BATCH:,}): {baseline:,.0f} items/s")
    print(f"plain TF-IDF + logistic regression script (batches of {PLAIN_BATCH:,}): {plain:,.0f} items/s")
    print(f"cascade job (submit -> completed, Redis + Celery): {cascade:,.0f} items/s")
    print(f"ratio cascade / plain specialist loop: {cascade / baseline:.2f}  (goal >= 0.9)")
    print(f"ratio cascade / plain TF-IDF + LR script: {cascade / plain:.2f}")


if __name__ == "__main__":
    main()
