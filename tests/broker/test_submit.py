"""Intake into the real Redis: duplicates found in the store, an intake that runs again, a job ended meanwhile,
and files of hostile lines."""

import json
import queue
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from cascade.broker.claims import IdClaims
from cascade.broker.intake import Intake
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.broker.submit import CHUNK_SIZES, PROMPT_FILE, build_spec, chunk_size, parse_file, submit_file
from cascade.workers.blocks import specialist_result
from cascade.workers.errors import InputError
from cascade.workers.items import ErrorCode, Item, ItemError, ItemResult, Route, Tier
from cascade.workers.jobs import JobSpec, JobStatus
from cascade.workers.lifecycle import cancel, sweep_job
from cascade.workers.manifest import read_manifest
from cascade.workers.prompts import PROMPT_VERSION, LabelPrompt, Prompt
from tests.broker.test_learn import write_policy
from tests.conftest import write_jsonl

SPEC = JobSpec(model_path="m", model_sha256="s", threshold=0.5, top_k=3, llm_model="x")


def lines(n: int) -> list[dict[str, object] | str]:
    return [{"custom_id": f"c{i}", "text": f"text {i}"} for i in range(n)]


def test_duplicates_are_refused_after_the_first_across_chunks(store: RedisJobStore, tmp_path: Path) -> None:
    rows: list[dict[str, object] | str] = [
        *lines(3),
        {"custom_id": "c0", "text": "again"},
        {"custom_id": "d", "text": "x" * 80},
        *lines(5)[3:],
    ]
    rows.append({"custom_id": "d", "text": "a refused line does not reserve its custom_id"})
    sent: list[int] = []
    job = submit_file(
        store,
        lambda _, i: sent.append(i),
        Settings(chunk_size=2, max_text_chars=60),
        write_jsonl(tmp_path / "in.jsonl", rows),
        SPEC,
    )
    errors = {e.line: e.code for e in store.iter_errors(job)}
    assert errors == {4: ErrorCode.DUPLICATE_ID.value, 5: ErrorCode.TEXT_TOO_LONG.value}
    items = [item for i in sent for item in store.chunk(job, i)]
    assert [i.custom_id for i in items] == ["c0", "c1", "c2", "c3", "c4", "d"]
    assert store.get(job).counts.total == 8


def test_an_intake_that_runs_again_enqueues_only_what_it_had_not(store: RedisJobStore, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [*lines(5), "{broken", {"custom_id": "c1", "text": "dup"}])
    settings = Settings(chunk_size=2)
    job = store.create(SPEC)
    first: list[int] = []
    submit_file(store, lambda _, i: first.append(i), settings, path, SPEC, job)
    assert first == [0, 1, 2]
    chunks = [store.chunk(job, i) for i in first]
    # The worker died after enqueueing chunk 0 only: the redelivered intake enqueues chunks 1 and 2.
    store.redis.hset(f"cascade:job:{job}", mapping={"chunks_sent": 1, "status": "validating"})
    store.redis.hdel(f"cascade:job:{job}", "total")
    again: list[int] = []
    submit_file(store, lambda _, i: again.append(i), settings, path, SPEC, job)
    assert again == [1, 2]
    assert [store.chunk(job, i) for i in first] == chunks
    assert sorted(e.line for e in store.iter_errors(job)) == [6, 7]  # the same two refusals, once each
    view = store.get(job)
    assert (view.status, view.counts.total, view.counts.failed) == (JobStatus.IN_PROGRESS, 7, 2)


def test_a_job_cancelled_while_its_input_is_read_is_swept_when_it_is_stored(
    store: RedisJobStore, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [*lines(5), "{broken"])
    job = store.create(SPEC)
    swept: list[str] = []
    assert cancel(store, swept.append, job)  # validating: the sweep waits for the intake
    assert swept == []
    assert store.status(job) is JobStatus.CANCELLING
    sent: list[int] = []
    submit_file(store, lambda _, i: sent.append(i), Settings(chunk_size=2), path, SPEC, job, sweep=swept.append)
    assert sent == []
    assert swept == [job]
    assert sweep_job(store, job) is JobStatus.CANCELLED
    assert sweep_job(store, job) is None  # delivered again: nothing more
    view = store.get(job)
    assert (view.status, view.counts.completed, view.counts.failed, view.counts.total) == (JobStatus.CANCELLED, 0, 6, 6)
    codes = sorted((e.line, e.code) for e in store.iter_errors(job))
    assert codes == [
        (1, "batch_cancelled"),
        (2, "batch_cancelled"),
        (3, "batch_cancelled"),
        (4, "batch_cancelled"),
        (5, "batch_cancelled"),
        (6, "invalid_json"),
    ]
    assert next(e for e in store.iter_errors(job) if e.custom_id == "c0").message.startswith("line 1: ")


# --- hostile input: every line ends once in the stored chunks or the errors, and the job starts -------------

DEEP = 200_000
BOM = "\ufeff"
IMAGE_ONLY = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]}


def test_a_bom_at_the_start_of_the_file_keeps_line_1(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"custom_id": "a", "text": "hi"}\r\n{"custom_id": "b", "text": "yo"}\r\n')
    parsed = list(parse_file(path, Intake(100)))
    assert parsed == [Item(custom_id="a", text="hi", line=1), Item(custom_id="b", text="yo", line=2)]


def test_a_line_over_the_byte_limit_is_refused_and_the_next_keeps_its_number(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    huge = json.dumps({"custom_id": "h", "text": "x" * 5000})
    path.write_text(f'{{"custom_id": "a", "text": "hi"}}\n{huge}\n{{"custom_id": "b", "text": "yo"}}\n{huge}')
    first, second, third, fourth = parse_file(path, Intake(10_000, max_line_bytes=1000))
    assert first == Item(custom_id="a", text="hi", line=1)
    assert isinstance(second, ItemError)
    assert (second.line, second.code) == (2, ErrorCode.LINE_TOO_LONG.value)
    assert second.message == "line 2: the line has 5031 bytes, over the limit of 1000"
    assert third == Item(custom_id="b", text="yo", line=3)
    assert isinstance(fourth, ItemError)
    assert (fourth.line, fourth.code) == (4, ErrorCode.LINE_TOO_LONG.value)


def test_nul_characters_round_trip_through_the_redis_store(store: RedisJobStore) -> None:
    job = store.create(SPEC)
    item = Item(custom_id="n\x00ul", text="before\x00after", line=1, label="spam\x00")
    with IdClaims() as claims:
        assert claims.claim([item, Item(custom_id=item.custom_id, text="t", line=2)]) == [True, False]
    store.put_chunk(job, 0, [item])
    assert list(store.chunk(job, 0)) == [item]
    store.finish_intake(job, total=1, chunks=1)
    result = ItemResult(
        custom_id=item.custom_id,
        line=1,
        label="spam\x00",
        confidence=0.9,
        tier=Tier.SPECIALIST,
        route=Route.ACCEPT,
        specialist_label="spam\x00",
        specialist_confidence=0.9,
        gold=item.label,
        correct=True,
    )
    assert store.record(job, 0, results=[result]).results == [result]
    assert list(store.iter_results(job)) == [result]


def hostile_lines(tmp_path: Path) -> tuple[Path, dict[int, str], int]:
    """A file mixing every hostile line with good ones: the path, the refused lines' codes, the line count."""
    bad: list[tuple[str, str]] = [
        ("[" * DEEP, "too_deep"),
        ('{"custom_id": "deep", "text": ' + "[" * DEEP + "]" * DEEP + "}", "too_deep"),
        ('{"custom_id": "\\ud800", "text": "hi"}', "invalid_unicode"),
        ('{"custom_id": "\\udc00", "text": "hi"}', "invalid_unicode"),
        ('{"custom_id": "s1", "text": "a \\ud800 b"}', "invalid_unicode"),
        ('{"custom_id": "s2", "text": "a \\udc00 b"}', "invalid_unicode"),
        ('{"custom_id": "s3", "text": "hi", "label": "\\ud800"}', "invalid_unicode"),
        ('{"custom_id": "s4", "text": "hi", "label": "\\udc00"}', "invalid_unicode"),
        (json.dumps({"custom_id": "x" * 20_000_000, "text": "hi"}), "line_too_long"),
        (json.dumps({"custom_id": "x" * 1_000_000, "text": "hi"}), "field_too_long"),
        (json.dumps({"custom_id": "   ", "text": "hi"}), "invalid_field"),
        (
            json.dumps({"custom_id": "img", "url": "/v1/chat/completions", "body": {"messages": [IMAGE_ONLY]}}),
            "invalid_field",
        ),
        ('{"custom_id": "big", "text": "hi", "n": ' + "9" * 5000 + "}", "invalid_json"),
    ]
    odd = [
        BOM + json.dumps({"custom_id": "bom", "text": "line one after a BOM"}),
        '{"custom_id": "nul\\u0000", "text": "with a \\u0000 NUL", "label": "l\\u0000"}',
        '{"custom_id": "\\ud83d\\ude00", "text": "an emoji \\ud83d\\ude00 as a surrogate pair"}',
    ]
    rows: list[tuple[str, str | None]] = [(odd[0], None)]
    for i, refused in enumerate(bad):  # each bad line between good ones
        rows += [(json.dumps({"custom_id": f"g{i}", "text": f"good text {i}"}), None), refused]
    rows += [(line, None) for line in odd[1:]]
    lines = [line for line, _ in rows]
    codes = {n: code for n, (_, code) in enumerate(rows, start=1) if code is not None}
    path = tmp_path / "hostile.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, codes, len(lines)


def test_a_file_of_hostile_lines_runs_its_good_lines_and_refuses_each_bad_one_once(
    store: RedisJobStore, tmp_path: Path
) -> None:
    path, codes, n_lines = hostile_lines(tmp_path)
    assert len(codes) == 13
    sent: list[int] = []
    start = time.perf_counter()
    job = submit_file(store, lambda _, i: sent.append(i), Settings(chunk_size=4), path, SPEC)
    assert time.perf_counter() - start < 10
    items = [item for i in range(store.chunk_count(job)) for item in store.chunk(job, i)]
    errors = list(store.iter_errors(job))
    assert sorted([i.line for i in items] + [e.line for e in errors]) == list(range(1, n_lines + 1))
    assert {e.line: e.code for e in errors} == codes
    assert all(e.message.startswith(f"line {e.line}: ") for e in errors)
    by_id = {i.custom_id: i for i in items}
    assert by_id["bom"].line == 1
    assert (by_id["nul\x00"].text, by_id["nul\x00"].label) == ("with a \x00 NUL", "l\x00")
    assert by_id["\U0001f600"].text.startswith("an emoji \U0001f600")
    assert sent == list(range(store.chunk_count(job)))
    view = store.get(job)
    assert (view.status, view.counts.total, view.counts.failed) == (JobStatus.IN_PROGRESS, n_lines, len(codes))


def test_the_model_folders_prompt_is_the_jobs_unless_another_is_given(
    settings: Settings, sms_model: Path, tmp_path: Path
) -> None:
    model = Path(shutil.copytree(sms_model, tmp_path / "model"))
    assert build_spec(settings, model).prompt is None
    assert build_spec(settings, model).prompt_version == PROMPT_VERSION
    folder_prompt = Prompt(labels={"spam": LabelPrompt(description="unsolicited advertising")})
    (model / PROMPT_FILE).write_text(folder_prompt.model_dump_json())
    spec = build_spec(settings, model)
    assert spec.prompt == folder_prompt
    assert JobSpec.model_validate_json(spec.model_dump_json()).prompt_version == folder_prompt.version != PROMPT_VERSION
    given = tmp_path / "mine.json"
    given.write_text(json.dumps({"instructions": "SMS messages."}))
    assert build_spec(settings, model, prompt_file=given).prompt == Prompt(instructions="SMS messages.")


def test_a_prompt_of_labels_the_model_does_not_know_or_another_prompts_policy_is_refused(
    settings: Settings, sms_model: Path, tmp_path: Path
) -> None:
    strange = tmp_path / "strange.json"
    strange.write_text(json.dumps({"labels": {"spam": {}, "card_arrival": {}, "refund": {}}}))
    with pytest.raises(InputError, match=r"'card_arrival', 'refund'") as raised:
        build_spec(settings, sms_model, prompt_file=strange)
    assert str(strange) in str(raised.value)
    assert "'spam'" not in str(raised.value)
    policy = write_policy(tmp_path / "policy.json", read_manifest(sms_model).identity, settings)  # default prompt
    assert build_spec(settings, sms_model, policy_file=policy).policy is not None
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"instructions": "SMS messages."}))
    with pytest.raises(InputError, match="prompt version"):
        build_spec(settings, sms_model, policy_file=policy, prompt_file=other)


def test_lines_naming_another_model_than_the_llm_or_its_aliases_are_refused(
    settings: Settings, store: RedisJobStore, tmp_path: Path
) -> None:
    assert settings.llm_models() == {settings.llm_model}
    aliased = settings.model_copy(update={"llm_model_aliases": " gpt-3.5-turbo-0125 , ,gpt-4o-mini"})
    assert aliased.llm_models("served") == {"served", "gpt-3.5-turbo-0125", "gpt-4o-mini"}
    user = [{"role": "user", "content": "Hello world!"}]
    rows: list[dict[str, object] | str] = [
        {"custom_id": f"r{i}", "url": "/v1/chat/completions", "body": {"model": m, "messages": user}}
        for i, m in enumerate(["x", "gpt-3.5-turbo-0125", "gpt-4o", "SmolLM2-135M-Instruct"])
    ]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    job = submit_file(store, lambda job_id, index: None, aliased, path, SPEC)  # SPEC's LLM is "x"
    assert [i.custom_id for i in store.chunk(job, 0)] == ["r0", "r1"]
    refused = list(store.iter_errors(job))
    assert [(e.custom_id, e.code) for e in refused] == [
        ("r2", ErrorCode.INVALID_FIELD),
        ("r3", ErrorCode.INVALID_FIELD),
    ]
    assert all("'body.model'" in e.message and "CASCADE_LLM_MODEL_ALIASES" in e.message for e in refused)


def model_with_speed(sms_model: Path, tmp_path: Path, seconds_per_item: float | None) -> JobSpec:
    folder = tmp_path / "model"
    shutil.copytree(sms_model, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["metrics"]["seconds_per_item"] = seconds_per_item
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return SPEC.model_copy(update={"model_path": str(folder)})


@pytest.mark.parametrize(
    ("seconds_per_item", "expected"),
    [(20e-6, 2500), (4.6e-3, 500), (1e-6, 5000), (None, 500)],  # TF-IDF, MiniLM, faster still, never measured
)
def test_an_unset_chunk_size_follows_the_models_recorded_speed(
    sms_model: Path, tmp_path: Path, seconds_per_item: float | None, expected: int
) -> None:
    spec = model_with_speed(sms_model, tmp_path, seconds_per_item)
    assert chunk_size(Settings(chunk_seconds=0.05), spec) == expected
    assert chunk_size(Settings(chunk_size=7), spec) == 7  # a size that is set is the size
    assert chunk_size(Settings(), SPEC) == CHUNK_SIZES.start  # no manifest to read


def test_a_trained_model_records_its_speed_and_its_jobs_chunks_follow_it(
    sms_model: Path, store: RedisJobStore, tmp_path: Path
) -> None:
    measured = read_manifest(sms_model).metrics.seconds_per_item
    assert measured is not None
    assert 0 < measured < 1e-3  # TF-IDF predicts tens of thousands of items a second
    spec = model_with_speed(sms_model, tmp_path, 0.05 / 600)
    sent: list[int] = []
    path = write_jsonl(tmp_path / "in.jsonl", lines(1500))
    job = submit_file(store, lambda _, i: sent.append(i), Settings(chunk_seconds=0.05), path, spec)
    assert sent == [0, 1, 2]
    assert [len(store.chunk(job, i)) for i in sent] == [600, 600, 300]


def _answer_chunks(store: RedisJobStore, job: str, work: "queue.Queue[int | None]") -> None:
    """A worker that answers each chunk it is sent, a little slower than the intake stores them."""
    while (index := work.get()) is not None:
        time.sleep(0.02)
        items = store.chunk(job, index)
        results = [specialist_result(i.custom_id, i.line, None, "a", 0.9) for i in items]
        store.record(job, index, results=results, whole=True)


def test_the_intake_stores_at_most_intake_ahead_items_ahead_of_the_workers(
    store: RedisJobStore, tmp_path: Path
) -> None:
    settings = Settings(chunk_size=10, intake_ahead=30)  # three chunks ahead at most
    job = store.create(SPEC)
    ahead: list[int] = []
    put_chunk = store.put_chunk

    def measured(job_id: str, index: int, items: Sequence[Item]) -> None:
        ahead.append(index - store.chunks_done(job_id))  # chunks stored and not done, this one included
        put_chunk(job_id, index, items)

    store.put_chunk = measured  # type: ignore[method-assign]
    work: queue.Queue[int | None] = queue.Queue()
    worker = threading.Thread(target=_answer_chunks, args=(store, job, work))
    worker.start()
    try:
        submit_file(
            store, lambda _, i: work.put(i), settings, write_jsonl(tmp_path / "in.jsonl", lines(200)), SPEC, job
        )
    finally:
        work.put(None)
        worker.join()
    assert len(ahead) == 20
    assert max(ahead) == 2, "chunk n is stored once chunk n - 3 is done, not before"
    assert store.get(job).counts.completed == 200


def test_an_intake_whose_chunks_nobody_takes_stops_waiting_after_its_patience(
    store: RedisJobStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(chunk_size=10, intake_ahead=20, intake_patience=0.3)
    sent: list[int] = []
    start = time.monotonic()
    job = submit_file(
        store, lambda _, i: sent.append(i), settings, write_jsonl(tmp_path / "in.jsonl", lines(100)), SPEC
    )
    assert sent == list(range(10))  # every chunk stored and sent: the workers are away
    assert 0.3 < time.monotonic() - start < 10  # it waited once, its patience, then no more
    assert store.get(job).status is JobStatus.IN_PROGRESS
    assert "keep no pace with its intake" in caplog.text
