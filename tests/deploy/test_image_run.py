"""The image (deploy/Dockerfile), run as the deployment runs it: `cascade api` and a specialist worker in containers
of their own from ``cascade:test`` (built by .ci/run: deploy/local/common.sh build_image), Redis from the host (the
containers share the host's network), the uploads and results on one bind-mounted folder and the specialist on
another, at the same paths in both containers. The official `openai` client uploads a batch to the container API,
and every line comes back answered. Skipped, with the reason, when no Docker engine answers or the image is missing.
"""

import csv
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest
import redis

from tests.conftest import LOCAL_REDIS_LOGIN, _check_test_db, dataset, free_port, write_jsonl

IMAGE = "cascade:test"
UID = "10001"  # the image's user (deploy/Dockerfile), the uid Kubernetes' runAsNonRoot checks
# A Redis database of this test's own (flushed), never the suite's (CASCADE_TEST_REDIS_URL) nor 0.
REDIS_URL = os.environ.get("CASCADE_TEST_IMAGE_REDIS_URL", f"redis://{LOCAL_REDIS_LOGIN}127.0.0.1:6379/12")
TOKEN = "tok-image"
ITEMS = 40


def docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=timeout)


def _docker_problem() -> str | None:
    """Why the image cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no docker client on PATH (.ci/run installs docker.io: deploy/local/common.sh ensure_docker)"
    try:
        info = docker("info", timeout=20)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 20 s: no Docker engine runs here"
    if info.returncode != 0:
        return "no Docker engine answers (`docker info` failed; .ci/run's ensure_docker could not start one)"
    if docker("image", "inspect", IMAGE).returncode != 0:
        return f"the image {IMAGE} is missing (.ci/run builds it: deploy/local/common.sh build_image)"
    return None


class Containers:
    """Containers started from the image, sharing the host's network; all removed at the end."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def run(self, role: str, env: dict[str, str], mounts: list[str], args: list[str]) -> str:
        name = f"cascade-test-{role}-{uuid.uuid4().hex[:8]}"
        options = ["--name", name, "--network", "host"]
        options += [o for key, value in env.items() for o in ("--env", f"{key}={value}")]
        options += [o for mount in mounts for o in ("--volume", mount)]
        self.names.append(name)
        done = docker("run", "--detach", *options, IMAGE, *args)
        assert done.returncode == 0, done.stderr
        return name

    def remove(self) -> None:
        for name in self.names:
            # Shown by pytest only when the test failed: what each container last said.
            logs = docker("logs", "--tail", "60", name)
            print(f"--- docker logs {name} (last 60 lines) ---", logs.stdout, logs.stderr, sep="\n")
            docker("rm", "--force", name)


@pytest.fixture
def containers() -> Iterator[Containers]:
    problem = _docker_problem()
    if problem:
        pytest.skip(problem)
    started = Containers()
    try:
        yield started
    finally:
        started.remove()


@pytest.fixture
def image_redis() -> Iterator[str]:
    _check_test_db(REDIS_URL)
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


def shared_folders(tmp_path: Path, sms_model: Path) -> tuple[Path, Path]:
    """The files folder, writable by the image's user, and a copy of the specialist it may read."""
    files, model = tmp_path / "files", tmp_path / "model"
    files.mkdir()
    files.chmod(0o777)
    shutil.copytree(sms_model, model)
    for path in [model, *model.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return files, model


def wait_for_health(url: str, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx2.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        state = docker("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
        assert state == "true", f"the API container {name} exited"
        time.sleep(0.5)
    pytest.fail(f"the API container {name} did not answer {url}/health within {timeout:.0f} s")


def test_the_image_runs_the_api_and_a_worker_through_a_batch(
    containers: Containers, image_redis: str, sms_model: Path, tmp_path: Path
) -> None:
    files, model = shared_folders(tmp_path, sms_model)
    env = {
        "CASCADE_REDIS_URL": image_redis,
        "CASCADE_FILES_DIR": str(files),
        "CASCADE_MODEL_DIR": str(model),
        "CASCADE_THRESHOLD": "0",  # the specialist answers every item: no LLM here
    }
    mounts = [f"{files}:{files}", f"{model}:{model}:ro"]
    port = free_port()
    api = containers.run(
        "api",
        {**env, "CASCADE_API_TOKENS": f"{TOKEN}=team-image"},
        mounts,
        ["api", "--host", "127.0.0.1", "--port", str(port)],
    )
    worker = containers.run(
        "worker",
        {**env, "CASCADE_METRICS_PORT": "0"},
        mounts,
        ["worker", "--queues", "specialist", "--concurrency", "1", "--hostname", f"image-{uuid.uuid4().hex[:8]}@%h"],
    )
    for name in (api, worker):
        assert docker("inspect", "--format", "{{.Config.User}}", name).stdout.strip() == f"{UID}:{UID}"
        assert docker("exec", name, "id", "-u").stdout.strip() == UID, "the container runs as root"

    url = f"http://127.0.0.1:{port}"
    wait_for_health(url, api)
    client = openai.OpenAI(base_url=url + "/v1", api_key=TOKEN)
    with (dataset("sms_spam") / "test.csv").open(newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)][:ITEMS]
    rows: list[dict[str, object] | str] = [
        {
            "custom_id": f"img-{n}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": text}]},
        }
        for n, text in enumerate(texts)
    ]
    path = write_jsonl(tmp_path / "batch.jsonl", rows)
    with path.open("rb") as f:
        file_id = client.files.create(file=f, purpose="batch").id
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 300
    while batch.status not in {"completed", "failed", "cancelled", "expired"} and time.monotonic() < deadline:
        time.sleep(1)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (ITEMS, 0)

    assert batch.output_file_id
    output = [json.loads(x) for x in client.files.content(batch.output_file_id).read().splitlines()]
    assert sorted(o["custom_id"] for o in output) == sorted(f"img-{n}" for n in range(ITEMS))
    for o in output:
        assert o["response"]["status_code"] == 200
        body = o["response"]["body"]
        assert body["choices"][0]["message"]["content"] in {"ham", "spam"}
        assert body["cascade"]["tier"] == "specialist"
    # the results were written by the worker's container into the shared folder, read back by the API's
    assert any((files / "results").rglob("*"))
