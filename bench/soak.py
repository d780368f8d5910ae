"""Soak: jobs of mixed sizes from three owners through the Batch API, while workers and Redis are killed.

    python -m bench.soak [--minutes 10] [--seed 0] [--out bench/out/soak]

Everything runs on this machine, loopback only, and stops by itself: a Redis of its own (append-only, fsync always,
noeviction) on a free port, the API (`cascade api`, three owners' tokens), two workers (`cascade worker`, both
queues), and the recorded-answers LLM server (`bench.replay_llm`, GPT-4's RECORDED answers on Banking77) as the
LLM. For ``--minutes``, the three owners submit batches of 50 to 5,000 Banking77 test lines (a few bad lines
each); at random moments one worker is killed with SIGKILL and started again, and Redis is killed with SIGKILL and
started again. Then it waits (bounded) for every batch to end and checks, batch by batch, that every input line is
exactly once in the output or the error file.

Prints: batches, lines, kills of each kind, final statuses, LLM requests per escalated item (from the replay
server's own count: above 1 means answers bought twice), and whether every line ended exactly once.
"""

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import openai
import redis

from bench.common import CASCADE, DATASETS, OUT, ROOT
from cascade.broker.settings import Settings
from cascade.workers import specialist
from cascade.workers.data import read_labelled_csv

OWNERS = {"tok-soak-a": "team-a", "tok-soak-b": "team-b", "tok-soak-c": "team-c"}
FINAL = {"completed", "failed", "cancelled", "expired"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx2.get(url, timeout=2).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


@dataclass
class Stack:
    """The processes of the soak, each restartable."""

    folder: Path
    redis_port: int
    api_port: int
    llm_port: int
    model: Path
    env: dict[str, str] = field(default_factory=dict)
    redis_proc: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def log(self, name: str) -> "os.PathLike[str]":
        return self.folder / f"{name}.log"

    def start_redis(self) -> None:
        data = self.folder / "redis"
        data.mkdir(exist_ok=True)
        command = ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(data)]
        command += ["--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "noeviction"]
        command += ["--save", ""]
        with open(self.log("redis"), "a") as log:
            self.redis_proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.redis_port)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def kill_redis(self) -> None:
        assert self.redis_proc is not None
        self.redis_proc.kill()
        self.redis_proc.wait()

    def start_worker(self, i: int) -> subprocess.Popen[bytes]:
        command = [CASCADE, "worker", "--queues", "specialist,llm", "--concurrency", "2", "--hostname", f"soak{i}@%h"]
        with open(self.log(f"worker{i}"), "a") as log:
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)

    def start(self) -> None:
        self.start_redis()
        answers = DATASETS / "banking77" / "llm_answers" / "test_gpt4.csv"
        llm = [sys.executable, "-m", "bench.replay_llm", "--answers", str(answers), "--port", str(self.llm_port)]
        llm += ["--model", "gpt-4-recorded"]
        api = [CASCADE, "api", "--port", str(self.api_port)]
        for name, command in (("llm", llm), ("api", api)):
            with open(self.log(name), "a") as log:
                self.others.append(
                    subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
                )
        wait_http(f"http://127.0.0.1:{self.llm_port}/health")
        wait_http(f"http://127.0.0.1:{self.api_port}/health")
        self.workers = [self.start_worker(i) for i in range(2)]

    def kill_worker(self, i: int) -> None:
        os.killpg(self.workers[i].pid, signal.SIGKILL)
        self.workers[i].wait()
        self.workers[i] = self.start_worker(i)

    def stop(self) -> None:
        for proc in [*self.workers, *self.others]:
            try:
                os.killpg(proc.pid, signal.SIGTERM) if proc in self.workers else proc.terminate()
                proc.wait(timeout=60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                proc.kill()
        if self.redis_proc is not None:
            self.redis_proc.terminate()
            self.redis_proc.wait(timeout=30)


def batch_lines(rng: random.Random, texts: list[str], n: int, prefix: str) -> list[str]:
    """``n`` lines: Banking77 test texts (Cascade's input form), a few of them bad."""
    lines = [json.dumps({"custom_id": f"{prefix}-{i}", "text": rng.choice(texts)}) for i in range(n)]
    for _ in range(max(1, n // 500)):
        lines[rng.randrange(n)] = rng.choice(["{not json", '{"custom_id": "x"}', '{"text": "no id"}'])
    return lines


def call(what: str, fn, deadline: float):  # type: ignore[no-untyped-def]
    """An API call, retried while Redis (and so the API) is down."""
    while True:
        try:
            return fn()
        except (openai.APIConnectionError, openai.InternalServerError, openai.APIStatusError) as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} kept failing: {e}") from e
            time.sleep(1)


@dataclass
class Submitted:
    owner: str
    batch_id: str
    lines: int


def submit(client: openai.OpenAI, folder: Path, lines: list[str], name: str) -> str:
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    deadline = time.monotonic() + 300
    file_id = call("upload", lambda: client.files.create(file=path.open("rb"), purpose="batch").id, deadline)
    batch = call(
        "create",
        lambda: client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"),
        deadline,
    )
    return str(batch.id)


def check(client: openai.OpenAI, batch_id: str, n: int) -> tuple[str, bool, int]:
    """The batch's status, whether every line is exactly once in output or errors, and its escalated items."""
    deadline = time.monotonic() + 300
    batch = call("retrieve", lambda: client.batches.retrieve(batch_id), deadline)
    seen: list[int] = []
    escalated = 0
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            text = call("content", lambda f=file_id: client.files.content(f).text, deadline)
            for line in text.splitlines():
                row = json.loads(line)
                if row.get("error"):
                    seen.append(int(row["error"]["line"]))
                else:
                    cascade = row["response"]["body"]["cascade"]
                    seen.append(int(cascade["line"]))
                    escalated += cascade["route"] in {"escalate", "explore"}
    return batch.status, sorted(seen) == list(range(1, n + 1)), escalated


class Chaos:
    """Kills a worker every 20-60 s and Redis every 40-90 s (at random), starting each again."""

    def __init__(self, stack: Stack, rng: random.Random) -> None:
        self.stack, self.rng = stack, rng
        self.kills = {"worker": 0, "redis": 0}
        now = time.monotonic()
        self.next_worker, self.next_redis = now + rng.uniform(20, 60), now + rng.uniform(40, 90)

    def maybe_kill(self, start: float) -> None:
        now = time.monotonic()
        if now >= self.next_worker:
            i = self.rng.randrange(len(self.stack.workers))
            self.stack.kill_worker(i)
            self.kills["worker"] += 1
            print(f"{now - start:6.0f} s  SIGKILL worker {i}", flush=True)
            self.next_worker = now + self.rng.uniform(20, 60)
        if now >= self.next_redis:
            self.stack.kill_redis()
            self.kills["redis"] += 1
            print(f"{now - start:6.0f} s  SIGKILL redis", flush=True)
            time.sleep(self.rng.uniform(1, 5))
            self.stack.start_redis()
            self.next_redis = now + self.rng.uniform(40, 90)


def wait_all(clients: dict[str, openai.OpenAI], submitted: list[Submitted], timeout: float) -> set[str]:
    """Wait (bounded) for every batch to end; returns those that did not."""
    deadline = time.monotonic() + timeout
    pending = {s.batch_id for s in submitted}
    while pending and time.monotonic() < deadline:
        for s in submitted:
            if s.batch_id in pending:
                batch = call("retrieve", lambda s=s: clients[s.owner].batches.retrieve(s.batch_id), deadline)
                if batch.status in FINAL:
                    pending.discard(s.batch_id)
        time.sleep(5)
    return pending


def verify(clients: dict[str, openai.OpenAI], submitted: list[Submitted]) -> tuple[dict[str, int], int, int]:
    """Final statuses, how many batches have every line exactly once, and their escalated items."""
    statuses: dict[str, int] = {}
    exact, escalated = 0, 0
    for s in submitted:
        status, once, esc = check(clients[s.owner], s.batch_id, s.lines)
        statuses[status] = statuses.get(status, 0) + 1
        exact += once
        escalated += esc
        if not once:
            print(f"NOT EXACTLY ONCE: {s.batch_id} ({status})", flush=True)
    return statuses, exact, escalated


def llm_requests(port: int) -> float:
    """Classification requests the replay server answered (its own count; the contract checks left out)."""
    metrics = httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("replay_requests_total{") and "contract_check" not in line
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT / "soak")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    folder = args.out / time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir()
    labelled = read_labelled_csv(DATASETS / "banking77" / "train.csv")
    model = specialist.save(specialist.train(labelled.texts, labelled.labels), folder / "model", labelled.sha256)
    with (DATASETS / "banking77" / "test.csv").open(newline="") as f:
        texts = [r["text"] for r in csv.DictReader(f)]
    stack = Stack(folder, free_port(), free_port(), free_port(), model)
    settings = Settings(redis_url=f"redis://127.0.0.1:{stack.redis_port}/0")
    stack.env = {
        **os.environ,
        "CASCADE_REDIS_URL": settings.redis_url,
        "CASCADE_LLM_URL": f"http://127.0.0.1:{stack.llm_port}/v1",
        "CASCADE_LLM_MODEL": "gpt-4-recorded",
        "CASCADE_API_TOKENS": ",".join(f"{t}={o}" for t, o in OWNERS.items()),
        "CASCADE_MODEL_DIR": str(model),
        "CASCADE_FILES_DIR": str(folder / "files"),
        "CASCADE_METRICS_PORT": "0",
        "CASCADE_VISIBILITY_TIMEOUT": "60",
        "CASCADE_THRESHOLD": "0.5",
        "CASCADE_STALL_SECONDS": "120",
        "CASCADE_REAPER_INTERVAL": "10",
    }
    clients = {
        o: openai.OpenAI(base_url=f"http://127.0.0.1:{stack.api_port}/v1", api_key=t, max_retries=0)
        for t, o in OWNERS.items()
    }
    submitted: list[Submitted] = []
    chaos = Chaos(stack, rng)
    start = time.monotonic()
    stack.start()
    try:
        while time.monotonic() < start + args.minutes * 60:
            owner = rng.choice(list(OWNERS.values()))
            n = int(rng.choice([50, 200, 1000, 5000]) * rng.uniform(0.5, 1.0))
            name = f"b{len(submitted)}"
            batch_id = submit(clients[owner], folder, batch_lines(rng, texts, n, name), name)
            submitted.append(Submitted(owner, batch_id, n))
            print(f"{time.monotonic() - start:6.0f} s  {owner} submitted {batch_id} ({n} lines)", flush=True)
            chaos.maybe_kill(start)
            time.sleep(rng.uniform(2, 8))
        print("submissions over: waiting for every batch to end", flush=True)
        pending = wait_all(clients, submitted, timeout=1800)
        statuses, exact, escalated = verify(clients, submitted)
        requests = llm_requests(stack.llm_port)
    finally:
        stack.stop()
    kills = chaos.kills
    report = {
        "minutes": args.minutes,
        "batches": len(submitted),
        "lines": sum(s.lines for s in submitted),
        "owners": len({s.owner for s in submitted}),
        "kills": kills,
        "statuses": statuses,
        "unfinished": len(pending),
        "exactly_once": f"{exact}/{len(submitted)}",
        "escalated_items": escalated,
        "llm_requests": requests,
        "llm_requests_per_escalated_item": round(requests / escalated, 4) if escalated else None,
        "llm": "RECORDED GPT-4 answers on Banking77 (bench.replay_llm)",
    }
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if pending or exact != len(submitted):
        sys.exit(1)


if __name__ == "__main__":
    main()
