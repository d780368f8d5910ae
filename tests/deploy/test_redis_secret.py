"""Redis's password on Kubernetes, in every overlay: it comes from the Secret cascade-redis (key `password`), which
no manifest holds; Redis starts with it and its probes log in with it; every pod that reads CASCADE_REDIS_URL gets
it as CASCADE_REDIS_PASSWORD; KEDA's `redis` triggers log in through a TriggerAuthentication. The last test runs the
StatefulSet's own arguments and probe command against a real redis-server."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port
from tests.deploy.manifests import OVERLAYS, Obj, Rendered, containers, render

SECRET = {"name": "cascade-redis", "key": "password"}


def _from_secret(container: Obj, variable: str) -> bool:
    """Whether the container's ``variable`` is the Secret's password, required (not ``optional``)."""
    found = [e for e in container.get("env", []) if e["name"] == variable]
    if len(found) != 1:
        return False
    ref = found[0].get("valueFrom", {}).get("secretKeyRef", {})
    return {"name": ref.get("name"), "key": ref.get("key")} == SECRET and not ref.get("optional", False)


def test_no_manifest_holds_the_redis_password(rendered: Rendered) -> None:
    assert not rendered.of_kind("Secret"), f"{rendered.overlay}: Secrets are created by hand, never rendered"
    assert "CASCADE_REDIS_PASSWORD" not in rendered.config()
    assert "@" not in rendered.config()["CASCADE_REDIS_URL"], "no password inside the URL either"


def test_every_pod_that_reads_the_redis_url_gets_the_password(rendered: Rendered) -> None:
    clients = []
    for workload in rendered.workloads():
        for container in containers(workload):  # init containers (wait-for-vllm) do not use Redis
            names = {e["name"] for e in container.get("env", [])}
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    names |= set(rendered.get("ConfigMap", source["configMapRef"]["name"]).get("data", {}))
            if "CASCADE_REDIS_URL" in names:
                clients.append(workload["metadata"]["name"])
                assert _from_secret(container, "CASCADE_REDIS_PASSWORD"), (
                    f"{rendered.overlay}: {workload['metadata']['name']} reads CASCADE_REDIS_URL without "
                    "CASCADE_REDIS_PASSWORD from the Secret cascade-redis"
                )
    assert {"cascade-api", "cascade-specialist-worker", "cascade-llm-worker"} <= set(clients)


def _redis(rendered: Rendered) -> Obj:
    (container,) = containers(rendered.get("StatefulSet", "redis"))
    return container


def test_redis_requires_the_password_and_its_probes_log_in(rendered: Rendered) -> None:
    container = _redis(rendered)
    args = container["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert _from_secret(container, "REDIS_PASSWORD")
    assert _from_secret(container, "REDISCLI_AUTH")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert "PONG" in " ".join(command), f"{probe}: redis-cli exits 0 on NOAUTH, so the answer must be checked"


def test_keda_redis_triggers_log_in_through_the_secret(rendered: Rendered) -> None:
    auths = {a["metadata"]["name"]: a for a in rendered.of_kind("TriggerAuthentication")}
    triggers = [t for s in rendered.of_kind("ScaledObject") for t in s["spec"]["triggers"] if t["type"] == "redis"]
    assert triggers
    for trigger in triggers:
        auth = auths[trigger["authenticationRef"]["name"]]
        refs = {r["parameter"]: {"name": r["name"], "key": r["key"]} for r in auth["spec"]["secretTargetRef"]}
        assert refs == {"password": SECRET}
        assert "password" not in trigger["metadata"], "never the password itself in the trigger"


def _probe(command: list[str], shim: Path, auth: str | None) -> bool:
    env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
    env["PATH"] = f"{shim}:{env['PATH']}"
    if auth is not None:
        env["REDISCLI_AUTH"] = auth
    return subprocess.run(command, env=env, capture_output=True, timeout=30, check=False).returncode == 0


def test_the_statefulsets_arguments_and_probe_against_a_real_redis(tmp_path: Path) -> None:
    """Kubernetes expands $(REDIS_PASSWORD) in the arguments; the probe's redis-cli is pointed at this port."""
    container = _redis(Rendered(OVERLAYS[0], render(OVERLAYS[0])))
    password = "probe-" + os.urandom(6).hex()
    args = [a.replace("$(REDIS_PASSWORD)", password) for a in container["args"]]
    args[args.index("--dir") + 1] = str(tmp_path)
    port = free_port()
    server = subprocess.Popen(
        [*args, "--port", str(port), "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    shim = tmp_path / "bin"
    shim.mkdir()
    cli = shim / "redis-cli"
    cli.write_text(f'#!/bin/sh\nexec {shutil.which("redis-cli")} -p {port} "$@"\n')
    cli.chmod(0o755)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis(port=port, password=password).ping()
                break
            except redis.ConnectionError:
                assert server.poll() is None, "redis-server did not start with the StatefulSet's arguments"
                assert time.monotonic() < deadline
                time.sleep(0.1)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        command = container["readinessProbe"]["exec"]["command"]
        assert _probe(command, shim, password)
        assert not _probe(command, shim, "wrong")
        assert not _probe(command, shim, None)
    finally:
        server.terminate()
        server.wait(timeout=30)
