"""Grafana dashboards as code: ``python -m cascade.monitoring.dashboards`` (from the repository's root) writes
``monitoring/dashboards/*.json``.

A test regenerates them and checks the files are current, and that every metric a panel queries is one that
Cascade (``metrics``), its recording rules, or vLLM (``vllm_metrics``) exports.

In a Prometheus shared by several Cascades and vLLMs, the variables ``namespace`` and ``model`` choose which: every
selector of a Cascade or vLLM metric is narrowed to ``namespace=~"$namespace"``, vLLM's also to
``model_name=~"$model"`` (``scoped``). The Prometheus Operator's monitors give every series its ``namespace``; the
local stack's series have none, and "All" (``.*``) matches them too.
"""

import json
import re
from typing import Any

from cascade.monitoring.files import DASHBOARDS as FOLDER
from cascade.monitoring.files import checkout

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
NAMESPACE = 'namespace=~"$namespace"'
MODEL = 'model_name=~"$model"'
"""vLLM's own label for the served model (``--served-model-name``)."""
_SELECTOR = re.compile(r"\b(cascade_[a-z0-9_]+|cascade:[a-z0-9_:]+|vllm:[a-z0-9_:]+)(?:\{([^}]*)\})?")


def scoped(expr: str) -> str:
    """``expr`` with every Cascade and vLLM selector narrowed to the dashboard's namespace (and vLLM's to its model)."""

    def narrow(selector: re.Match[str]) -> str:
        name, matchers = selector[1], selector[2]
        added = [NAMESPACE, MODEL] if name.startswith("vllm:") else [NAMESPACE]
        return name + "{" + ", ".join([*([matchers] if matchers else []), *added]) + "}"

    return _SELECTOR.sub(narrow, expr)


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    """A multi-value query variable over label values, "All" by default (``.*``: series without the label too)."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": query,
        "refresh": 2,  # on every time range change: a namespace or model that appears shows up
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
    }


_ALWAYS_THERE = "cascade_queue_length|vllm:num_requests_running"
"""A family of each that every Cascade (its API and each worker serve the queue gauge) and every vLLM exports."""
VARIABLES = [
    {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
    _variable("namespace", "Namespace", f'label_values({{__name__=~"{_ALWAYS_THERE}"}}, namespace)'),
    _variable("model", "vLLM model", f"label_values(vllm:num_requests_running{{{NAMESPACE}}}, model_name)"),
]


def _panel(
    pid: int,
    title: str,
    exprs: list[tuple[str, str]],
    x: int,
    y: int,
    unit: str = "short",
    kind: str = "timeseries",
    w: int = 12,
    h: int = 8,
) -> dict[str, Any]:
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": scoped(expr), "legendFormat": legend}
            for i, (expr, legend) in enumerate(exprs)
        ],
    }


def _quantiles(metric: str, by: str = "") -> list[tuple[str, str]]:
    group = f"le{', ' + by if by else ''}"
    label = f"{{{{{by}}}}} " if by else ""
    return [
        (f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[5m])))", f"{label}p{int(q * 100)}")
        for q in (0.5, 0.95)
    ]


def cascade_dashboard() -> dict[str, Any]:
    rows = [
        (
            "Items per second by tier and outcome",
            [("sum by (tier, outcome) (rate(cascade_items_total[5m]))", "{{tier}} {{outcome}}")],
            "ops",
        ),
        ("Escalation ratio", [("cascade:escalation:ratio_rate5m", "escalated share")], "percentunit"),
        (
            "Accuracy (labelled items, 1h)",
            [
                ("cascade:accuracy:ratio_rate1h", "{{tier}}"),
                ("cascade:accuracy_overall:ratio_rate1h", "overall"),
                ("max(cascade_policy_target_accuracy)", "policy target"),
            ],
            "percentunit",
        ),
        ("Cost per 1,000 items (USD, 1h)", [("cascade:cost_per_1000_items:usd_rate1h", "cost")], "currencyUSD"),
        ("Cost saved against all-LLM (USD/s, 1h)", [("cascade:cost_saved:usd_rate1h", "saved")], "currencyUSD"),
        ("LLM tokens per second", [("sum by (kind) (rate(cascade_llm_tokens_total[5m]))", "{{kind}}")], "short"),
        ("Escalations by reason", [("sum by (reason) (rate(cascade_escalations_total[5m]))", "{{reason}}")], "ops"),
        ("LLM errors by kind", [("sum by (kind) (rate(cascade_llm_errors_total[5m]))", "{{kind}}")], "ops"),
        (
            "LLM answers: from the answer cache (hit), shared, or asked (miss)",
            [("sum by (result) (rate(cascade_llm_cache_total[5m]))", "{{result}}")],
            "ops",
        ),
        (
            "Answer cache: share of LLM answers not bought (1h)",
            [
                (
                    'sum(rate(cascade_llm_cache_total{result!="miss"}[1h])) / sum(rate(cascade_llm_cache_total[1h]))',
                    "hit + shared",
                )
            ],
            "percentunit",
        ),
        (
            "Tier agreement (escalated and explored)",
            [("sum by (route, agree) (rate(cascade_tier_agreement_total[1h]))", "{{route}} agree={{agree}}")],
            "ops",
        ),
        ("Stage latency", _quantiles("cascade_stage_duration_seconds", "stage"), "s"),
        ("Queue wait", _quantiles("cascade_queue_wait_seconds", "queue"), "s"),
        (
            "Queue depth (Celery)",
            [
                ("max by (queue) (cascade_queue_length)", "{{queue}} waiting"),
                ("max by (queue) (cascade_queue_reserved)", "{{queue}} reserved"),
            ],
            "short",
        ),
        ("Items in flight", [("sum by (tier) (cascade_items_in_flight)", "{{tier}}")], "short"),
        ("Jobs by status", [("max by (status) (cascade_jobs)", "{{status}}")], "short"),
        (
            "Specialist confidence",
            [("sum by (le) (rate(cascade_specialist_confidence_bucket[5m]))", "{{le}}")],
            "short",
        ),
        (
            "Policy in use",
            [("max by (version, target) (cascade_policy_info)", "{{version}} target {{target}}")],
            "short",
        ),
        (
            "vLLM requests running and waiting",
            [
                ("sum by (model_name) (vllm:num_requests_running)", "{{model_name}} running"),
                ("sum by (model_name) (vllm:num_requests_waiting)", "{{model_name}} waiting"),
            ],
            "short",
        ),
        ("vLLM KV cache usage", [("max by (instance) (vllm:kv_cache_usage_perc)", "{{instance}}")], "percentunit"),
        (
            "vLLM token throughput",
            [
                ("sum by (model_name) (rate(vllm:prompt_tokens_total[5m]))", "{{model_name}} prompt"),
                ("sum by (model_name) (rate(vllm:generation_tokens_total[5m]))", "{{model_name}} generation"),
            ],
            "short",
        ),
        ("vLLM end-to-end request latency", _quantiles("vllm:e2e_request_latency_seconds", "model_name"), "s"),
    ]
    panels = [
        _panel(i + 1, title, exprs, x=(i % 2) * 12, y=(i // 2) * 8, unit=unit)
        for i, (title, exprs, unit) in enumerate(rows)
    ]
    return {
        "uid": "cascade-overview",
        "title": "Cascade: the trade (cost, accuracy, escalation) and vLLM",
        "tags": ["cascade", "vllm"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": VARIABLES},
        "panels": panels,
    }


DASHBOARDS = {"cascade-overview.json": cascade_dashboard}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2, sort_keys=True) + "\n" for name, build in DASHBOARDS.items()}


def main() -> None:
    out = checkout(FOLDER)
    for name, text in render().items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")  # noqa: T201


if __name__ == "__main__":
    main()
