"""`cascade learn` and `cascade promote` against the tests' Redis database: jobs made directly in the store (no
workers), their chunks kept after they end; the gate refuses a candidate that learned wrong LLM labels, promotes
one that learned right ones, and a candidate that does not load leaves the link as it was.

Small Banking77 subsets (Casanueva et al., 2020, CC BY 4.0), TF-IDF specialists: 6 intents.
"""

import csv
import os
import subprocess
from pathlib import Path

import pytest

from cascade.broker.keys import JobKeys
from cascade.broker.learn import learn
from cascade.broker.promote import promote
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.broker.submit import build_spec
from cascade.workers import specialist
from cascade.workers.data import read_labelled_csv
from cascade.workers.errors import InputError, ModelError, StorageError
from cascade.workers.items import AnswerSource, Item, ItemResult, Route, Tier
from cascade.workers.jobs import JobSpec, JobStatus
from cascade.workers.manifest import read_manifest
from cascade.workers.policy import Band, Policy
from tests.conftest import CASCADE, _env
from tests.workers.test_learning import by_label, intents


def write_csv(path: Path, texts: list[str], labels: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels, strict=True))
    return path


def cascade(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The `cascade` command on the tests' Redis database."""
    env = _env(settings)
    return subprocess.run([CASCADE, *args], env=env, capture_output=True, text=True, check=False, timeout=300)


def split(name: str, start: int, stop: int) -> tuple[list[str], list[str]]:
    pairs = [(t, lab) for lab in intents() for t in by_label(name)[lab][start:stop]]
    return [t for t, _ in pairs], [lab for _, lab in pairs]


@pytest.fixture
def held_out(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "held_out.csv", *split("test", 0, 40))


def root_model(tmp_path: Path, per_label: int) -> tuple[Path, Path]:
    """``models/banking``, a real folder trained by `cascade train` on the first ``per_label`` items per intent,
    and its training CSV."""
    data = write_csv(tmp_path / "train.csv", *split("train", 0, per_label))
    labelled = read_labelled_csv(data)
    model = tmp_path / "models" / "banking"
    specialist.save(specialist.train(labelled.texts, labelled.labels), model, labelled.sha256)
    return model, data


def finished_job(
    store: RedisJobStore,
    model_sha256: str,
    texts: list[str],
    llm_labels: list[str | None],
    source: AnswerSource | None = AnswerSource.LLM,
    finish: bool = True,
) -> str:
    """A job that ran with ``model_sha256``: every item escalated and answered ``llm_labels`` by ``source``."""
    spec = JobSpec(model_path="m", model_sha256=model_sha256, threshold=1.0, top_k=3, llm_model="x")
    job = store.create(spec)
    store.put_chunk(job, 0, [Item(custom_id=f"i{n}", text=t, line=n + 1) for n, t in enumerate(texts)])
    store.finish_intake(job, total=len(texts), chunks=1)
    results = [
        ItemResult(
            custom_id=f"i{n}",
            line=n + 1,
            label=label or "x",
            confidence=0.9,
            tier=Tier.LLM,
            route=Route.ESCALATE,
            specialist_label="x",
            specialist_confidence=0.3,
            llm_label=label,
            llm_source=source if label else None,
        )
        for n, label in enumerate(llm_labels)
    ]
    store.record(job, 0, results=results if finish else results[:-1])
    assert store.status(job) is (JobStatus.COMPLETED if finish else JobStatus.IN_PROGRESS)
    return job


def right_answers(store: RedisJobStore, model: Path, start: int = 30, stop: int = 150) -> str:
    texts, labels = split("train", start, stop)
    return finished_job(store, read_manifest(model).identity, texts, list(labels))


def wrong_answers(store: RedisJobStore, model: Path) -> str:
    """The LLM answers each intent's items with the next intent: deliberately wrong labels."""
    texts, labels = split("train", 30, 150)
    names = intents()
    shifted: list[str | None] = [names[(names.index(lab) + 1) % len(names)] for lab in labels]
    return finished_job(store, read_manifest(model).identity, texts, shifted)


def test_learn_refuses_other_data_a_job_of_another_line_and_a_job_without_llm_answers(
    store: RedisJobStore, tmp_path: Path
) -> None:
    model, data = root_model(tmp_path, 30)
    good = right_answers(store, model)
    other_data = write_csv(tmp_path / "other.csv", *split("train", 0, 29))
    with pytest.raises(InputError, match=r"^--data .*other\.csv: checksum .* is not that of the data"):
        learn(store, model, other_data, [good], tmp_path / "v2")
    stranger = finished_job(store, "f" * 64, ["a text"], ["card_arrival"])
    with pytest.raises(InputError, match=rf"job {stranger} ran with specialist f{{12}}…, not of the lineage of"):
        learn(store, model, data, [good, stranger], tmp_path / "v2")
    identity = read_manifest(model).identity
    asked_nobody = finished_job(store, identity, ["a", "b"], [None, None])
    remembered = finished_job(store, identity, ["a", "b"], ["card_arrival"] * 2, source=AnswerSource.MEMORY)
    for job in (asked_nobody, remembered):
        with pytest.raises(InputError, match=rf"--from-job {job}: the job has no LLM answers"):
            learn(store, model, data, [job], tmp_path / "v2")
    running = finished_job(store, identity, ["a", "b"], ["card_arrival"] * 2, finish=False)
    with pytest.raises(InputError, match="learn from finished jobs only"):
        learn(store, model, data, [running], tmp_path / "v2")
    with pytest.raises(InputError, match="no such job"):
        learn(store, model, data, ["batch_missing"], tmp_path / "v2")
    assert not (tmp_path / "v2").exists()


def test_learn_joins_answers_to_the_texts_of_the_ended_job_and_refuses_when_they_are_gone(
    store: RedisJobStore, tmp_path: Path
) -> None:
    model, data = root_model(tmp_path, 30)
    job = right_answers(store, model)
    done = learn(store, model, data, [job, job], tmp_path / "v2", weight=0.5)  # a job named twice counts once
    n = len(split("train", 30, 150)[0])
    assert (done.items, done.offered, done.held_out) == (180, n, 0)
    assert done.learned.used + done.learned.dropped == n
    assert done.learned.dropped < 5  # Banking77 repeats a few texts: dropped as gold texts or repeats
    manifest = read_manifest(done.folder)
    root = read_manifest(model)
    assert manifest.lineage is not None
    assert (manifest.lineage.parent, manifest.lineage.ancestors) == (root.identity, [root.identity])
    used = done.learned.used
    assert (manifest.lineage.jobs, manifest.lineage.llm_labels, manifest.lineage.llm_weight) == ([job], used, 0.5)
    assert manifest.lineage.data_sha256 == root.data_sha256 == read_labelled_csv(data).sha256
    # a grandchild learns from a job run with the root (an ancestor), from the same original data
    grandchild = read_manifest(learn(store, done.folder, data, [job], tmp_path / "v3").folder)
    assert grandchild.line == [root.identity, manifest.identity, grandchild.identity]
    with pytest.raises(InputError, match="exists"):
        learn(store, model, data, [job], tmp_path / "v2")
    assert not store.redis.exists(JobKeys(job).chunk(0))  # the texts are read from the job's committed part
    store.parts.delete_job(job)  # a result store that lost the part: refused, naming it, never half-learned
    with pytest.raises(StorageError, match=r"result part .* is missing"):
        learn(store, model, data, [job], tmp_path / "v4")


def test_promotion_is_refused_for_a_candidate_that_learned_wrong_labels(
    store: RedisJobStore, settings: Settings, tmp_path: Path, held_out: Path
) -> None:
    """Through the CLI: `cascade learn ... --holdout` prints the comparison, exits 1, keeps both folders."""
    model, data = root_model(tmp_path, 30)
    job = wrong_answers(store, model)
    served = read_manifest(model).identity
    candidate = tmp_path / "models" / "banking-v2"
    args = ["learn", "--model", str(model), "--data", str(data), "--from-job", job, "--out", str(candidate)]
    run = cascade(settings, *args, "--holdout", str(held_out))
    assert run.returncode == 1, run.stderr
    assert "b " in run.stdout
    assert "one-sided p (candidate worse)" in run.stdout
    assert run.stderr.startswith("refused: the candidate is worse")
    assert len(run.stderr.strip().splitlines()) == 1
    assert model.is_dir()
    assert not model.is_symlink()
    assert read_manifest(model).identity == served
    assert specialist.load(candidate).manifest.lineage is not None  # kept for inspection
    outcome = promote(model, candidate, held_out)
    assert not outcome.promoted
    assert outcome.test.candidate_accuracy < outcome.test.current_accuracy
    assert outcome.test.b > outcome.test.c
    assert outcome.test.p_worse < 0.05


def test_promotion_of_a_better_candidate_swaps_the_link_and_jobs_keep_the_version_they_pinned(
    store: RedisJobStore, settings: Settings, tmp_path: Path, held_out: Path
) -> None:
    model, data = root_model(tmp_path, 5)  # a weak root: 5 items per intent
    models = model.parent
    of_root = right_answers(store, model)
    v2 = learn(store, model, data, [of_root], models / "banking-v2").folder
    first = promote(model, v2, held_out, store=store)
    assert first.promoted
    assert first.test.candidate_accuracy > first.test.current_accuracy
    assert first.moved == models / "banking-v1"
    assert os.readlink(model) == "banking-v2"
    assert read_manifest(models / "banking-v1").lineage is None
    assert specialist.load(model).sha256 == read_manifest(v2).identity
    # a job submitted now pins banking-v2's folder; a policy made for banking-v1 is refused for the new version
    pinned = build_spec(settings, model)
    assert pinned.model_path == str(v2.resolve())
    policy = write_policy(tmp_path / "policy-v1.json", read_manifest(models / "banking-v1").identity, settings)
    with pytest.raises(InputError, match="calibrated for another specialist"):
        build_spec(settings, model, policy_file=policy)
    # the next version, learned again from the root's job and from one of banking-v2, is swapped in atomically;
    # the job pinned to banking-v2 still loads it
    v3 = learn(store, model, data, [of_root, right_answers(store, v2, 150, 160)], models / "banking-v3").folder
    second = promote(model, v3, held_out, store=store)
    assert second.promoted
    assert second.moved is None
    assert os.readlink(model) == "banking-v3"
    assert specialist.load(pinned.model_path, expected_sha256=pinned.model_sha256).sha256 == pinned.model_sha256
    assert build_spec(settings, model).model_path == str(v3.resolve())
    assert not list(models.glob(".banking.*"))  # no temporary link left behind


def test_a_candidate_that_fails_to_load_leaves_the_current_version_serving(
    store: RedisJobStore, settings: Settings, tmp_path: Path, held_out: Path
) -> None:
    model, data = root_model(tmp_path, 5)
    models = model.parent
    v2 = learn(store, model, data, [right_answers(store, model)], models / "banking-v2").folder
    with (v2 / specialist.MODEL_FILE).open("ab") as f:
        f.write(b"\0")  # corrupt
    with pytest.raises(ModelError, match=r"does not load .*altered.*keeps serving"):
        promote(model, v2, held_out)
    assert model.is_dir()
    assert not model.is_symlink()
    assert not (models / "banking-v1").exists()
    # the same with a link already in place: it keeps pointing where it did
    os.rename(model, models / "banking-v1")
    os.symlink("banking-v1", model)
    run = cascade(settings, "promote", "--model", str(model), "--candidate", str(v2), "--holdout", str(held_out))
    assert run.returncode == 3  # an input error (README: exit codes)
    assert run.stderr.startswith(f"error: --candidate {v2}: does not load")
    assert len(run.stderr.strip().splitlines()) == 1
    assert os.readlink(model) == "banking-v1"


def test_the_first_promotion_waits_for_jobs_that_pinned_the_real_folder(
    store: RedisJobStore, settings: Settings, tmp_path: Path, held_out: Path
) -> None:
    model, data = root_model(tmp_path, 5)
    v2 = learn(store, model, data, [right_answers(store, model)], model.parent / "banking-v2").folder
    running = store.create(build_spec(settings, model))
    with pytest.raises(InputError, match=rf"1 unfinished job\(s\) pinned the folder itself \({running}\)"):
        promote(model, v2, held_out, store=store)
    assert model.is_dir()
    assert not model.is_symlink()
    store.end(running, JobStatus.CANCELLED)
    assert promote(model, v2, held_out, store=store).promoted


def test_the_cli_shows_a_wrong_option_as_one_line(settings: Settings, store: RedisJobStore, tmp_path: Path) -> None:
    model, data = root_model(tmp_path, 30)
    job = right_answers(store, model)
    other = write_csv(tmp_path / "other.csv", *split("train", 0, 29))
    args = ["learn", "--model", str(model), "--data", str(other), "--from-job", job, "--out", str(tmp_path / "v2")]
    run = cascade(settings, *args)
    assert run.returncode == 3
    assert run.stderr.startswith(f"error: --data {other}: checksum ")
    assert len(run.stderr.strip().splitlines()) == 1
    assert "Traceback" not in run.stderr
    args[4] = str(data)
    run = cascade(settings, *args, "--llm-weight", "0.5")
    assert run.returncode == 0, run.stderr
    n = len(split("train", 30, 150)[0])
    assert f"learned from 1 job(s): {n} LLM labels, " in run.stdout
    assert " used at weight 0.5, " in run.stdout
    assert f"saved {tmp_path / 'v2'}" in run.stdout


def write_policy(path: Path, specialist_sha256: str, settings: Settings) -> Path:
    policy = Policy(
        version="v-test",
        created_at=0,
        target_accuracy=0.9,
        delta=0.05,
        reachable=True,
        message="",
        edges=[0.0, 1.0],
        escalate={"*": []},
        bands=[Band(lo=0, hi=1, n=1, specialist_accuracy=1, n_llm=1, llm_accuracy=1)],
        certificate=None,
        specialist_sha256=specialist_sha256,
        llm_model=settings.llm_model,
        calibration_sha256="c",
        calibration_items=1,
        mean_llm_tokens=10,
    )
    path.write_text(policy.model_dump_json())
    return path
