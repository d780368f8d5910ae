"""The dashboard in a shared Prometheus: variables `namespace` and `model` (query variables over label values of
Cascade's and vLLM's metrics), and every panel's selector of a Cascade or vLLM metric narrowed by them, so that the
panels show one Cascade and one vLLM model, not the sum of all of them."""

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.monitoring.test_metrics_and_rules import promtool

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "monitoring" / "dashboards" / "cascade-overview.json"
RULES = ROOT / "monitoring" / "rules" / "cascade.rules.yml"
METRIC = re.compile(r"(?<![a-zA-Z0-9_:])(cascade_[a-z0-9_]+|cascade:[a-z0-9_:]+|vllm:[a-z0-9_:]+)")
MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')
NAMESPACE = ("namespace", "=~", "$namespace")
MODEL = ("model_name", "=~", "$model")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def targets() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def selectors(expr: str) -> list[tuple[str, set[tuple[str, str, str]]]]:
    """Each Cascade or vLLM metric the expression selects, with its label matchers."""
    found = []
    for metric in METRIC.finditer(expr):
        rest = expr[metric.end() :]
        matchers: set[tuple[str, str, str]] = set()
        if rest.startswith("{"):
            body = rest[1 : rest.index("}")]
            parts = [p for p in re.split(r',(?=(?:[^"]*"[^"]*")*[^"]*$)', body) if p.strip()]
            for part in parts:
                parsed = MATCHER.fullmatch(part)
                assert parsed, f"cannot read the matcher {part!r} of {expr}"
                matchers.add((parsed[1], parsed[2], parsed[3]))
        found.append((metric[1], matchers))
    return found


def unscoped(expr: str) -> list[str]:
    """The metrics of ``expr`` not narrowed to the dashboard's namespace (and, for vLLM's, model)."""
    missing = []
    for metric, matchers in selectors(expr):
        wanted = {NAMESPACE, MODEL} if metric.startswith("vllm:") else {NAMESPACE}
        if not wanted <= matchers:
            missing.append(metric)
    return missing


def test_the_check_finds_a_sum_over_every_vllm() -> None:
    """The issue's case: `sum(vllm:num_requests_running)` mixes every vLLM of a shared Prometheus."""
    assert unscoped("sum(vllm:num_requests_running)") == ["vllm:num_requests_running"]
    assert unscoped('sum(vllm:num_requests_running{namespace=~"$namespace"})') == ["vllm:num_requests_running"]
    assert unscoped('rate(cascade_items_total{tier="llm"}[5m]) / cascade:escalation:ratio_rate5m') == [
        "cascade_items_total",
        "cascade:escalation:ratio_rate5m",
    ]
    scoped = 'sum(vllm:num_requests_running{model_name=~"$model", namespace=~"$namespace"})'
    assert unscoped(scoped) == []


def test_every_panel_query_is_narrowed_to_the_namespace_and_model() -> None:
    exprs = targets()
    assert exprs
    problems = {expr: unscoped(expr) for expr in exprs if unscoped(expr)}
    assert not problems, problems
    assert all(selectors(expr) for expr in exprs), "a panel that queries no Cascade or vLLM metric"


def test_the_variables_are_query_variables_over_label_values() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for name, label in (("namespace", "namespace"), ("model", "model_name")):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert variable["definition"] == variable["query"]
        assert re.fullmatch(rf"label_values\((.+), {label}\)", variable["query"])
        assert variable["refresh"] in (1, 2)  # on load, or on time range change: never a frozen list
        assert variable["includeAll"] is True
        assert variable["multi"] is True
        assert variable["allValue"] == ".*"  # also matches the local stack's series, which have no namespace
    assert {"cascade_queue_length", "vllm:num_requests_running"} <= set(METRIC.findall(variables["namespace"]["query"]))
    # the models offered are those of the chosen namespaces
    assert selectors(variables["model"]["query"]) == [("vllm:num_requests_running", {NAMESPACE})]


def test_recorded_series_the_dashboard_queries_keep_the_namespace() -> None:
    """A recording rule that aggregates `namespace` away would match nothing once a namespace is chosen."""
    rules = yaml.safe_load(RULES.read_text())
    recorded = {r["record"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    queried = {metric for expr in targets() for metric, _ in selectors(expr)} & set(recorded)
    assert queried
    for name in queried:
        aggregations = re.findall(r"\b(sum|max|min|avg|count)\s*(?:by\s*\(([^)]*)\))?\s*\(", recorded[name])
        assert aggregations, name
        for function, by in aggregations:
            assert "namespace" in by.replace(" ", "").split(","), f"{name}: {function} drops the namespace"


def _eval_test(tmp_path: Path, expr: str, series: dict[str, float], expected: list[dict[str, Any]]) -> str:
    """Run ``expr`` through promtool over constant ``series``; return promtool's complaint ("" when it passed)."""
    (tmp_path / "empty.rules.yml").write_text("groups: []\n")
    case = {
        "rule_files": ["empty.rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": f"{v}x10"} for s, v in series.items()],
                "promql_expr_test": [{"expr": expr, "eval_time": "5m", "exp_samples": expected}],
            }
        ],
    }
    (tmp_path / "case.test.yml").write_text(yaml.safe_dump(case))
    done = subprocess.run(
        [promtool(), "test", "rules", "case.test.yml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    return "" if done.returncode == 0 else done.stdout + done.stderr


def test_in_a_shared_prometheus_the_vllm_panel_shows_the_chosen_namespace_and_model(tmp_path: Path) -> None:
    """The panel's own query, with the variables as Grafana fills them in, over two namespaces' vLLMs."""
    (running,) = [e for e in targets() if "vllm:num_requests_running" in e]
    series = {
        'vllm:num_requests_running{namespace="cascade", model_name="qwen", instance="a"}': 3,
        'vllm:num_requests_running{namespace="cascade", model_name="qwen", instance="b"}': 4,
        'vllm:num_requests_running{namespace="cascade", model_name="smol", instance="c"}': 20,
        'vllm:num_requests_running{namespace="other-team", model_name="qwen", instance="d"}': 100,
    }
    chosen = running.replace("$namespace", "cascade").replace("$model", "qwen")
    assert _eval_test(tmp_path, chosen, series, [{"labels": '{model_name="qwen"}', "value": 7}]) == ""
    # "All" on the local stack, whose series have no namespace label
    every = running.replace("$namespace", ".*").replace("$model", ".*")
    local = {'vllm:num_requests_running{model_name="smol", instance="127.0.0.1:8000"}': 2}
    assert _eval_test(tmp_path, every, local, [{"labels": '{model_name="smol"}', "value": 2}]) == ""
    # and the evaluation can fail: the unfiltered sum of the issue mixes the two namespaces
    assert _eval_test(tmp_path, "sum(vllm:num_requests_running)", series, [{"labels": "{}", "value": 7}]) != ""


def test_every_panel_query_parses_with_the_variables_filled_in(tmp_path: Path) -> None:
    filled = [e.replace("$namespace", "cascade|other").replace("$model", ".*") for e in targets()]
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(filled)]}
        ]
    }
    (tmp_path / "dashboard.rules.yml").write_text(yaml.safe_dump(rules))
    done = subprocess.run(
        [promtool(), "check", "rules", str(tmp_path / "dashboard.rules.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
