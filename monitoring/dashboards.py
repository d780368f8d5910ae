"""Grafana dashboards as code: ``python -m cascade.monitoring.dashboards`` (from the repository's root) writes
``monitoring/dashboards/*.json``.

A test regenerates them and checks the files are current, and that every metric a panel queries is one that
Cascade (``metrics``), its recording rules, or vLLM (``vllm_metrics``) exports.
"""

import json
from typing import Any

from cascade.monitoring.files import DASHBOARDS as FOLDER
from cascade.monitoring.files import checkout

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


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
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
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
            [("sum(vllm:num_requests_running)", "running"), ("sum(vllm:num_requests_waiting)", "waiting")],
            "short",
        ),
        ("vLLM KV cache usage", [("max by (instance) (vllm:kv_cache_usage_perc)", "{{instance}}")], "percentunit"),
        (
            "vLLM token throughput",
            [
                ("sum(rate(vllm:prompt_tokens_total[5m]))", "prompt"),
                ("sum(rate(vllm:generation_tokens_total[5m]))", "generation"),
            ],
            "short",
        ),
        ("vLLM end-to-end request latency", _quantiles("vllm:e2e_request_latency_seconds"), "s"),
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
        "templating": {
            "list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]
        },
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
