"""Large inputs stream: peak memory of the API process, the workers and Redis, for 1M and 10M lines.

    python -m bench.large_input_memory [--sizes 1000000,10000000] [--ttl 0]

A real `cascade api` process and one real `cascade worker` (specialist queue, 2 pool processes) on Redis db 14;
the official `openai` client uploads the file, creates a batch (threshold 0: no LLM) and waits for it. Peak
resident memory (VmHWM) is read from /proc for the API process and for every worker process; Redis' ``used_memory``
(INFO) is sampled every second: its baseline (an empty database), its peak while the job runs, and what the
finished job keeps (its results are committed to the result store, a local folder here; the output file is then
downloaded whole through the API to show they still are). With ``--ttl S`` the jobs' keys live S seconds
(``CASCADE_JOB_TTL``, at least 60 and longer than the job takes) and the run waits for them to expire and the
reaper to trim them, and reports Redis against its baseline again. ``used_memory`` is the whole server's: run it
on a Redis nobody else uses meanwhile (``CASCADE_BENCH_REDIS_URL``, e.g. a ``redis-server --port 6380`` of its
own). Goals (issue #14): the larger run within 1.1x the smaller one's peaks; a finished job under 50 bytes of
Redis per item; back to the baseline after the TTL.
"""

import argparse
import csv
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx2
import openai
import redis

from bench.common import CASCADE, DATASETS, OUT, bench_settings, fresh_store
from cascade.workers import specialist
from cascade.workers.data import read_labelled_csv


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, api: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise SystemExit(f"cascade api exited ({api.returncode})")
        try:
            if httpx2.get(url, timeout=2).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"cascade api did not answer {url} within {timeout:.0f} s")


def short_lived(ttl: int) -> dict[str, str]:
    """The settings of jobs whose keys live ``ttl`` seconds, looked at by the reaper every 5 s."""
    return {"CASCADE_JOB_TTL": str(ttl), "CASCADE_COMPLETION_WINDOW": f"{ttl}s", "CASCADE_REAPER_INTERVAL": "5"}


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def run(n: int, model_dir: Path, ttl: int) -> tuple[float, float, float, int]:
    settings = bench_settings()
    fresh_store(settings)
    client_redis = redis.Redis.from_url(settings.redis_url)
    baseline = used(client_redis)
    texts = [r["text"] for r in csv.DictReader((DATASETS / "sms_spam" / "all.csv").open(newline=""))]
    path = OUT / f"large-{n}.jsonl"
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"custom_id": f"r{i}", "text": texts[i % len(texts)]}) + "\n")
    port = free_port()
    env = {
        **os.environ,
        "CASCADE_REDIS_URL": settings.redis_url,
        "CASCADE_API_TOKENS": "bench=bench",
        "CASCADE_MODEL_DIR": str(model_dir),
        "CASCADE_FILES_DIR": str(OUT / "files"),
        "CASCADE_METRICS_PORT": "0",
        **(short_lived(ttl) if ttl else {}),
    }
    api = subprocess.Popen(
        [CASCADE, "api", "--port", str(port)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=(OUT / "api.log").open("wb"),
    )
    worker = subprocess.Popen(
        [CASCADE, "worker", "--queues", "specialist", "--concurrency", "2", "--loglevel", "WARNING"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", api)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="bench", timeout=600)
        start = time.perf_counter()
        with path.open("rb") as f:
            uploaded = client.files.create(file=f, purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window=f"{ttl}s" if ttl else "24h",
            metadata={"cascade_threshold": "0"},
        )
        worker_peak, redis_peak = 0.0, baseline
        while batch.status not in {"completed", "failed", "cancelled", "expired"}:
            time.sleep(1)
            worker_peak = max([worker_peak, *(peak_mib(p) for p in [worker.pid, *children(worker.pid)])])
            redis_peak = max(redis_peak, used(client_redis))
            batch = client.batches.retrieve(batch.id)
        elapsed = time.perf_counter() - start
        counts = batch.request_counts
        if batch.status != "completed" or counts is None or counts.completed != n or batch.output_file_id is None:
            raise SystemExit(f"batch did not complete every line: {batch}")
        kept = used(client_redis) - baseline
        with client.files.with_streaming_response.content(batch.output_file_id) as response:  # not held whole
            lines = sum(1 for _ in response.iter_lines())
        if lines != n:
            raise SystemExit(f"the output file has {lines} lines, not {n}")
        print(
            f"{n:>11,} lines: Redis baseline {baseline / 2**20:.1f} MiB, peak +{(redis_peak - baseline) / 2**20:.1f} "
            f"MiB while running, +{kept / 2**20:.2f} MiB kept by the finished job ({kept / n:.1f} B per item); "
            f"output downloaded whole ({lines:,} lines)"
        )
        if ttl:
            deadline = time.monotonic() + ttl + 120
            while time.monotonic() < deadline and used(client_redis) > baseline + 256 * 1024:
                time.sleep(5)
            print(f"{'':>11}  after the TTL ({ttl} s) and the reaper: Redis {used(client_redis) - baseline:+,} B")
        return peak_mib(api.pid), worker_peak, elapsed, redis_peak - baseline
    finally:
        for proc in (api, worker):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--ttl", type=int, default=0, help="jobs' TTL in seconds (>= 60); 0: the default, no wait")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    model_dir = OUT / "sms-model"
    if not (model_dir / specialist.MANIFEST_FILE).exists():
        data = read_labelled_csv(DATASETS / "sms_spam" / "train.csv")
        specialist.save(specialist.train(data.texts, data.labels), model_dir, data.sha256)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        api_mib, worker_mib, seconds, redis_bytes = run(n, model_dir, args.ttl)
        rows.append((n, api_mib, worker_mib, redis_bytes))
        print(
            f"{n:>9,} lines: API peak {api_mib:7.1f} MiB, worker process peak {worker_mib:7.1f} MiB, "
            f"{seconds:6.1f} s ({n / seconds:,.0f} lines/s)"
        )
    if len(rows) == 2:
        (n1, a1, w1, r1), (n2, a2, w2, r2) = rows
        print(
            f"{n2 // n1}x the lines: API peak x{a2 / a1:.2f}, worker peak x{w2 / w1:.2f}, Redis peak x{r2 / r1:.2f} "
            "(goal: at most 1.1)"
        )


if __name__ == "__main__":
    main()
