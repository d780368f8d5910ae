"""Every overlay renders, every object but the custom resources is valid against Kubernetes' own schemas (strict,
offline; the KEDA and Prometheus Operator objects are validated against their CRDs' schemas in
test_crd_schemas.py), the custom resources refer to what exists, and the NetworkPolicy lets in Redis's clients."""

import copy
import re
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.manifests import CUSTOM_KINDS, OVERLAYS, Obj, Rendered, containers, pod, render, selects

KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
"""The oldest version deploy/README.md supports, and the newest the validator knows here."""
NUMBER = re.compile(r"^\d+(\.\d+)?$")


def validate(obj: dict[str, Any]) -> None:
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def test_both_overlays_are_rendered() -> None:
    assert set(OVERLAYS) == {"gpu", "cpu-demo"}


def test_every_object_is_valid_for_kubernetes(rendered: Rendered) -> None:
    kinds = {o["kind"] for o in rendered.objects}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    for obj in rendered.objects:
        if obj["kind"] in CUSTOM_KINDS:  # test_crd_schemas.py; any other kind without a schema here fails below
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


REDIS_URL = "CASCADE_REDIS_URL"
KEDA_NAMESPACE = "keda"
"""Where KEDA's operator runs: the default of its Helm chart, a setting of deploy/base/networkpolicy.yaml."""


def _redis_policy(rendered: Rendered) -> tuple[Obj, Obj]:
    """The NetworkPolicy that selects the Redis pod, and that pod's StatefulSet."""
    redis = rendered.get("StatefulSet", "redis")
    labels = redis["spec"]["template"]["metadata"]["labels"]
    (policy,) = [p for p in rendered.of_kind("NetworkPolicy") if selects(p["spec"]["podSelector"], labels)]
    return policy, redis


def _admitted(policy: Obj, namespace: str, labels: dict[str, str]) -> bool:
    """Whether the policy admits a pod with these labels in this namespace by a rule's podSelector (the
    namespaceSelector of KEDA's rule is checked on its own: it must not select the policy's namespace)."""
    rules = policy["spec"].get("ingress", [])
    if any(not rule.get("from") for rule in rules):
        return True  # a rule without sources admits every pod
    if namespace != policy["metadata"]["namespace"]:
        return False  # a podSelector alone selects pods in the policy's own namespace
    peers = [peer for rule in rules for peer in rule["from"] if set(peer) == {"podSelector"}]
    return any(selects(peer["podSelector"], labels) for peer in peers)


def test_network_policy_lets_only_redis_clients_reach_redis(rendered: Rendered) -> None:
    policy, _ = _redis_policy(rendered)
    assert policy["spec"]["policyTypes"] == ["Ingress"], "it restricts ingress (egress stays open)"
    # Every pod that reads CASCADE_REDIS_URL is admitted; no other pod of the namespace is.
    clients: set[str] = set()
    for workload in rendered.workloads():
        name = workload["metadata"]["name"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        admitted = _admitted(policy, rendered.namespace, labels)
        if REDIS_URL in rendered.env_names(workload):
            clients.add(name)
            assert admitted, f"{rendered.overlay}: {name} reads {REDIS_URL} but may not reach Redis"
        else:
            assert not admitted, f"{rendered.overlay}: {name} does not use Redis but may reach it"
    optional = {"cascade-flower"} & {w["metadata"]["name"] for w in rendered.workloads()}  # deploy/components/flower
    assert clients == {"cascade-api", "cascade-specialist-worker", "cascade-llm-worker"} | optional


def test_network_policy_admits_keda_on_the_redis_port(rendered: Rendered) -> None:
    policy, redis = _redis_policy(rendered)
    (rule,) = policy["spec"]["ingress"]
    namespaces = [p["namespaceSelector"] for p in rule["from"] if "namespaceSelector" in p]
    # KEDA's operator runs the `redis` triggers (autoscaling.yaml), from its own namespace.
    assert any(t["type"] == "redis" for s in rendered.of_kind("ScaledObject") for t in s["spec"]["triggers"])
    assert any(selects(s, {"kubernetes.io/metadata.name": KEDA_NAMESPACE}) for s in namespaces)
    assert not any(selects(s, {"kubernetes.io/metadata.name": rendered.namespace}) for s in namespaces)
    # Only the Redis port, by a name or number of the Redis container, the one its Service sends to.
    ports = {p["name"]: p["containerPort"] for c in containers(redis) for p in c.get("ports", [])}
    (service,) = [s for s in rendered.of_kind("Service") if s["metadata"]["name"] == redis["spec"]["serviceName"]]
    (target,) = [p["targetPort"] for p in service["spec"]["ports"]]
    assert rule["ports"], "a rule without ports admits every port"
    for port in rule["ports"]:
        assert port.get("protocol", "TCP") == "TCP"
        assert port["port"] in ports or port["port"] in ports.values(), f"{port['port']} is not a port of Redis"
        assert ports.get(port["port"], port["port"]) == ports.get(target, target)


def test_network_policy_check_can_fail(rendered: Rendered) -> None:
    """A pod outside the rule's selector is refused: the checks above can fail."""
    policy, _ = _redis_policy(rendered)
    assert _admitted(policy, rendered.namespace, {"app.kubernetes.io/name": "cascade-api"})
    assert not _admitted(policy, rendered.namespace, {"app.kubernetes.io/name": "vllm"})
    assert not _admitted(policy, "default", {"app.kubernetes.io/name": "cascade-api"})
