"""Every custom resource of every overlay (KEDA's ScaledObjects, the Prometheus Operator's monitors and rules) is
valid against its CRD's schema; test_manifests.py validates every other object against Kubernetes' own.

The CRD schemas come with the npm packages @kubernetes-models/keda and @kubernetes-models/prometheus-operator,
pinned in tests/deploy/node (package-lock.json) and run by tests/deploy/node/crd_validate.mjs under Node.js.
`ensure_node_validators` (deploy/local/common.sh, run by .ci/run) installs them; without them the tests fail.
"""

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.manifests import CUSTOM_KINDS, OVERLAYS, Obj, Rendered, render

NODE_DIR = Path(__file__).resolve().parent / "node"
SCRIPT = NODE_DIR / "crd_validate.mjs"
PACKAGES = ("@kubernetes-models/keda", "@kubernetes-models/prometheus-operator")


def node(node_dir: Path = NODE_DIR) -> str:
    """Node.js, once the validators are installed in node_dir; the test fails (never passes unchecked) without."""
    found = shutil.which("node")
    missing = [p for p in PACKAGES if not (node_dir / "node_modules" / p / "package.json").is_file()]
    if found is None or missing:
        what = "node is not on PATH" if found is None else f"{', '.join(missing)} missing from {node_dir}/node_modules"
        pytest.fail(f"{what}: run ensure_node_validators (deploy/local/common.sh; .ci/run does)", pytrace=False)
    return found


def crd_errors(objects: list[Obj]) -> list[str]:
    """Each error the validators find, as "KIND NAME: /path: message"; one result per object is required."""
    done = subprocess.run(
        [node(), str(SCRIPT)],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode in (0, 1), f"crd_validate.mjs exited {done.returncode}: {done.stderr}"
    results: list[dict[str, Any]] = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["kind"], r["name"]) for r in results] == [(o["kind"], o["metadata"]["name"]) for o in objects]
    errors = [f"{r['kind']} {r['name']}: {error}" for r in results for error in r["errors"]]
    assert (done.returncode == 1) == bool(errors), done.stderr
    return errors


def custom_resources(objects: tuple[Obj, ...]) -> list[Obj]:
    return [o for o in objects if o["kind"] in CUSTOM_KINDS]


def test_every_custom_resource_is_valid_against_its_crd(rendered: Rendered) -> None:
    objects = custom_resources(rendered.objects)
    assert {o["kind"] for o in objects} == set(CUSTOM_KINDS), "each kind is rendered, so each schema is exercised"
    errors = crd_errors(objects)
    assert not errors, f"{rendered.overlay}:\n" + "\n".join(errors)


def _scaled_object() -> Obj:
    found = next(o for o in render(OVERLAYS[0]) if o["kind"] == "ScaledObject")
    return copy.deepcopy(found)


def test_a_broken_scaled_object_is_reported() -> None:
    """The check above can fail: a trigger without its type and a replica count that is not a number."""
    scaled = _scaled_object()
    scaled["spec"]["minReplicaCount"] = "two"
    del scaled["spec"]["triggers"][0]["type"]
    errors = crd_errors([scaled])
    name = scaled["metadata"]["name"]
    assert any(e.startswith(f"ScaledObject {name}: /spec/minReplicaCount: must be integer") for e in errors), errors
    assert any(e.startswith(f"ScaledObject {name}: /spec/triggers/0: ") and "type" in e for e in errors), errors


def test_a_broken_monitor_is_reported() -> None:
    """The Prometheus Operator's schemas are checked too: a scrape interval that is not a duration."""
    monitor = copy.deepcopy(next(o for o in render(OVERLAYS[0]) if o["kind"] == "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    (error,) = crd_errors([monitor])
    assert "/spec/endpoints/0/interval: must match pattern" in error


def test_a_kind_without_a_schema_is_reported() -> None:
    """A custom kind these packages do not model is an error, not a pass."""
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert crd_errors([unknown]) == ["Widget w: no schema for apiVersion example.com/v1 kind Widget"]


def test_missing_validators_fail_naming_the_installer(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="run ensure_node_validators"):
        node(tmp_path)
