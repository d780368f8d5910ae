"""Metrics declared once with the pinned names; rules valid and unit-tested with promtool; no rule queries a
metric that neither Cascade nor vLLM exports."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from cascade.monitoring import metrics, prometheus_rule
from cascade.monitoring.vllm_metrics import VLLM_METRICS

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "rules"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: install the Debian package prometheus (.ci/run does)")
    return path


def exported_series() -> set[str]:
    names = set(metrics.METRIC_NAMES)
    return names | {n + s for n in names for s in HISTOGRAM_SUFFIXES}


def test_every_declared_metric_has_its_pinned_name() -> None:
    registered = {m.name for m in REGISTRY.collect() if m.name.startswith("cascade_")}
    # the client reports counter families without `_total`
    collected = {metrics.JOBS, metrics.QUEUE_LENGTH, metrics.QUEUE_RESERVED}  # by the jobs collector, at scrape
    declared = {n.removesuffix("_total") for n in metrics.METRIC_NAMES} - collected
    assert registered == declared


def test_rules_pass_promtool_check_and_unit_tests() -> None:
    check = subprocess.run(
        [promtool(), "check", "rules", str(RULES / "cascade.rules.yml")], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [promtool(), "test", "rules", "cascade.test.yml"], cwd=RULES, capture_output=True, text=True, check=False
    )
    assert test.returncode == 0, test.stdout + test.stderr


def test_every_alert_has_a_promtool_test() -> None:
    rules = yaml.safe_load((RULES / "cascade.rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((RULES / "cascade.test.yml").read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", [])}
    assert alerts == tested


def queried_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\b(cascade_[a-z0-9_]+|vllm:[a-z0-9_:]+)", expr))


def test_rules_query_only_metrics_that_exist() -> None:
    rules = yaml.safe_load((RULES / "cascade.rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    known = exported_series() | VLLM_METRICS | recorded
    for group in rules["groups"]:
        for rule in group["rules"]:
            unknown = queried_metrics(rule["expr"]) - known
            assert not unknown, f"{rule.get('record') or rule.get('alert')} queries unknown metrics {unknown}"


def test_dashboards_are_current_and_query_only_metrics_that_exist() -> None:
    import json

    from cascade.monitoring.dashboards import render

    rules = yaml.safe_load((RULES / "cascade.rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    known = exported_series() | VLLM_METRICS | {f"{n}_bucket" for n in VLLM_METRICS} | recorded
    for name, text in render().items():
        stale = f"{name} is stale: run python -m cascade.monitoring.dashboards"
        assert (ROOT / "monitoring" / "dashboards" / name).read_text() == text, stale
        dashboard = json.loads(text)
        queried: set[str] = set()
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                queried |= queried_metrics(target["expr"])
                queried |= set(re.findall(r"\b(cascade:[a-z0-9_:]+)", target["expr"]))
        assert not queried - known, f"{name} queries unknown metrics {queried - known}"
        # the dashboard shows the cascade and vLLM side by side
        assert {"vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"} <= queried
        assert "cascade_queue_length" in queried


def test_the_prometheus_rule_for_kubernetes_is_current() -> None:
    """deploy/ ships the rules wrapped as a PrometheusRule: regenerate with
    `python -m cascade.monitoring.prometheus_rule`."""
    source = (RULES / prometheus_rule.SOURCE).read_text()
    wrapped = prometheus_rule.render(source)
    assert (RULES / prometheus_rule.OUT).read_text() == wrapped, "run `python -m cascade.monitoring.prometheus_rule`"
    assert yaml.safe_load(wrapped)["spec"] == yaml.safe_load(source)


def test_generators_write_into_the_checkout_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run outside a checkout, a generator refuses (it never writes next to an installed package)."""
    from cascade.monitoring import dashboards

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="repository's root"):
        dashboards.main()
    (tmp_path / "monitoring" / "dashboards").mkdir(parents=True)
    dashboards.main()
    assert sorted(p.name for p in (tmp_path / "monitoring" / "dashboards").iterdir()) == sorted(dashboards.DASHBOARDS)
