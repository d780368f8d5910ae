"""How the CLI shows a job's summary, a policy's calibration bands and an evaluation report."""

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from cascade.broker.summary import Summary

if TYPE_CHECKING:
    from cascade.workers.evaluation import Report
    from cascade.workers.policy import Policy


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def print_summary(out: Console, s: Summary) -> None:
    table = Table(title=f"{s.job_id}: {s.status}")
    table.add_column("tier")
    for col in ("answered", "accuracy", "specialist alone", "task seconds"):
        table.add_column(col, justify="right")
    for name, t in s.tiers.items():
        table.add_row(name, str(t.answered), pct(t.accuracy), pct(t.specialist_accuracy), f"{t.task_seconds:.1f}")
    wall = f"{s.wall_seconds:.1f} wall" if s.wall_seconds is not None else "-"
    table.add_row("all", str(s.completed), pct(s.accuracy), pct(s.specialist_only_accuracy), wall)
    out.print(table)
    out.print(
        f"items {s.total}, completed {s.completed}, failed {s.failed}, escalated {s.escalated} "
        f"({pct(s.escalation_share)}), LLM errors {s.llm_errors}\n"
        f"accuracy over {s.labelled} labelled items: cascade {pct(s.accuracy)}, "
        f"specialist alone {pct(s.specialist_only_accuracy)}"
    )


def print_cost(out: Console, s: Summary) -> None:
    parts = ", ".join(f"{tier} ${usd:.6f}" for tier, usd in s.cost_usd.items())
    per_1000 = f"${s.cost_per_1000_items:.6f}" if s.cost_per_1000_items is not None else "-"
    out.print(
        f"cost (cost model): {parts}; {per_1000} per 1,000 items; LLM tokens {s.llm_tokens:,}; "
        f"LLM answers from the answer cache {s.llm_cache_hits:,} (no cost)"
    )
    if s.all_llm_cost_usd is not None:
        saved = s.all_llm_cost_usd - sum(s.cost_usd.values())
        out.print(f"sending every item to the LLM would have cost ${s.all_llm_cost_usd:.6f}: saved ${saved:.6f}")


def print_bands(out: Console, policy: "Policy") -> None:
    table = Table(title="calibration (selection part): accuracy per confidence band")
    for col in ("band", "items", "specialist", "LLM", "escalated", "abstain"):
        table.add_column(col, justify="right")
    escalated = {b for bands in policy.escalate.values() for b in bands}
    for i, b in enumerate(policy.bands):
        table.add_row(
            f"[{b.lo:.3f}, {b.hi:.3f})",
            str(b.n),
            pct(b.specialist_accuracy),
            f"{pct(b.llm_accuracy)} ({b.n_llm})",
            "yes" if i in escalated else "",
            "yes" if i in policy.abstain else "",
        )
    out.print(table)


def print_evaluation(out: Console, report: "Report") -> None:
    table = Table(title=f"evaluation on {report.items} items (policies: fitted on half, measured on the other)")
    for col in ("", "accuracy", "escalated", "LLM tokens / 1k items", "USD / 1k (tokens)", "USD / 1k (GPU-h)"):
        table.add_column(col, justify="right")
    rows = [report.specialist, report.llm, *report.targets, *([report.policy] if report.policy else [])]
    for p in rows:
        name = p.name + ("" if p.reachable is not False else " (unreachable)")
        table.add_row(
            name,
            pct(p.accuracy),
            pct(p.escalation_share),
            f"{p.llm_tokens:,.0f}",
            f"{p.cost_per_1000:.5f}",
            f"{p.cost_per_1000_self_hosted:.5f}",
        )
    out.print(table)
    bands = Table(title="accuracy per confidence band (all items)")
    for col in ("band", "items", "specialist", "LLM"):
        bands.add_column(col, justify="right")
    for b in report.bands:
        bands.add_row(
            f"[{b['lo']:.1f}, {b['hi']:.1f})", str(b["n"]), pct(b["specialist_accuracy"]), pct(b["llm_accuracy"])
        )
    out.print(bands)
