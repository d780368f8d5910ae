"""The model commands: train, calibrate, evaluate, learn, promote, and the demo that strings them together."""

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import BaseModel
from rich.markup import escape

from cascade.broker.cli.common import JsonFlag, emit, err, job_store, out, settings_from_env
from cascade.broker.cli.jobs import enqueue_for, exit_unless_completed, finish, wait_for
from cascade.broker.settings import Settings
from cascade.broker.summary import Summary
from cascade.broker.views import print_bands, print_evaluation, print_summary
from cascade.workers.errors import InputError
from cascade.workers.manifest import Features
from cascade.workers.policy import Policy

if TYPE_CHECKING:
    from cascade.broker.labelled import LabelledJob
    from cascade.broker.promote import Promotion


class Trained(BaseModel):
    """``train --json``."""

    model_dir: Path
    items: int
    labels: int
    seconds: float
    holdout_accuracy: float
    n_holdout: int


class Calibrated(BaseModel):
    """``calibrate --json``: the policy, certified or not, and where it was written (None: not certified)."""

    policy_file: Path | None
    policy: Policy


class Promoted(BaseModel):
    """``promote --json`` (and ``learn --holdout``): the paired test, and what serves now."""

    model: Path
    candidate: Path
    holdout: Path
    promoted: bool
    previous: Path
    serving: Path
    moved: Path | None
    n: int
    current_accuracy: float
    candidate_accuracy: float
    b: int
    """Items the current version got right and the candidate wrong."""
    c: int
    """Items the candidate got right and the current version wrong."""
    p_value: float
    p_worse: float
    alpha: float


class Learned(BaseModel):
    """``learn --json``."""

    model_dir: Path
    jobs: list[str]
    offered: int
    used: int
    llm_weight: float
    dropped: int
    unknown_label: int
    gold_duplicate: int
    repeated: int
    held_out: int
    gold_items: int
    holdout_accuracy: float
    n_holdout: int
    promotion: Promoted | None


class Demoed(BaseModel):
    """``demo --json``: the calibrated policy and the summary of the job run under it."""

    policy_file: Path | None
    policy: Policy
    job: Summary


def train(
    data: Annotated[Path, typer.Argument(help="CSV with text and label columns")],
    out_dir: Annotated[Path, typer.Option("--out", help="model folder to write")],
    holdout: Annotated[float, typer.Option(min=0.05, max=0.5, help="share held out for the accuracy")] = 0.2,
    seed: int = 0,
    features: Annotated[
        Features, typer.Option(help="tfidf: word n-grams; minilm: sentence embeddings (the embeddings extra)")
    ] = Features.TFIDF,
    encoder: Annotated[
        Path | None,
        typer.Option(help="minilm: a local sentence-transformers folder instead of the bundled all-MiniLM-L6-v2"),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Train the specialist and save it with its manifest."""
    from cascade.workers import specialist
    from cascade.workers.data import read_labelled_csv
    from cascade.workers.embedding import Encoder

    if encoder is not None and features is not Features.MINILM:
        raise InputError("--encoder: only with --features minilm")
    labelled = read_labelled_csv(data)
    opened = Encoder.open(encoder, threads=settings_from_env().encoder_threads) if features is Features.MINILM else None
    if opened is not None:
        where = escape(str(opened.path))
        err.print(f"encoding {len(labelled.texts)} texts with {where} ({opened.threads} torch thread(s))")
    report = specialist.train(labelled.texts, labelled.labels, holdout=holdout, seed=seed, encoder=opened)
    specialist.save(report, out_dir, labelled.sha256)
    trained = Trained(
        model_dir=out_dir,
        items=len(labelled.texts),
        labels=len(report.labels),
        seconds=report.seconds,
        holdout_accuracy=report.holdout_accuracy,
        n_holdout=report.n_holdout,
    )
    line = (
        f"trained on {trained.items} items, {trained.labels} labels, {trained.seconds:.1f} s; held-out accuracy "
        f"{trained.holdout_accuracy:.3f} ({trained.n_holdout} items); saved {out_dir}"
    )
    emit(as_json, trained, lambda: out.print(line))


def _default_dataset() -> Path | None:
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base.parent / "shared" / "datasets" / "banking77"
        if candidate.is_dir():
            return candidate
    return None


def demo(
    data: Annotated[Path | None, typer.Argument(help="folder with train.csv and test.csv")] = None,
    model: Annotated[Path, typer.Option(help="model folder (trained when missing)")] = Path("models/banking77"),
    target_accuracy: Annotated[float, typer.Option(min=0.0, max=1.0, help="the policy's accuracy target")] = 0.85,
    delta: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.05,
    top_k: Annotated[int | None, typer.Option(min=0)] = None,
    as_json: JsonFlag = False,
) -> None:
    """Train on DATA/train.csv; calibrate a policy against the served LLM on half of DATA/test.csv; run the other
    half under it; print what the cascade did, and why."""
    from cascade.broker import labelled
    from cascade.workers.calibration import FitOptions

    data = data or _default_dataset()
    if data is None:
        raise InputError("no dataset given and ../shared/datasets/banking77 does not exist; pass a folder")
    settings = settings_from_env()
    if not (model / "manifest.json").exists():
        train(data / "train.csv", model)
    with tempfile.TemporaryDirectory() as tmp:
        calibration, evaluation = labelled.split_csv(data / "test.csv", Path(tmp))
        out.print(
            f"1. calibrating against the LLM {settings.llm_model} on half of {data / 'test.csv'}: it is asked about "
            "the 30% least confident items, and a policy must reach "
            f"{target_accuracy:.0%} accuracy with probability {1 - delta:.0%}"
        )
        cap = labelled.escalation_cap(model, calibration, 0.3)
        job = _labelled_job(settings, calibration, model, cap, top_k)
        opts = FitOptions(target=target_accuracy, delta=delta, max_escalation=0.3)
        policy = labelled.calibrate(settings, job_store(settings), job, opts)
        print_bands(out, policy)
        out.print(policy.message)
        if not any(policy.escalate.values()):
            out.print(
                f"[bold]{settings.llm_model} is no better than the specialist in any confidence band: the policy "
                "sends nothing to it[/] (a fixed threshold would have, and lost accuracy)."
            )
        path = labelled.save_policy(policy, model) if policy.reachable else None
        out.print(
            f"2. the other half of {data / 'test.csv'} as a job, "
            + (f"under policy {policy.version}" if path else "on the specialist alone (no policy certified)")
        )
        store = job_store(settings)
        run = labelled.submit_labelled(
            settings, store, enqueue_for(settings), evaluation, model, 0.0, top_k, policy_file=path
        )
    out.print(run.job_id)
    summary = finish(settings, run.job_id)
    emit(as_json, Demoed(policy_file=path, policy=policy, job=summary), lambda: print_summary(out, summary))
    exit_unless_completed(summary)


def _labelled_job(
    settings: Settings, data: Path, model: Path, threshold: float, top_k: int | None, limit: int | None = None
) -> "LabelledJob":
    from cascade.broker import labelled

    store = job_store(settings)
    job = labelled.submit_labelled(settings, store, enqueue_for(settings), data, model, threshold, top_k, limit)
    err.print(f"{job.job_id}: {job.items} labelled items, LLM asked below confidence {threshold:.3f}")
    wait_for(store, job.job_id, settings)
    return job


def calibrate(
    model: Annotated[Path, typer.Option(help="model folder written by `cascade train`")],
    data: Annotated[Path, typer.Option(help="labelled CSV (text, label) from the distribution of future jobs")],
    target_accuracy: Annotated[float, typer.Option(min=0.0, max=1.0)],
    delta: Annotated[float, typer.Option(min=0.0, max=1.0, help="allowed probability of missing the target")] = 0.05,
    max_escalation: Annotated[float, typer.Option(min=0.0, max=1.0, help="most items the policy may escalate")] = 0.3,
    per_class: Annotated[bool, typer.Option(help="escalated bands per predicted class")] = False,
    abstain_below: Annotated[float | None, typer.Option(help="abstain where both tiers are below this")] = None,
    explore: Annotated[float, typer.Option(min=0.0, max=1.0, help="exploration share recorded in the policy")] = 0.0,
    top_k: Annotated[int | None, typer.Option(min=0)] = None,
    seed: int = 0,
    memory: Annotated[
        bool, typer.Option(help="calibrate the answer memory too (a minilm specialist): it joins the certificate")
    ] = False,
    memory_k: Annotated[int, typer.Option(min=1, max=50, help="neighbours that must agree")] = 3,
    as_json: JsonFlag = False,
) -> None:
    """Choose an escalation policy that meets an accuracy target with probability 1 - delta."""
    from cascade.broker import labelled
    from cascade.workers.calibration import FitOptions

    settings = settings_from_env()
    cap = labelled.escalation_cap(model, data, max_escalation)
    job = _labelled_job(settings, data, model, cap, top_k)
    opts = FitOptions(
        target=target_accuracy,
        delta=delta,
        max_escalation=max_escalation,
        per_class=per_class,
        abstain_below=abstain_below,
        explore_rate=explore,
        seed=seed,
    )
    fitted = labelled.calibrate(settings, job_store(settings), job, opts, memory_k if memory else None)
    path = labelled.save_policy(fitted, model) if fitted.reachable else None

    def show() -> None:
        print_bands(out, fitted)
        out.print(fitted.message)
        if path is not None:
            out.print(f"policy {fitted.version} written to {path}")
            return
        share = fitted.certificate.escalation_share if fitted.certificate else 0.0
        usd = settings.prices().llm_usd_per_1000_items(fitted.mean_llm_tokens, share)
        out.print(
            f"its cost: about {fitted.mean_llm_tokens * share * 1000:,.0f} LLM tokens, ${usd:.4f}, per 1,000 "
            "items; no policy file written"
        )

    emit(as_json, Calibrated(policy_file=path, policy=fitted), show)
    if path is None:
        raise typer.Exit(1)


def evaluate(
    model: Annotated[Path, typer.Option(help="model folder written by `cascade train`")],
    data: Annotated[Path, typer.Option(help="labelled CSV (text, label)")],
    policy: Annotated[Path | None, typer.Option(help="a policy file to place on the curve")] = None,
    targets: Annotated[str, typer.Option(help="comma-separated accuracy targets")] = "0.85,0.88,0.9,0.92",
    delta: float = 0.05,
    limit: Annotated[int | None, typer.Option(min=1, help="evaluate only the first N items")] = None,
    top_k: Annotated[int | None, typer.Option(min=0)] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="folder for report.json and report.png")] = Path("reports"),
    as_json: JsonFlag = False,
) -> None:
    """Report all-specialist, all-LLM and the cascade at several targets: accuracy, share escalated, cost."""
    from cascade.broker import labelled
    from cascade.workers.evaluation import plot
    from cascade.workers.policy import load_policy

    settings = settings_from_env()
    chosen = load_policy(policy) if policy else None
    job = _labelled_job(settings, data, model, 1.0, top_k, limit)
    levels = [float(t) for t in targets.split(",") if t.strip()]
    report = labelled.evaluation(settings, job_store(settings), job, levels, delta, chosen)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(report.model_dump_json(indent=2) + "\n")
    plot(report, out_dir / "report.png")

    def show() -> None:
        print_evaluation(out, report)
        out.print(f"report written to {out_dir / 'report.json'} and {out_dir / 'report.png'}")

    emit(as_json, report, show)


def learn(
    model: Annotated[Path, typer.Option(help="the parent: a model folder, or the link `cascade promote` swaps")],
    data: Annotated[Path, typer.Option(help="the labelled CSV the parent's line was trained on (checksum)")],
    from_job: Annotated[
        list[str], typer.Option("--from-job", help="a finished job run with the parent or an ancestor; repeatable")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="the new version's folder (must not exist)")],
    llm_weight: Annotated[
        float | None,
        typer.Option(help="sample weight of an LLM-labelled item; a gold one weighs 1  [default: 0.25]"),
    ] = None,
    holdout: Annotated[
        Path | None, typer.Option(help="held-out labelled CSV: compare with the parent, promote unless worse")
    ] = None,
    alpha: Annotated[float, typer.Option(help="the gate's significance level (with --holdout)")] = 0.05,
    seed: int = 0,
    as_json: JsonFlag = False,
) -> None:
    """Train a new version on the parent's data and the LLM's answers in finished jobs; with --holdout, promote it
    when a paired test does not find it worse."""
    from cascade.broker.learn import learn as learn_from_jobs
    from cascade.workers.learning import DEFAULT_LLM_WEIGHT

    if llm_weight is None:
        llm_weight = DEFAULT_LLM_WEIGHT
    done = learn_from_jobs(
        job_store(settings_from_env()), model, data, from_job, out_dir, weight=llm_weight, held_out=holdout, seed=seed
    )
    got, report = done.learned, done.learned.report
    # Printed before the gate runs (on stderr under --json): the training's outcome stands whatever the gate says.
    out.print(
        f"learned from {len(from_job)} job(s): {done.offered} LLM labels, {got.used} used at weight {llm_weight:g}, "
        f"{got.dropped + done.held_out} dropped ({got.unknown_label} with a label the parent does not have, "
        f"{got.gold_duplicate} a gold training text, {got.repeated} repeated, {done.held_out} in --holdout); "
        f"{done.items} gold items; held-out accuracy {report.holdout_accuracy:.3f} ({report.n_holdout} gold items); "
        f"saved {out_dir}"
    )
    promotion = _promote(model, out_dir, holdout, alpha) if holdout is not None else None
    learned = Learned(
        model_dir=out_dir,
        jobs=from_job,
        offered=done.offered,
        used=got.used,
        llm_weight=llm_weight,
        dropped=got.dropped + done.held_out,
        unknown_label=got.unknown_label,
        gold_duplicate=got.gold_duplicate,
        repeated=got.repeated,
        held_out=done.held_out,
        gold_items=done.items,
        holdout_accuracy=report.holdout_accuracy,
        n_holdout=report.n_holdout,
        promotion=promotion,
    )
    emit(as_json, learned)
    if promotion is not None and not promotion.promoted:
        raise typer.Exit(1)


def promote(
    model: Annotated[Path, typer.Option(help="the served name: a link to a version folder, or a real folder")],
    candidate: Annotated[Path, typer.Option(help="a version folder written by `cascade learn`")],
    holdout: Annotated[Path, typer.Option(help="held-out labelled CSV both versions are compared on")],
    alpha: Annotated[float, typer.Option(help="the gate's significance level")] = 0.05,
    as_json: JsonFlag = False,
) -> None:
    """Point MODEL at CANDIDATE unless a paired test (McNemar) finds it worse on the held-out items."""
    promotion = _promote(model, candidate, holdout, alpha)
    emit(as_json, promotion)
    if not promotion.promoted:
        raise typer.Exit(1)


def _promote(model: Path, candidate: Path, holdout: Path, alpha: float) -> Promoted:
    """Gate and swap; what happened is printed for a person (on stderr under --json), and returned."""
    from cascade.broker.promote import promote as gate_and_swap

    done = gate_and_swap(model, candidate, holdout, alpha, store=job_store(settings_from_env()))
    t = done.test
    out.print(
        f"{holdout} ({t.n} items): current {done.previous.name} {t.current_accuracy:.3f}, candidate "
        f"{candidate.name} {t.candidate_accuracy:.3f}; b {t.b} (current right, candidate wrong), c {t.c} "
        f"(candidate right, current wrong); McNemar exact p {t.p_value:.4g}, one-sided p (candidate worse) "
        f"{t.p_worse:.4g}"
    )
    if not done.promoted:
        err.print(
            f"[bold red]refused:[/] the candidate is worse (p {t.p_worse:.4g} < alpha {alpha:g}); "
            f"{escape(str(model))} keeps serving {escape(done.previous.name)}; {escape(str(candidate))} is kept "
            "for inspection",
            highlight=False,
        )
    else:
        moved = f" ({model} was a folder: moved to {done.moved})" if done.moved else ""
        out.print(f"promoted: {model} -> {done.serving.name}, was {done.previous.name}{moved}")
    return _promoted(model, candidate, holdout, done)


def _promoted(model: Path, candidate: Path, holdout: Path, done: "Promotion") -> Promoted:
    t = done.test
    return Promoted(
        model=model,
        candidate=candidate,
        holdout=holdout,
        promoted=done.promoted,
        previous=done.previous,
        serving=done.serving,
        moved=done.moved,
        n=t.n,
        current_accuracy=t.current_accuracy,
        candidate_accuracy=t.candidate_accuracy,
        b=t.b,
        c=t.c,
        p_value=t.p_value,
        p_worse=t.p_worse,
        alpha=done.alpha,
    )
