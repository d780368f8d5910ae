"""Every alert says what it means (`description`, its labels and value filled in) and where its runbook is
(`runbook_url`, a page of monitoring/runbooks/ that exists and says what it means, how to confirm it, what to do)."""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "rules" / "cascade.rules.yml"
RUNBOOKS = ROOT / "monitoring" / "runbooks"
SECTIONS = ("## What it means", "## How to confirm", "## What to do")


def alerts() -> list[dict[str, Any]]:
    rules = yaml.safe_load(RULES.read_text())
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


def annotation_problems(alert: dict[str, Any]) -> list[str]:
    """What is missing from an alert's annotations, or wrong in them (empty: nothing)."""
    annotations = alert.get("annotations", {})
    problems = [f"no {key}" for key in ("summary", "description", "runbook_url") if not annotations.get(key)]
    if not re.search(r"\{\{[^}]*\$(value|labels)", annotations.get("description", "")):
        problems.append("a description without its value or labels")
    url = annotations.get("runbook_url", "")
    if url and url != f"monitoring/runbooks/{alert['alert']}.md":
        problems.append(f"runbook_url {url} is not monitoring/runbooks/{alert['alert']}.md")
    if url and not (ROOT / url).is_file():
        problems.append(f"runbook_url {url} is not a file of the repository")
    return problems


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_every_alert_has_a_description_and_a_runbook_that_exists(alert: dict[str, Any]) -> None:
    assert annotation_problems(alert) == []


def test_the_check_finds_what_is_missing(tmp_path: Path) -> None:
    bare = {"alert": "CascadeWorkerDown", "annotations": {"summary": "down"}}
    assert annotation_problems(bare) == [
        "no description",
        "no runbook_url",
        "a description without its value or labels",
    ]
    elsewhere = {
        "alert": "NoSuchAlert",
        "annotations": {"summary": "s", "description": "{{ $value }}", "runbook_url": "monitoring/runbooks/x.md"},
    }
    assert annotation_problems(elsewhere) == [
        "runbook_url monitoring/runbooks/x.md is not monitoring/runbooks/NoSuchAlert.md",
        "runbook_url monitoring/runbooks/x.md is not a file of the repository",
    ]


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_each_runbook_says_what_it_means_how_to_confirm_and_what_to_do(alert: dict[str, Any]) -> None:
    text = (RUNBOOKS / f"{alert['alert']}.md").read_text()
    assert text.startswith(f"# {alert['alert']}\n")
    positions = [text.find(section) for section in SECTIONS]
    assert -1 not in positions, f"{alert['alert']}.md lacks one of {SECTIONS}"
    assert positions == sorted(positions)
    confirm = text[positions[1] : positions[2]]
    assert "```promql" in confirm, "the confirmation gives its PromQL"


def test_every_runbook_belongs_to_an_alert_and_the_index_lists_them() -> None:
    names = {a["alert"] for a in alerts()}
    assert {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"} == names
    index = (RUNBOOKS / "README.md").read_text()
    assert all(f"[{name}]({name}.md)" in index for name in names)
