"""The rendered manifests agree with the code: queue names, settings, ports, probe paths and metrics are the ones
Cascade uses, read from the code (the settings object, the Celery queues, the CLI, the API's routes, the metric
names), never typed again here."""

from pathlib import Path
from urllib.parse import urlsplit

import typer
import yaml
from openai._constants import MAX_RETRY_DELAY

from cascade.broker import api, cli
from cascade.broker.celery_app import QueueName
from cascade.broker.settings import Settings
from cascade.monitoring.metrics import QUEUE_LENGTH, QUEUE_RESERVED
from cascade.monitoring.vllm_metrics import VLLM_METRICS
from tests.deploy.manifests import PREFIX, ROOT, Rendered, container, containers, named_port, option, pod

WORKERS = ("cascade-specialist-worker", "cascade-llm-worker")
COMMANDS = typer.main.get_command(cli.cli).commands
API_PORT = next(p.default for p in COMMANDS["api"].params if p.name == "port")
"""The port of `cascade api`: its default, which the Deployment also passes."""
API_PATHS = {route.path for r in (api.router, api.metrics_router) for route in r.routes}


def _queue(rendered: Rendered, name: str) -> str:
    return option(container(rendered.get("Deployment", name))["args"], "--queues")


def test_each_worker_deployment_consumes_one_celery_queue(rendered: Rendered) -> None:
    assert sorted(_queue(rendered, w) for w in WORKERS) == sorted(q.value for q in QueueName)


def test_worker_autoscaling_reads_the_workers_queue(rendered: Rendered) -> None:
    for name in WORKERS:
        queue = _queue(rendered, name)
        concurrency = option(container(rendered.get("Deployment", name))["args"], "--concurrency")
        triggers = {t["type"]: t["metadata"] for t in rendered.scaled(name)["spec"]["triggers"]}
        assert set(triggers) == {"redis", "prometheus"}
        assert triggers["redis"]["listName"] == queue
        query = triggers["prometheus"]["query"]
        for metric in (QUEUE_LENGTH, QUEUE_RESERVED):  # waiting + delivered but not acknowledged
            assert f'{metric}{{namespace="{rendered.namespace}", queue="{queue}"}}' in query
        # one task per pool process: busy replicas are never scaled away
        assert triggers["redis"]["listLength"] == triggers["prometheus"]["threshold"] == concurrency


def _env_names(rendered: Rendered) -> set[str]:
    names = set(rendered.config())
    for workload in rendered.workloads():
        for c in containers(workload, init=True):
            for env in c.get("env", []):
                names.add(env["name"])
                ref = env.get("valueFrom", {})
                names |= {r["key"] for r in (ref.get("secretKeyRef"), ref.get("configMapKeyRef")) if r}
    return names


def test_every_cascade_variable_is_a_setting(rendered: Rendered) -> None:
    fields = {PREFIX + name.upper() for name in Settings.model_fields}
    unknown = {n for n in _env_names(rendered) if n.startswith(PREFIX)} - fields
    assert not unknown, f"{rendered.overlay}: not settings of broker.settings.Settings: {sorted(unknown)}"
    rendered.settings()  # and the values validate


def test_the_api_serves_where_it_is_probed_and_scraped(rendered: Rendered) -> None:
    deployment = rendered.get("Deployment", "cascade-api")
    main = container(deployment)
    assert main["args"][0] == "api"
    assert int(option(main["args"], "--port")) == API_PORT == named_port(deployment, "http")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if "httpGet" in main.get(probe, {}):
            assert main[probe]["httpGet"]["path"] in API_PATHS
    (endpoint,) = rendered.get("ServiceMonitor", "cascade-api")["spec"]["endpoints"]
    assert endpoint["path"] in API_PATHS
    assert endpoint["path"] == "/metrics"


def test_workers_serve_metrics_on_the_settings_port(rendered: Rendered) -> None:
    port = rendered.settings().metrics_port
    assert port == Settings.model_fields["metrics_port"].default
    for name in WORKERS:
        workload = rendered.get("Deployment", name)
        assert named_port(workload, "metrics") == port
        assert container(workload)["livenessProbe"]["tcpSocket"]["port"] == "metrics"
    (endpoint,) = rendered.get("PodMonitor", "cascade-workers")["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")


def _service_port(rendered: Rendered, name: str) -> int:
    (port,) = rendered.get("Service", name)["spec"]["ports"]
    return int(port["port"])


def test_the_urls_in_the_settings_reach_the_services(rendered: Rendered) -> None:
    settings = rendered.settings()
    llm = urlsplit(settings.llm_url)
    assert (llm.hostname, llm.port, llm.path) == ("vllm", _service_port(rendered, "vllm"), "/v1")
    assert named_port(rendered.get("Deployment", "vllm"), "http") == llm.port
    redis = urlsplit(settings.redis_url)
    assert (redis.hostname, redis.port) == ("redis", _service_port(rendered, "redis"))
    for name in WORKERS:  # KEDA's operator runs in its own namespace: a fully qualified name
        (trigger,) = [t for t in rendered.scaled(name)["spec"]["triggers"] if t["type"] == "redis"]
        assert trigger["metadata"]["address"] == f"redis.{rendered.namespace}.svc.cluster.local:{redis.port}"
        assert trigger["metadata"]["databaseIndex"] == redis.path.strip("/")


def _mounts(rendered: Rendered, name: str) -> dict[str, tuple[str, str, bool]]:
    """Claim name -> (mount path, volume name, read-only) of a workload's main container."""
    workload = rendered.get("Deployment", name)
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod(workload)["volumes"]
        if "persistentVolumeClaim" in v
    }
    return {
        claims[m["name"]]: (m["mountPath"], m["name"], m.get("readOnly", False))
        for m in container(workload).get("volumeMounts", [])
        if m["name"] in claims
    }


def test_api_and_specialist_workers_share_files_and_models_at_the_same_paths(rendered: Rendered) -> None:
    settings = rendered.settings()
    api_mounts = _mounts(rendered, "cascade-api")
    workers = _mounts(rendered, "cascade-specialist-worker")
    for claim, directory in (("cascade-files", settings.files_dir), ("cascade-models", settings.model_dir)):
        assert api_mounts[claim][0] == workers[claim][0]
        assert Path(directory).is_relative_to(api_mounts[claim][0]), f"{directory} is not on {claim}"
    assert workers["cascade-models"][2], "the workers mount the models read-only"
    assert not workers["cascade-files"][2]
    for claim in ("cascade-files", "cascade-models"):
        access = rendered.get("PersistentVolumeClaim", claim)["spec"]["accessModes"]
        assert access == (["ReadWriteOnce"] if rendered.overlay == "cpu-demo" else ["ReadWriteMany"])


def test_vllm_serves_the_model_name_the_workers_ask_for(rendered: Rendered) -> None:
    vllm = container(rendered.get("Deployment", "vllm"))
    assert option(vllm["args"], "--served-model-name") == "$(CASCADE_LLM_MODEL)"
    (env,) = [e for e in vllm["env"] if e["name"] == "CASCADE_LLM_MODEL"]
    ref = env["valueFrom"]["configMapKeyRef"]
    assert ref["name"] == rendered.generated("cascade-config")["metadata"]["name"]
    assert ref["key"] == "CASCADE_LLM_MODEL"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert vllm[probe]["httpGet"]["path"] == "/health"


def test_vllm_scales_on_its_queue_against_its_max_num_seqs(rendered: Rendered) -> None:
    vllm = container(rendered.get("Deployment", "vllm"))
    assert option(vllm["args"], "--max-num-seqs") == "$(VLLM_MAX_NUM_SEQS)"
    (trigger,) = rendered.scaled("vllm")["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["threshold"] == rendered.vllm_config()["VLLM_MAX_NUM_SEQS"]
    query = trigger["metadata"]["query"]
    assert "vllm:num_requests_waiting" in query
    for metric in ("vllm:num_requests_waiting", "vllm:num_requests_running"):
        assert metric in VLLM_METRICS
        assert f'{metric}{{namespace="{rendered.namespace}", job="vllm"}}' in query


def test_llm_workers_send_no_more_than_vllm_runs(rendered: Rendered) -> None:
    """Requests in flight from the LLM workers (replicas x pool processes x CASCADE_LLM_CONCURRENCY) fit in what
    vLLM runs at once (replicas x --max-num-seqs): more would wait in vLLM against the client's timeout."""
    per_pod = int(option(container(rendered.get("Deployment", "cascade-llm-worker"))["args"], "--concurrency"))
    per_pod *= rendered.settings().llm_concurrency
    seqs = int(rendered.vllm_config()["VLLM_MAX_NUM_SEQS"])
    assert per_pod <= seqs
    workers_max = rendered.scaled("cascade-llm-worker")["spec"]["maxReplicaCount"]
    assert workers_max * per_pod <= rendered.scaled("vllm")["spec"]["maxReplicaCount"] * seqs


def test_grace_periods_let_the_longest_task_finish(rendered: Rendered) -> None:
    settings = rendered.settings()
    grace = {n: pod(rendered.get("Deployment", n))["terminationGracePeriodSeconds"] for n in WORKERS}
    # an LLM chunk lasts as long as its slowest request, bounded by the client's timeout, retries and backoff
    request = settings.llm_timeout * (settings.llm_max_retries + 1) + settings.llm_max_retries * MAX_RETRY_DELAY
    assert grace["cascade-llm-worker"] >= request
    assert max(grace.values()) < settings.visibility_timeout


def test_redis_persists_and_never_evicts(rendered: Rendered) -> None:
    redis = rendered.get("StatefulSet", "redis")
    args = container(redis)["args"]
    assert option(args, "--maxmemory-policy") == "noeviction"
    assert option(args, "--appendonly") == "yes"
    assert option(args, "--dir") in {m["mountPath"] for m in container(redis)["volumeMounts"]}
    assert redis["spec"]["volumeClaimTemplates"]


def test_dashboards_are_the_files_of_monitoring(rendered: Rendered) -> None:
    (dashboards,) = [
        c for c in rendered.of_kind("ConfigMap") if c["metadata"].get("labels", {}).get("grafana_dashboard")
    ]
    files = {p.name: p.read_text() for p in sorted((ROOT / "monitoring" / "dashboards").glob("*.json"))}
    assert files
    assert dashboards["data"] == files


def test_alert_and_recording_rules_are_the_rules_of_monitoring(rendered: Rendered) -> None:
    (rule,) = rendered.of_kind("PrometheusRule")
    source = yaml.safe_load((ROOT / "monitoring" / "rules" / "cascade.rules.yml").read_text())
    assert rule["spec"] == source
    for group in rule["spec"]["groups"]:  # what the Operator requires of each group and rule
        assert group["name"]
        assert group["rules"]
        assert all(("record" in r) != ("alert" in r) and r["expr"] for r in group["rules"])


def test_pods_run_unprivileged_within_limits(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        name = workload["metadata"]["name"]
        assert pod(workload)["securityContext"]["runAsNonRoot"] is True, name
        assert pod(workload)["automountServiceAccountToken"] is False, name
        for c in containers(workload, init=True):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), name
            assert "memory" in c["resources"]["limits"], name
