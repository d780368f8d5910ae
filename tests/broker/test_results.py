"""The result store: finished chunks committed as part files, on a local folder and on a real S3 server
(SeaweedFS), read back only when their checksum holds; Redis keeps what is in flight only."""

from collections.abc import Sequence
from pathlib import Path

import pytest
import redis

from cascade.broker.keys import JobKeys
from cascade.broker.results import Part, PartStore, open_parts
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.workers.errors import StorageError
from cascade.workers.items import ItemError, ItemResult, Route, Tier
from cascade.workers.jobs import JobStatus
from tests.conftest import S3Server
from tests.workers.store_contract import SPEC, error, items, result, running_job


def s3_settings(settings: Settings, s3: S3Server, bucket: str) -> Settings:
    update = {
        "results_url": f"s3://{bucket}/results",
        "s3_endpoint_url": s3.endpoint_url,
        "s3_access_key_id": s3.key,
        "s3_secret_access_key": s3.secret,
    }
    return Settings.model_validate({**settings.model_dump(), **update})


@pytest.fixture(params=["folder", "s3"])
def where(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path) -> Settings:
    """The settings of a result store in a local folder, or in a fresh bucket of the S3 server."""
    if request.param == "folder":
        return settings.model_copy(update={"files_dir": str(tmp_path)})
    s3: S3Server = request.getfixturevalue("s3")
    return s3_settings(settings, s3, request.getfixturevalue("s3_bucket"))


def llm_answer(cid: str, line: int) -> ItemResult:
    return result(cid, line, tier=Tier.LLM, route=Route.ESCALATE).model_copy(update={"llm_label": "a"})


def test_a_part_round_trips_in_line_order(where: Settings) -> None:
    parts = open_parts(where)
    results = [result("c2", 3), llm_answer("c0", 1)]
    errors = [error("c1", 2)]
    part = parts.write("batch_x", 4, results, errors, {"c0": "hello"})
    assert [r.custom_id for r in parts.results(part)] == ["c0", "c2"]
    assert parts.errors(part) == errors
    assert parts.texts(part) == {"c0": "hello"}
    assert all(parts.fs.exists(f.path) for f in part.files())
    parts.delete_job("batch_x")
    assert not any(parts.fs.exists(f.path) for f in part.files())


def test_a_commit_record_names_its_files_within_the_jobs_folder(where: Settings) -> None:
    parts = open_parts(where)
    part = parts.write("batch_y", 7, [result("c0", 1)], [error("c1", 2)], {})
    kept = parts.record("batch_y", part)
    assert parts.read_record("batch_y", kept) == part
    assert len(kept) < len(part.model_dump_json())  # one per chunk, kept as long as the job
    assert "batch_y" not in kept
    assert "null" not in kept
    assert parts.results(parts.read_record("batch_y", kept)) == [result("c0", 1)]
    # A record kept whole, before: read as it is.
    assert parts.read_record("batch_y", part.model_dump_json()) == part


def _damage(parts: PartStore, part: Part, data: bytes) -> None:
    assert part.results is not None
    parts.fs.pipe_file(part.results.path, data)


def test_a_part_missing_truncated_or_altered_is_never_served(where: Settings) -> None:
    parts = open_parts(where)
    part = parts.write("batch_y", 0, [result("c0", 1), result("c1", 2)], [], {})
    assert part.results is not None
    whole = bytes(parts.fs.cat_file(part.results.path))
    _damage(parts, part, whole[: len(whole) // 2])
    with pytest.raises(StorageError, match="fails its checksum"):
        parts.results(part)
    _damage(parts, part, whole.replace(b'"a"', b'"b"', 1))
    with pytest.raises(StorageError, match="fails its checksum"):
        parts.results(part)
    parts.fs.rm_file(part.results.path)
    with pytest.raises(StorageError, match="is missing"):
        parts.results(part)


def _job_keys(client: redis.Redis, job: str) -> set[str]:
    return {str(k) for k in client.scan_iter(f"cascade:job:{job}*")}


def test_a_finished_chunk_leaves_redis_for_the_result_store(where: Settings, redis_db: redis.Redis) -> None:
    store = RedisJobStore(redis_db, where.job_ttl, open_parts(where))
    job = store.create(SPEC)
    store.put_chunk(job, 0, items(3))
    store.put_chunk(job, 1, items(2, start=3))
    store.finish_intake(job, total=5, chunks=2)
    store.record(job, 0, results=[llm_answer("c0", 1), result("c1", 2)], errors=[error("c2", 3)])
    store.record(job, 1, results=[result("c3", 4)])  # chunk 1 in flight: c4 has no record yet
    k = JobKeys(job)
    assert set(redis_db.hkeys(k.parts)) == {"0"}
    assert not redis_db.exists(k.chunk(0))
    assert set(redis_db.hkeys(k.results)) == {"c3"}  # only the chunk in flight
    assert not redis_db.exists(k.errors)
    # served whole and in order, from the part and from Redis, while the job runs
    assert [r.custom_id for r in store.iter_results(job)] == ["c0", "c1", "c3"]
    assert store.texts(job, ["c0", "c1"]) == {"c0": "t"}
    assert store.record(job, 1, results=[result("c3", 4)]).results == []  # nothing new
    assert store.record(job, 1, errors=[error("c4", 5)]).finished
    assert _job_keys(redis_db, job) == {k.job, k.parts}  # counters and commit records only
    view = store.get(job)
    assert (view.status, view.counts.completed, view.counts.failed) == (JobStatus.COMPLETED, 3, 2)
    assert [r.custom_id for r in store.iter_results(job)] == ["c0", "c1", "c3"]
    assert [e.custom_id for e in store.iter_errors(job)] == ["c2", "c4"]
    # a chunk delivered again after its commit writes nothing, and counts nothing
    assert store.record(job, 0, results=[result("c2", 3)]).results == []
    assert store.unrecorded(job, 0, ["c0", "c2"]) == []
    assert store.get(job).counts == view.counts


class RacingParts(PartStore):
    """A fault-injecting fake: while it writes its part, another store commits the same chunk first."""

    def __init__(self, inner: PartStore, rival: RedisJobStore, job: str) -> None:
        super().__init__(inner.fs, inner.root)
        self.rival, self.job = rival, job
        self.written: list[Part] = []

    def write(
        self,
        job_id: str,
        index: int,
        results: Sequence[ItemResult],
        errors: Sequence[ItemError],
        texts: dict[str, str],
    ) -> Part:
        part = super().write(job_id, index, results, errors, texts)
        self.written.append(part)
        assert self.rival.commit(self.job, index)
        return part


def test_two_commits_of_one_chunk_one_wins_and_the_other_deletes_its_files(
    where: Settings, redis_db: redis.Redis
) -> None:
    parts = open_parts(where)
    rival = RedisJobStore(redis_db, where.job_ttl, parts)
    job = rival.create(SPEC)
    rival.put_chunk(job, 0, items(2))
    rival.finish_intake(job, total=3, chunks=1)  # a third line still to come: the job does not end
    rival.redis.hset(JobKeys(job).job, "left:0", 99)  # nor does record() commit: the test commits
    rival.record(job, 0, results=[result("c0", 1), result("c1", 2)])
    racing = RacingParts(parts, rival, job)
    slow = RedisJobStore(redis_db, where.job_ttl, racing)
    assert not slow.commit(job, 0)  # the rival's commit won meanwhile
    (lost,) = racing.written
    assert not any(parts.fs.exists(f.path) for f in lost.files())
    assert [r.custom_id for r in slow.iter_results(job)] == ["c0", "c1"]  # from the rival's part


def test_a_result_store_that_fails_leaves_the_records_in_redis_still_served(
    settings: Settings, redis_db: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    unwritable = settings.model_copy(update={"files_dir": str(blocked)})
    store = RedisJobStore(redis_db, settings.job_ttl, open_parts(unwritable))
    job = running_job(store, 2)
    assert store.record(job, 0, results=[result("c0", 1), result("c1", 2)]).finished
    assert f"chunk 0 of job {job} stays in Redis" in caplog.text
    assert not redis_db.exists(JobKeys(job).parts)
    assert [r.custom_id for r in store.iter_results(job)] == ["c0", "c1"]
    assert store.get(job).counts.completed == 2


def test_expired_jobs_leave_the_result_store(where: Settings, redis_db: redis.Redis) -> None:
    parts = open_parts(where)
    short = RedisJobStore(redis_db, 1, parts)
    job = running_job(short, 1)
    short.record(job, 0, results=[result("c0", 1)])
    (part,) = [parts.read_record(job, p) for p in redis_db.hvals(JobKeys(job).parts)]
    assert all(parts.fs.exists(f.path) for f in part.files())
    redis_db.delete(JobKeys(job).job)  # as when its keys expire
    assert RedisJobStore(redis_db, 60, parts).trim() == 1
    assert not any(parts.fs.exists(f.path) for f in part.files())
