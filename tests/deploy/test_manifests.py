"""Every overlay renders, every object is valid against Kubernetes' own schemas (strict, offline), and the KEDA
and Prometheus Operator objects, which those schemas do not cover, have what their operators require."""

import copy
import re
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.manifests import OVERLAYS, Rendered, pod, render

KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
"""The oldest version deploy/README.md supports, and the newest the validator knows here."""
CUSTOM_KINDS = {
    "ScaledObject": "keda.sh/v1alpha1",
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PodMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
}
"""Custom resources (KEDA, Prometheus Operator): checked by hand below."""
NUMBER = re.compile(r"^\d+(\.\d+)?$")


def validate(obj: dict[str, Any]) -> None:
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def test_both_overlays_are_rendered() -> None:
    assert set(OVERLAYS) == {"gpu", "cpu-demo"}


def test_every_object_is_valid_for_kubernetes(rendered: Rendered) -> None:
    kinds = {o["kind"] for o in rendered.objects}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget"} <= kinds
    for obj in rendered.objects:
        if obj["kind"] in CUSTOM_KINDS:
            assert obj["apiVersion"] == CUSTOM_KINDS[obj["kind"]]
            continue
        try:
            validate(obj)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{rendered.overlay}: {obj['kind']} {obj['metadata']['name']}: {e.message} at {e.path}")


def test_validation_rejects_an_unknown_field() -> None:
    """The check above can fail: strict validation refuses a field that Kubernetes does not have."""
    deployment = copy.deepcopy(next(o for o in render(OVERLAYS[0]) if o["kind"] == "Deployment"))
    pod(deployment)["containers"][0]["livenessProbes"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


def test_scaled_objects_have_what_keda_requires(rendered: Rendered) -> None:
    deployments = {d["metadata"]["name"] for d in rendered.of_kind("Deployment")}
    targets = set()
    for scaled in rendered.of_kind("ScaledObject"):
        spec = scaled["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        targets.add(spec["scaleTargetRef"]["name"])
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["triggers"]
        for trigger in spec["triggers"]:
            meta = trigger["metadata"]
            assert all(isinstance(v, str) for v in meta.values()), "KEDA's trigger metadata values are strings"
            if trigger["type"] == "redis":
                assert meta["listName"]
                assert NUMBER.match(meta["listLength"])
                assert "address" in meta or "addressFromEnv" in meta or {"host", "port"} <= set(meta)
            else:
                assert trigger["type"] == "prometheus"
                assert meta["serverAddress"].startswith("http")
                assert meta["query"]
                assert NUMBER.match(meta["threshold"])
    assert targets == {"cascade-specialist-worker", "cascade-llm-worker", "vllm"}


def _selected(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return selector["matchLabels"].items() <= labels.items()


def test_service_monitors_select_a_service_port(rendered: Rendered) -> None:
    monitors = rendered.of_kind("ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {"cascade-api", "vllm"}
    for monitor in monitors:
        selector = monitor["spec"]["selector"]
        services = [s for s in rendered.of_kind("Service") if _selected(selector, s["metadata"]["labels"])]
        assert len(services) == 1, monitor["metadata"]["name"]
        ports = {p["name"] for p in services[0]["spec"]["ports"]}
        assert monitor["spec"]["endpoints"]
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports
            assert endpoint["path"].startswith("/")


def test_pod_monitor_selects_both_workers_by_a_port_they_have(rendered: Rendered) -> None:
    (monitor,) = rendered.of_kind("PodMonitor")
    selector = monitor["spec"]["selector"]
    selected = [d for d in rendered.workloads() if _selected(selector, d["spec"]["template"]["metadata"]["labels"])]
    assert {d["metadata"]["name"] for d in selected} == {"cascade-specialist-worker", "cascade-llm-worker"}
    assert monitor["spec"]["podMetricsEndpoints"]
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        for workload in selected:
            ports = {p["name"] for c in pod(workload)["containers"] for p in c.get("ports", [])}
            assert endpoint["port"] in ports
