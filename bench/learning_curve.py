"""A specialist that learns from the LLM, and answers never bought twice: OCaTS' setting through the real path.

    python -m bench.learning_curve [--steps 10] [--per-class 10] [--holdout 580] [--threshold 0.8] [--seed 0]
        [--configs plain,memory,learning,both] [--out bench/out/learning_curve] [--redis-url redis://…/13]

OCaTS' setting (Stogiannidis et al., 2023): a ``minilm`` specialist trained on a small labelled seed (``--per-class``
items of each Banking77 intent, from the train split), then the test split streamed in a fixed random order, in
``--steps`` jobs. ``--holdout`` items of the test split, drawn first, are kept out of the stream: they calibrate the
answer memory's similarity (``recall.leave_one_out`` with the recorded answers, as ``cascade calibrate --memory``
does) and are the held-out set of ``cascade learn``'s promotion gate. Every job runs through Redis, Celery and one
real ``cascade worker --queues specialist,llm``, with the recorded-answers server (``bench.replay_llm``) as the LLM,
all 77 labels as candidates; the rule escalates items whose specialist confidence is below ``--threshold``.

Four configurations, each from an empty Redis database and the seed specialist:
- ``plain``: the cascade as it was, every LLM answer used once (the exact answer cache still on);
- ``memory``: the answer memory answers escalated near-duplicates of what the LLM already answered;
- ``learning``: after each job, ``cascade learn`` trains a new version on the seed plus every LLM answer so far,
  promoted for the next job only if McNemar's test on the held-out set does not find it worse;
- ``both``.
Per job: items, LLM calls (requests the replay server answered, checked against the results' ``llm_source``),
answers from the cache and from the memory, the cascade's accuracy, the specialist's alone (the version that ran),
and all-LLM's (GPT-4's recorded answers on the same items). Then a job with 30% repeated texts: its LLM calls
against the number of distinct escalated texts. Written to ``OUT/report.md``, ``report.json`` and
``learning_curve.png``.

Every LLM figure comes from RECORDED GPT-4 answers (OCaTS, MIT) on Banking77 (Casanueva et al., 2020, CC BY 4.0):
the specialist, the memory, the learning, the queues and the worker are real; only the LLM's answers are replayed.
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import numpy as np
import redis
from pydantic import BaseModel

from bench.cascade_value import (
    ATTRIBUTION,
    CAPTION,
    MODEL_NAME,
    caption_png,
    check_redis_url,
    free_port,
    process,
    replay_outcomes,
    wait_http,
    wait_job,
    wait_worker,
)
from cascade.broker import labelled
from cascade.broker.celery_app import app, configure, send_specialist_chunk
from cascade.broker.results import open_parts
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers import specialist
from cascade.workers.answers import normalise
from cascade.workers.calibration import CalibrationData, choose_memory_rule
from cascade.workers.items import AnswerSource, ItemResult, Route
from cascade.workers.recall import MemoryRule, leave_one_out

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("CASCADE_DATASETS", ROOT.parent / "shared" / "datasets"))
CASCADE = str(Path(sys.executable).parent / "cascade")
DEFAULT_REDIS = os.environ.get("CASCADE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
CONFIGS = ("plain", "memory", "learning", "both")
MEMORY_K = 3
FALLBACK_SIMILARITY = 0.9
"""The memory's similarity when the held-out set cannot calibrate one (said in the report)."""
REPEATED_ITEMS, REPEATED_SHARE = 1000, 0.3


class Step(BaseModel):
    step: int
    items: int
    llm_calls: int
    """Requests the replay server answered during the job (the LLM calls paid for)."""
    llm_source_llm: int
    """Results whose answer came from an LLM call: equals ``llm_calls`` unless a request was retried."""
    cache_hits: int
    memory_answers: int
    escalated: int
    cascade_accuracy: float
    specialist_accuracy: float
    llm_accuracy: float
    """All-LLM: GPT-4's recorded answers on the same items."""
    model: str
    """The specialist version that ran (its identity, first 12 characters)."""
    promoted: bool | None = None
    """After this job: whether ``cascade learn`` promoted the new version (None: no learning)."""
    gate: str | None = None
    calibration_calls: int = 0
    """With ``--policy``: LLM calls of calibrating the version learned after this job (on the held-out items)."""
    policy: str | None = None
    """With ``--policy``: the version of the policy that routed this job (None: the fixed threshold)."""

    @property
    def llm_per_1000(self) -> float:
        return 1000 * self.llm_calls / max(self.items, 1)


class Config(BaseModel):
    name: str
    steps: list[Step]
    seed_calibration_calls: int = 0
    """With ``--policy``: LLM calls of calibrating the seed version, before the first job."""

    @property
    def calibration_calls(self) -> int:
        return self.seed_calibration_calls + sum(s.calibration_calls for s in self.steps)

    def accuracy(self, field: str) -> float:
        total = sum(s.items for s in self.steps)
        return sum(getattr(s, field) * s.items for s in self.steps) / max(total, 1)

    @property
    def llm_calls(self) -> int:
        return sum(s.llm_calls for s in self.steps)

    @property
    def fall(self) -> float:
        """LLM calls per 1,000 items, last job over first."""
        first, last = self.steps[0].llm_per_1000, self.steps[-1].llm_per_1000
        return last / first if first else float("nan")

    def per_1000(self, steps: Sequence[Step]) -> float:
        return 1000 * sum(s.llm_calls for s in steps) / max(sum(s.items for s in steps), 1)

    @property
    def fall_3(self) -> float:
        """LLM calls per 1,000 items, last three jobs over first three (less noisy than one job)."""
        first = self.per_1000(self.steps[:3])
        return self.per_1000(self.steps[-3:]) / first if first else float("nan")


class Repeated(BaseModel):
    items: int
    distinct_texts: int
    escalated_items: int
    distinct_escalated_texts: int
    llm_calls: int
    cache_answers: int


class PolicyRule(BaseModel):
    """``--policy``: every version routes by a policy ``cascade calibrate`` certified on the held-out items."""

    llm_holdout_accuracy: float
    """All-LLM's accuracy on the held-out items (the recorded answers)."""
    margin: float
    target: float
    """The policies' accuracy target: ``llm_holdout_accuracy - margin``."""
    delta: float
    max_escalation: float
    llm_weight: float | None
    """``cascade learn --llm-weight`` (None: its default)."""


class Report(BaseModel):
    seed: int
    per_class: int
    seed_items: int
    holdout: int
    stream: int
    steps: int
    threshold: float
    policy: PolicyRule | None = None
    memory: MemoryRule | None
    memory_note: str
    configs: list[Config]
    repeated: Repeated | None
    seconds: float


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: Sequence[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def seed_rows(train: list[dict[str, str]], per_class: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    by_label: dict[str, list[str]] = {}
    for row in train:
        by_label.setdefault(row["label"], []).append(row["text"])
    rows = []
    for label in sorted(by_label):
        texts = by_label[label]
        for i in rng.choice(len(texts), size=min(per_class, len(texts)), replace=False):
            rows.append((texts[int(i)], label))
    return rows


def calibrate_memory(model: Path, holdout: list[dict[str, str]]) -> tuple[MemoryRule | None, str]:
    """The memory's similarity from the held-out items' recorded answers, leave one out (the rule of
    ``cascade calibrate --memory``, over all held-out items)."""
    loaded = specialist.load(model)
    vectors = loaded.embed([r["text"] for r in holdout])
    assert vectors is not None
    answers = [r["llm_label"] if r["llm_label"] in loaded.labels else None for r in holdout]
    labels, similarity = leave_one_out(vectors, answers, MEMORY_K)
    gold = [r["label"] for r in holdout]
    n = len(holdout)
    data = CalibrationData(
        confidence=np.zeros(n),
        predicted=[""] * n,
        specialist_ok=np.zeros(n, dtype=bool),
        llm_ok=np.array([np.nan if a is None else float(a == g) for a, g in zip(answers, gold, strict=True)]),
        llm_tokens=np.zeros(n),
        memory_ok=np.array([np.nan if a is None else float(a == g) for a, g in zip(labels, gold, strict=True)]),
        memory_similarity=similarity,
        memory_k=MEMORY_K,
    )
    rule = choose_memory_rule(data, np.arange(n))
    if rule is None:
        note = f"the held-out set calibrated no similarity; {FALLBACK_SIMILARITY} used"
        return MemoryRule(k=MEMORY_K, similarity=FALLBACK_SIMILARITY), note
    note = (
        f"calibrated on {n} held-out items (leave one out): at similarity >= {rule.similarity} the memory answered "
        f"{rule.n} of them, accuracy {rule.accuracy:.3f} against the LLM's {rule.llm_accuracy:.3f} on the same items"
    )
    return rule, note


def link(path: Path, target: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.resolve())
    os.replace(tmp, path)


def learn(
    model: Path,
    seed_csv: Path,
    jobs: list[str],
    out: Path,
    holdout_csv: Path | None,
    env: dict[str, str],
    weight: float | None = None,
) -> str:
    """`cascade learn`; with ``holdout_csv`` it also promotes the new version unless McNemar's test finds it worse."""
    command = [CASCADE, "learn", "--model", str(model), "--data", str(seed_csv), "--out", str(out)]
    command += [arg for job in jobs for arg in ("--from-job", job)]
    command += ["--holdout", str(holdout_csv)] if holdout_csv is not None else []
    command += ["--llm-weight", str(weight)] if weight is not None else []
    done = cli(command, env, "learn")
    return (done.stdout + done.stderr).strip()


def cli(command: list[str], env: dict[str, str], name: str) -> "subprocess.CompletedProcess[str]":
    """Run a `cascade` command; exit code 1 is an answer (refused, or not reachable), anything else a failure."""
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode not in (0, 1):
        text = (done.stdout + done.stderr).strip()
        raise RuntimeError(f"cascade {name} failed ({done.returncode}): {text[-2000:]}")
    return done


def promote(model: Path, candidate: Path, holdout_csv: Path, env: dict[str, str]) -> tuple[bool, str]:
    """`cascade promote`: whether the link now names ``candidate`` (McNemar's test did not find it worse)."""
    command = [CASCADE, "promote", "--model", str(model), "--candidate", str(candidate)]
    done = cli([*command, "--holdout", str(holdout_csv)], env, "promote")
    said = (done.stdout + done.stderr).strip().splitlines()
    return model.resolve() == candidate.resolve(), said[-1] if said else ""


def step_row(
    index: int,
    results: list[ItemResult],
    recorded: dict[str, str],
    calls: int,
    model: str,
) -> Step:
    n = len(results)
    return Step(
        step=index,
        items=n,
        llm_calls=calls,
        llm_source_llm=sum(r.llm_source is AnswerSource.LLM and r.route is Route.ESCALATE for r in results),
        cache_hits=sum(r.llm_source is AnswerSource.CACHE for r in results),
        memory_answers=sum(r.llm_source is AnswerSource.MEMORY for r in results),
        escalated=sum(r.route is Route.ESCALATE for r in results),
        cascade_accuracy=sum(bool(r.correct) for r in results) / n,
        specialist_accuracy=sum(r.specialist_label == r.gold for r in results) / n,
        llm_accuracy=sum(recorded.get(r.custom_id, "") == r.gold for r in results) / n,
        model=model[:12],
    )


class Bench:
    def __init__(self, args: argparse.Namespace, settings: Settings, store: RedisJobStore, base: str) -> None:
        self.args, self.settings, self.store, self.base = args, settings, store, base
        self.enqueue = partial(send_specialist_chunk, app)
        self.env = {**os.environ, "CASCADE_REDIS_URL": settings.redis_url, "CASCADE_LLM_MODEL": MODEL_NAME}

    def calls(self) -> int:
        found = replay_outcomes(self.base)
        return round(found.get("recorded", 0.0) + found.get("off_choice", 0.0))

    def calibrate(self, model: Path, holdout_csv: Path) -> tuple[Path | None, int, str]:
        """`cascade calibrate` a version on the held-out items, as ``--policy`` says: its policy file (None: no
        policy meets the target), the LLM calls calibrating made, and what it said last."""
        rule = self.policy
        assert rule is not None
        before = self.calls()
        command = [CASCADE, "calibrate", "--model", str(model), "--data", str(holdout_csv), "--top-k", "0"]
        command += ["--target-accuracy", f"{rule.target:.4f}", "--delta", str(rule.delta)]
        command += ["--max-escalation", str(rule.max_escalation), "--json"]
        found = json.loads(cli(command, self.env, "calibrate").stdout)
        file = found["policy_file"]
        return (Path(file) if file else None), self.calls() - before, str(found["policy"]["message"])

    def job(
        self, data: Path, model: Path, memory: MemoryRule | None, policy: Path | None = None
    ) -> tuple[list[ItemResult], int, str]:
        before = self.calls()
        job = labelled.submit_labelled(
            self.settings,
            self.store,
            self.enqueue,
            data,
            model,
            threshold=self.args.threshold,
            policy_file=policy,
            top_k=0,
            memory_similarity=memory.similarity if memory else None,
            memory_k=memory.k if memory else MEMORY_K,
        )
        wait_job(self.store, job.job_id, self.worker, self.worker_log)
        results = list(self.store.iter_results(job.job_id))
        return results, self.calls() - before, job.job_id

    worker: "subprocess.Popen[bytes]"
    worker_log: Path
    policy: PolicyRule | None = None


def run_config(
    bench: Bench,
    name: str,
    steps: list[list[dict[str, str]]],
    seed_model: Path,
    seed_csv: Path,
    holdout_csv: Path,
    memory: MemoryRule | None,
) -> Config:
    out: Path = bench.args.out / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    redis.Redis.from_url(bench.settings.redis_url).flushdb()  # no cache, no memory, no jobs of another config
    first = out / "bank-v1"
    shutil.copytree(seed_model, first)
    model = out / "bank"
    link(model, first)
    use_memory, use_learning = name in ("memory", "both"), name in ("learning", "both")
    rows, jobs = [], []
    policy, seed_calls = None, 0
    if bench.policy is not None:
        policy, seed_calls, said = bench.calibrate(first, holdout_csv)
        print(f"  {name}: seed version calibrated: {said}", file=sys.stderr, flush=True)
    for i, step in enumerate(steps):
        data = write_csv(out / f"step-{i + 1}.csv", [(r["text"], r["label"]) for r in step])
        recorded = {f"row-{j + 2}": r["llm_label"] for j, r in enumerate(step)}
        identity = specialist.load(model).sha256
        results, calls, job_id = bench.job(data, model, memory if use_memory else None, policy)
        if any(r.llm_source in (AnswerSource.LLM, AnswerSource.CACHE) for r in results):
            jobs.append(job_id)  # `cascade learn` refuses a job without LLM answers to learn from
        row = step_row(i + 1, results, recorded, calls, identity)
        row.policy = None if policy is None else policy.stem.removeprefix("policy-")
        if use_learning and i + 1 < len(steps) and not jobs:
            row.promoted, row.gate = False, "no LLM answers yet to learn from"
        elif use_learning and i + 1 < len(steps):
            candidate = out / f"bank-v{i + 2}"
            if bench.policy is None:
                text = learn(model, seed_csv, jobs, candidate, holdout_csv, bench.env)
                row.promoted = specialist.load(model).sha256 != identity
                row.gate = text.splitlines()[-1] if text else ""
            else:  # learn, certify a policy for the new version, then promote it unless McNemar finds it worse
                learn(model, seed_csv, jobs, candidate, None, bench.env, bench.policy.llm_weight)
                found, row.calibration_calls, said = bench.calibrate(candidate, holdout_csv)
                row.promoted, row.gate = False, f"no policy meets the target: {said}"
                if found is not None:
                    row.promoted, row.gate = promote(model, candidate, holdout_csv, bench.env)
                    policy = found if row.promoted else policy
        rows.append(row)
        print(
            f"  {name} step {i + 1}: {row.items} items, {row.llm_calls} LLM calls ({row.llm_per_1000:.0f}/1000), "
            f"cache {row.cache_hits}, memory {row.memory_answers}, cascade {row.cascade_accuracy:.3f}, "
            f"specialist {row.specialist_accuracy:.3f}, all-LLM {row.llm_accuracy:.3f}"
            + (f", promoted {row.promoted}" if row.promoted is not None else ""),
            file=sys.stderr,
            flush=True,
        )
    return Config(name=name, steps=rows, seed_calibration_calls=seed_calls)


def repeated_job(bench: Bench, stream: list[dict[str, str]], seed_model: Path, rng: np.random.Generator) -> Repeated:
    """A job of which 30% are repeats of its other texts (exact, or differing in case and spaces only)."""
    redis.Redis.from_url(bench.settings.redis_url).flushdb()
    distinct_n = round(REPEATED_ITEMS * (1 - REPEATED_SHARE))
    base = [stream[int(i)] for i in rng.choice(len(stream), size=distinct_n, replace=False)]
    repeats = [base[int(i)] for i in rng.choice(distinct_n, size=REPEATED_ITEMS - distinct_n)]
    variants = [{**r, "text": "  " + r["text"].upper() + " "} if k % 2 else r for k, r in enumerate(repeats)]
    items = base + variants
    order = rng.permutation(len(items))
    items = [items[int(i)] for i in order]
    out: Path = bench.args.out / "repeated"
    out.mkdir(parents=True, exist_ok=True)
    data = write_csv(out / "repeated.csv", [(r["text"], r["label"]) for r in items])
    results, calls, _ = bench.job(data, seed_model, None)
    texts = {f"row-{j + 2}": normalise(r["text"]) for j, r in enumerate(items)}
    asked = [r for r in results if r.route in (Route.ESCALATE, Route.EXPLORE)]
    return Repeated(
        items=len(items),
        distinct_texts=len({normalise(r["text"]) for r in items}),
        escalated_items=len(asked),
        distinct_escalated_texts=len({texts[r.custom_id] for r in asked}),
        llm_calls=calls,
        cache_answers=sum(r.llm_source is AnswerSource.CACHE for r in results),
    )


def run(args: argparse.Namespace) -> Report:
    start = time.perf_counter()
    check_redis_url(args.redis_url)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    data_dir: Path = args.data
    test = read_rows(data_dir / "llm_answers" / "test_gpt4.csv")
    order = rng.permutation(len(test))
    holdout = [test[int(i)] for i in order[: args.holdout]]
    stream = [test[int(i)] for i in order[args.holdout :]]
    steps = [list(part) for part in np.array_split(np.array(stream, dtype=object), args.steps)]
    seed_csv = write_csv(out / "seed.csv", seed_rows(read_rows(data_dir / "train.csv"), args.per_class, rng))
    holdout_csv = write_csv(out / "holdout.csv", [(r["text"], r["label"]) for r in holdout])
    seed_model = out / "seed-model"
    shutil.rmtree(seed_model, ignore_errors=True)
    trained = subprocess.run(
        [CASCADE, "train", str(seed_csv), "--out", str(seed_model), "--features", "minilm"],
        capture_output=True,
        text=True,
        check=False,
    )
    if trained.returncode != 0:
        raise RuntimeError(f"cascade train failed: {trained.stdout[-2000:]}{trained.stderr[-2000:]}")
    memory, note = calibrate_memory(seed_model, holdout)
    print(f"answer memory: {note}", file=sys.stderr)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = Settings(
        redis_url=args.redis_url, llm_url=f"{base}/v1", llm_model=MODEL_NAME, top_k=0, metrics_port=0, chunk_size=100
    )
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.flushdb()
    store = RedisJobStore(client, settings.job_ttl, open_parts(settings))
    bench = Bench(args, settings, store, base)
    if args.policy:
        llm = float(np.mean([r["llm_label"] == r["label"] for r in holdout]))
        bench.policy = PolicyRule(
            llm_holdout_accuracy=llm,
            margin=args.margin,
            target=round(llm - args.margin, 4),
            delta=args.delta,
            max_escalation=args.max_escalation,
            llm_weight=args.llm_weight,
        )
    env = {
        **bench.env,
        "CASCADE_LLM_URL": settings.llm_url,
        "CASCADE_METRICS_PORT": "0",
        "CASCADE_TOP_K": "0",
    }
    if settings.chunk_size is not None:
        env["CASCADE_CHUNK_SIZE"] = str(settings.chunk_size)
    answers = data_dir / "llm_answers" / "test_gpt4.csv"
    replay_cmd = [sys.executable, "-m", "bench.replay_llm", "--answers", str(answers), "--port", str(port)]
    worker_cmd = [CASCADE, "worker", "--queues", "specialist,llm", "--hostname", f"learning{os.getpid()}@%h"]
    configs: list[Config] = []
    repeated = None
    with ExitStack() as stack:
        replay = stack.enter_context(process([*replay_cmd, "--model", MODEL_NAME], out / "replay.log"))
        wait_http(f"{base}/health", replay, out / "replay.log")
        bench.worker_log = out / "worker.log"
        bench.worker = stack.enter_context(process([*worker_cmd, "--loglevel", "WARNING"], bench.worker_log, env))
        configure(app, settings)
        wait_worker(bench.worker, bench.worker_log)
        for name in args.configs:
            configs.append(run_config(bench, name, steps, seed_model, seed_csv, holdout_csv, memory))
        if not args.no_repeated:
            repeated = repeated_job(bench, stream, seed_model, rng)
    client.flushdb()
    client.close()
    return Report(
        seed=args.seed,
        per_class=args.per_class,
        seed_items=sum(1 for _ in read_rows(seed_csv)),
        holdout=len(holdout),
        stream=len(stream),
        steps=args.steps,
        threshold=args.threshold,
        policy=bench.policy,
        memory=memory,
        memory_note=note,
        configs=configs,
        repeated=repeated,
        seconds=time.perf_counter() - start,
    )


def plot(report: Report, path: Path) -> None:
    try:
        import matplotlib
    except ModuleNotFoundError as e:
        raise SystemExit("the plots need matplotlib: pip install 'cascade[plots]'") from e

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (calls, acc) = plt.subplots(1, 2, figsize=(12, 4.8))
    for config in report.configs:
        x = [s.step for s in config.steps]
        calls.plot(x, [s.llm_per_1000 for s in config.steps], marker="o", label=config.name)
        acc.plot(x, [s.cascade_accuracy for s in config.steps], marker="o", label=f"cascade, {config.name}")
    if report.configs:
        first = report.configs[0]
        x = [s.step for s in first.steps]
        acc.plot(x, [s.llm_accuracy for s in first.steps], "k--", label="all-LLM (recorded GPT-4)")
        acc.plot(x, [s.specialist_accuracy for s in first.steps], "k:", label="seed specialist alone")
        last = report.configs[-1]
        acc.plot(x, [s.specialist_accuracy for s in last.steps], color="grey", label=f"specialist alone, {last.name}")
    calls.set_title("LLM calls per 1,000 items, by job of the stream")
    calls.set_xlabel("job (stream order)")
    calls.set_ylim(bottom=0)
    calls.legend()
    acc.set_title("accuracy, by job of the stream")
    acc.set_xlabel("job (stream order)")
    acc.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    caption_png(path, CAPTION)


def routing(report: Report) -> str:
    rule = report.policy
    if rule is None:
        return f"Escalate below confidence {report.threshold}"
    weight = "its default" if rule.llm_weight is None else f"{rule.llm_weight:g}"
    return (
        f"Every version routes by a policy `cascade calibrate` certified on the held-out items: target accuracy "
        f"{rule.target:.4f} (all-LLM's {rule.llm_holdout_accuracy:.4f} there, minus {rule.margin:g}), delta "
        f"{rule.delta:g}, at most {rule.max_escalation:g} escalated; a learned version (`cascade learn`, LLM weight "
        f"{weight}) is promoted only when a policy is certified for it and McNemar's test does not find it worse "
        f"(`cascade promote`); without a certified policy, the threshold {report.threshold}. Calibration calls: the "
        "LLM calls calibrating made on the held-out items (not in the stream's counts)"
    )


def markdown(report: Report) -> str:
    lines = [
        "# Learning from the LLM, and answers never bought twice (bench/learning_curve.py)",
        "",
        ATTRIBUTION + ".",
        "",
        f"Seed: {report.per_class} items per intent ({report.seed_items} items), `--features minilm`. Held out: "
        f"{report.holdout} test items. Stream: {report.stream} test items in {report.steps} jobs, fixed random "
        f"order (seed {report.seed}). {routing(report)}; all 77 labels as candidates.",
        f"Answer memory: k={report.memory.k if report.memory else '-'}, similarity >= "
        f"{report.memory.similarity if report.memory else '-'} ({report.memory_note}).",
        "",
        "| config | LLM calls (vs plain) | per 1,000: first job | last job | last/first | first 3 jobs | "
        "last 3 jobs | last 3/first 3 | cascade acc. | all-LLM acc. | cascade - all-LLM | last job: cascade - "
        "all-LLM | memory answers | cache answers | calibration calls |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    plain = next((c for c in report.configs if c.name == "plain"), None)
    for c in report.configs:
        cascade, llm = c.accuracy("cascade_accuracy"), c.accuracy("llm_accuracy")
        versus = f" ({c.llm_calls / plain.llm_calls:.2f})" if plain and plain.llm_calls else ""
        last = c.steps[-1]
        lines.append(
            f"| {c.name} | {c.llm_calls}{versus} | {c.steps[0].llm_per_1000:.0f} | {last.llm_per_1000:.0f} | "
            f"{c.fall:.2f} | {c.per_1000(c.steps[:3]):.0f} | {c.per_1000(c.steps[-3:]):.0f} | {c.fall_3:.2f} | "
            f"{cascade:.3f} | {llm:.3f} | {100 * (cascade - llm):+.1f} pt | "
            f"{100 * (last.cascade_accuracy - last.llm_accuracy):+.1f} pt | "
            f"{sum(s.memory_answers for s in c.steps)} | {sum(s.cache_hits for s in c.steps)} | "
            f"{c.calibration_calls} |"
        )
    for c in report.configs:
        lines += [
            "",
            f"## {c.name}",
            "",
            "| job | items | LLM calls | per 1,000 | memory | cache | cascade | specialist | all-LLM | model "
            "| policy | promoted next | calibration calls |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in c.steps:
            promoted = "-" if s.promoted is None else ("yes" if s.promoted else "no")
            lines.append(
                f"| {s.step} | {s.items} | {s.llm_calls} | {s.llm_per_1000:.0f} | {s.memory_answers} | "
                f"{s.cache_hits} | {s.cascade_accuracy:.3f} | {s.specialist_accuracy:.3f} | {s.llm_accuracy:.3f} | "
                f"{s.model} | {s.policy or '-'} | {promoted} | {s.calibration_calls} |"
            )
    if report.repeated:
        r = report.repeated
        lines += [
            "",
            "## A job with 30% repeated texts",
            "",
            f"{r.items} items, {r.distinct_texts} distinct texts (normalised; half the repeats differ in case and "
            f"spaces). Escalated: {r.escalated_items} items, {r.distinct_escalated_texts} distinct texts. "
            f"**LLM calls: {r.llm_calls}**; {r.cache_answers} answers from the cache.",
        ]
    lines += ["", f"Took {report.seconds:.0f} s.", ""]
    return "\n".join(lines)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.learning_curve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--holdout", type=int, default=580)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument(
        "--policy",
        action="store_true",
        help="route every version by a policy `cascade calibrate` certifies on the held-out items (not --threshold);"
        " a learned version is promoted only with one",
    )
    parser.add_argument("--margin", type=float, default=0.03, help="--policy: target = all-LLM's held-out acc. - this")
    parser.add_argument("--delta", type=float, default=0.05, help="--policy: calibrate's delta")
    parser.add_argument("--max-escalation", type=float, default=0.5, help="--policy: calibrate's --max-escalation")
    parser.add_argument("--llm-weight", type=float, default=None, help="cascade learn --llm-weight (default: its own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", type=lambda s: [c for c in s.split(",") if c], default=list(CONFIGS))
    parser.add_argument("--no-repeated", action="store_true", help="skip the job with repeated texts")
    parser.add_argument("--data", type=Path, default=DATASETS / "banking77")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "learning_curve")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS, help="a database of the benchmark's own, flushed")
    parser.add_argument("--render", type=Path, default=None, help="only write report.md and the plot of a report.json")
    args = parser.parse_args(argv)
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configs: {', '.join(sorted(unknown))} (known: {', '.join(CONFIGS)})")
    return args


def main(argv: Sequence[str] | None = None) -> Report:
    args = parse(argv)
    if args.render is not None:  # the report and plot again, from a run's report.json
        report = Report.model_validate_json(args.render.read_text())
        args.out = args.render.parent
    else:
        report = run(args)
    text = markdown(report)
    (args.out / "report.md").write_text(text)
    (args.out / "report.json").write_text(report.model_dump_json(indent=2) + "\n")
    plot(report, args.out / "learning_curve.png")
    print(text)
    print(f"written: {args.out / 'report.md'}, report.json, learning_curve.png", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
