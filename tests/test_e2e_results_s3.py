"""A job through real `cascade worker` processes with its results in a real S3 server (SeaweedFS): every chunk
is committed there as it finishes, the CLI serves the output from it in line order, and Redis keeps a few bytes
per item (counters and commit records), not the records."""

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import redis

from cascade.broker import blobs
from cascade.broker.celery_app import app, configure, send_intake
from cascade.broker.files import FileStore
from cascade.broker.keys import JobKeys
from cascade.broker.results import open_parts
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.broker.submit import build_spec
from cascade.workers.jobs import JobStatus
from tests.broker.test_results import s3_settings
from tests.conftest import CASCADE, S3Server, WorkerFactory, _env, wait_for, write_jsonl
from tests.test_queue_integration import export, sms_rows


def test_a_job_commits_its_chunks_to_s3_and_is_served_from_there(
    settings: Settings,
    redis_db: redis.Redis,
    sms_model: Path,
    start_worker: WorkerFactory,
    s3: S3Server,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    shared = s3_settings(settings, s3, s3_bucket)
    store = RedisJobStore(redis_db, shared.job_ttl, open_parts(shared))
    rows = [*sms_rows(), "not json"]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    env = {k: v for k, v in _env(shared).items() if k.startswith("CASCADE_")}
    start_worker(queues="specialist", **env)
    out = subprocess.run(
        [CASCADE, "submit", str(path), "--model", str(sms_model), "--threshold", "0"],
        env=_env(shared),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    job = out.stdout.strip().splitlines()[-1]
    wait_for(store, job, timeout=300)
    view = store.get(job)
    assert view.status is JobStatus.COMPLETED
    results = export(shared, "results", job, tmp_path)
    errors = export(shared, "errors", job, tmp_path)
    assert [int(str(r["line"])) for r in results] == list(range(1, len(rows)))  # in line order, each once
    assert [(e["line"], e["code"]) for e in errors] == [(len(rows), "invalid_json")]
    k = JobKeys(job)
    chunks = store.chunk_count(job)
    assert redis_db.hlen(k.parts) == chunks > 1
    assert {str(key) for key in redis_db.scan_iter(f"{k.job}*")} == {k.job, k.parts, k.invalid}
    fs = s3.filesystem()
    fs.invalidate_cache()
    assert len(fs.find(f"{s3_bucket}/results/{job}")) == chunks  # one results file per chunk, no errors, no texts
    used = sum(int(redis_db.memory_usage(key) or 0) for key in (k.job, k.parts, k.invalid))
    print(f"Redis: {used} bytes for {len(rows)} lines, {used / len(rows):.1f} B per line")
    assert used / len(rows) < 50


def test_an_api_batch_reads_its_upload_from_s3(
    settings: Settings,
    redis_db: redis.Redis,
    sms_model: Path,
    start_worker: WorkerFactory,
    s3: S3Server,
    s3_bucket: str,
) -> None:
    """Uploads in the object store too (CASCADE_FILES_DIR=s3://...): the intake task of a worker reads the file
    the API stored, and the job's parts go beside it."""
    files_url = f"s3://{s3_bucket}/files"
    shared = s3_settings(settings, s3, s3_bucket).model_copy(update={"files_dir": files_url, "results_url": ""})
    files = FileStore(redis_db, shared.files_dir, shared.job_ttl, blobs.options(shared, shared.files_dir))
    rows = [{"custom_id": f"m{i}", "text": str(r["text"])} for i, r in enumerate(sms_rows()[:900])]  # type: ignore[index]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()

    async def upload() -> AsyncIterator[bytes]:
        yield body

    file_id = asyncio.run(files.save("team-a", "in.jsonl", "batch", upload())).id
    store = RedisJobStore(redis_db, shared.job_ttl, open_parts(shared))
    job = store.create(build_spec(shared, sms_model, threshold=0), owner="team-a", extra={"input_file_id": file_id})
    configure(app, shared)
    send_intake(app, job, file_id)
    start_worker(queues="specialist", **{k: v for k, v in _env(shared).items() if k.startswith("CASCADE_")})
    wait_for(store, job, timeout=300)
    assert store.get(job).status is JobStatus.COMPLETED
    assert [r.custom_id for r in store.iter_results(job)] == [r["custom_id"] for r in rows]
    fs = s3.filesystem()
    fs.invalidate_cache()
    assert fs.find(f"{s3_bucket}/files/results/{job}")  # the default result store: under the files' URL
