"""Helpers for the benchmarks: a Redis database of their own, real worker processes, Banking77 texts."""

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import redis
from numpy.typing import NDArray
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from cascade.broker.results import open_parts
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers import specialist
from cascade.workers.manifest import MANIFEST_FILE

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("CASCADE_DATASETS", ROOT.parent / "shared" / "datasets"))
OUT = ROOT / "bench" / "out"
CASCADE = str(Path(sys.executable).parent / "cascade")
PLAIN_BATCH = 2_000
"""Items per predict_proba call of the plain baselines."""
T = TypeVar("T")


def bench_settings(**overrides: object) -> Settings:
    url = os.environ.get("CASCADE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    return Settings(redis_url=url, **overrides)  # type: ignore[arg-type]


def fresh_store(settings: Settings) -> RedisJobStore:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.flushdb()
    return RedisJobStore(client, settings.job_ttl, open_parts(settings))


def banking(split: str) -> tuple[list[str], list[str]]:
    with (DATASETS / "banking77" / f"{split}.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


@contextmanager
def workers(settings: Settings, queues: str, processes: int = 1, concurrency: int = 2) -> Iterator[None]:
    env = {
        **os.environ,
        "CASCADE_REDIS_URL": settings.redis_url,
        "CASCADE_LLM_URL": settings.llm_url,
        "CASCADE_METRICS_PORT": "0",  # no /metrics: another worker (the local stack's) may hold the port
    }
    if settings.chunk_size is not None:
        env["CASCADE_CHUNK_SIZE"] = str(settings.chunk_size)
    procs = [
        subprocess.Popen(
            [
                CASCADE,
                "worker",
                "--queues",
                queues,
                "--concurrency",
                str(concurrency),
                "--hostname",
                f"bench{i}@%h",
                "--loglevel",
                "WARNING",
            ],
            env=env,
            start_new_session=True,
        )
        for i in range(processes)
    ]
    try:
        time.sleep(4)  # let the workers connect before the clock starts
        yield
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(timeout=60)


def bench_model() -> tuple[Path, specialist.Specialist]:
    """A Banking77 specialist, trained once into bench/out and reused."""
    OUT.mkdir(parents=True, exist_ok=True)
    model_dir = OUT / "banking77-model"
    if not (model_dir / MANIFEST_FILE).exists():
        texts, labels = banking("train")
        specialist.save(specialist.train(texts, labels), model_dir, "bench")
    return model_dir, specialist.load(model_dir)


def wait_done(store: RedisJobStore, job_id: str, timeout: float = 3600) -> float:
    """Seconds from now until the job has ended."""
    start = time.perf_counter()
    store.wait(job_id, timeout, poll=0.05)
    return time.perf_counter() - start


def plain_tfidf_lr() -> Pipeline:
    """The script a reader would write instead: TF-IDF word 1-2-grams and a logistic regression, no calibration."""
    return Pipeline(
        [
            ("features", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
            ("classifier", LogisticRegression(max_iter=1000)),
        ]
    )


def repeated(items: Sequence[T], n: int) -> list[T]:
    """``items`` repeated in order up to ``n`` of them."""
    return [items[i % len(items)] for i in range(n)]


def items_per_second(
    predict_proba: Callable[[Any], Any], items: Sequence[Any] | NDArray[np.float32], batch: int = PLAIN_BATCH
) -> float:
    """Items/s of ``predict_proba`` over ``items`` in batches of ``batch``, in this process."""
    start = time.perf_counter()
    for i in range(0, len(items), batch):
        predict_proba(items[i : i + batch])
    return len(items) / (time.perf_counter() - start)
