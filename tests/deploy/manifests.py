"""Rendering deploy/'s overlays with kustomize, and looking things up in what it rendered.

The tools come from the dev extra (pyproject.toml) and are looked for next to the running Python first, so that
`.venv/bin/python -m pytest` finds them without an activated environment. A missing tool fails the test: it
would otherwise pass without having checked anything.
"""

import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from cascade.broker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
PREFIX = str(Settings.model_config.get("env_prefix", ""))

Obj = dict[str, Any]
CUSTOM_KINDS = {
    "ScaledObject": "keda.sh/v1alpha1",
    "TriggerAuthentication": "keda.sh/v1alpha1",
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PodMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
}
"""Custom resources (KEDA, Prometheus Operator): validated against their CRDs' schemas (test_crd_schemas.py);
every other object against Kubernetes' own (test_manifests.py)."""


def tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: `pip install -e .[dev]` installs it (.ci/run does)")
    return found


@cache
def render(overlay: str) -> tuple[Obj, ...]:
    """`kubectl kustomize deploy/overlays/NAME`, parsed (kubectl's built-in kustomize, no other tool)."""
    done = subprocess.run(
        [tool("kubectl"), "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


class _FromValuesOnly(Settings):
    """The settings object, built from the given values alone (not from this process's environment)."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, *_: Any, **__: Any) -> tuple[Any]:
        return (init_settings,)


@dataclass(frozen=True)
class Rendered:
    overlay: str
    objects: tuple[Obj, ...]

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    def generated(self, name: str) -> Obj:
        """A ConfigMap of a configMapGenerator, whose rendered name carries a hash suffix."""
        found = [o for o in self.of_kind("ConfigMap") if o["metadata"]["name"].rsplit("-", 1)[0] == name]
        assert len(found) == 1, f"{self.overlay}: expected one ConfigMap generated as {name}"
        return found[0]

    def config(self) -> dict[str, str]:
        data: dict[str, str] = self.generated("cascade-config")["data"]
        return data

    def settings(self) -> Settings:
        """Settings as the pods see them: the ConfigMap's values over the defaults."""
        values = {key.removeprefix(PREFIX).lower(): value for key, value in self.config().items()}
        return _FromValuesOnly(**values)

    def vllm_config(self) -> dict[str, str]:
        data: dict[str, str] = self.generated("vllm-config")["data"]
        return data

    @property
    def namespace(self) -> str:
        spaces = {o["metadata"].get("namespace") for o in self.objects}
        assert len(spaces) == 1, f"{self.overlay}: objects in several namespaces {spaces}"
        return str(spaces.pop())

    def workloads(self) -> list[Obj]:
        return self.of_kind("Deployment") + self.of_kind("StatefulSet")

    def scaled(self, deployment: str) -> Obj:
        found = [o for o in self.of_kind("ScaledObject") if o["spec"]["scaleTargetRef"]["name"] == deployment]
        assert len(found) == 1, f"{self.overlay}: expected one ScaledObject for {deployment}"
        return found[0]

    def env_names(self, workload: Obj) -> set[str]:
        """The variables a workload's containers (init containers too) get: `env`, and `envFrom` ConfigMaps."""
        names: set[str] = set()
        for c in containers(workload, init=True):
            names |= {e["name"] for e in c.get("env", [])}
            for source in c.get("envFrom", []):
                if "configMapRef" in source:  # kustomize has given the reference the generated name
                    names |= set(self.get("ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        return names


def pod(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Obj, init: bool = False) -> list[Obj]:
    spec = pod(workload)
    return list(spec["containers"]) + (list(spec.get("initContainers", [])) if init else [])


def container(workload: Obj) -> Obj:
    (main,) = pod(workload)["containers"]
    return dict(main)


def option(args: list[str], name: str) -> str:
    """The value after ``name`` in a container's args."""
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def named_port(workload: Obj, name: str) -> int:
    ports = {p["name"]: p["containerPort"] for c in containers(workload) for p in c.get("ports", [])}
    assert name in ports, f"{workload['metadata']['name']} has no port named {name}"
    return int(ports[name])


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions, as Kubernetes reads them) selects these labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True
