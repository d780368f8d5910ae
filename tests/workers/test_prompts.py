"""Prompt files: loading (errors name the file and the field), their version, and the messages render makes."""

import json
from pathlib import Path

import pytest

from cascade.workers.errors import InputError
from cascade.workers.items import Message, Role
from cascade.workers.llm import PROMPT_VERSION, build_messages
from cascade.workers.prompts import LabelPrompt, Prompt, check_labels, load_prompt, render

CARD = "card_arrival"
PROMPT = Prompt(
    instructions="The messages are from bank customers.",
    labels={
        CARD: LabelPrompt(description="the customer asks where their ordered card is", examples=["Where is my card?"]),
        "lost_or_stolen_card": LabelPrompt(description="the card is lost or stolen"),
        "top_up_failed": LabelPrompt(description="a top-up did not go through"),
    },
)


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "prompt.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_a_prompt_file_loads_and_its_version_is_its_content(tmp_path: Path) -> None:
    path = write(tmp_path, PROMPT.model_dump(mode="json"))
    loaded = load_prompt(path)
    assert loaded == PROMPT
    assert loaded.version == PROMPT.version != PROMPT_VERSION
    assert Prompt().version == PROMPT_VERSION == "690acdedfd7b66ed"  # the default keeps caches and memories valid
    changed = {**PROMPT.labels, CARD: LabelPrompt(description="the card has not arrived yet")}
    assert PROMPT.model_copy(update={"labels": changed}).version != PROMPT.version
    assert Prompt(instructions="other").version != Prompt(instructions="another").version


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ({"labels": {CARD: {"description": 5}}}, f"labels.{CARD}.description"),
        ({"labels": {CARD: {"examples": "one"}}}, f"labels.{CARD}.examples"),
        ({"labels": {CARD: {"descriptoin": "x"}}}, f"labels.{CARD}.descriptoin"),
        ({"format": "cascade-prompt/2"}, "format"),
        ({"instruction": "x"}, "instruction"),
        ([1, 2], "(the file)"),
    ],
)
def test_load_errors_name_the_file_and_the_field(tmp_path: Path, content: object, field: str) -> None:
    path = write(tmp_path, content)
    with pytest.raises(InputError) as raised:
        load_prompt(path)
    message = str(raised.value)
    assert str(path) in message
    assert f"'{field}'" in message
    assert "\n" not in message


def test_unreadable_prompt_files_are_one_line_errors(tmp_path: Path) -> None:
    for path in (write(tmp_path, "{not json"), tmp_path / "missing.json"):
        with pytest.raises(InputError, match=str(path)) as raised:
            load_prompt(path)
        assert "\n" not in str(raised.value)


def test_labels_the_model_does_not_know_are_named() -> None:
    check_labels(PROMPT, [CARD, "lost_or_stolen_card", "top_up_failed", "other"])
    with pytest.raises(InputError, match="'top_up_failed'") as raised:
        check_labels(PROMPT, [CARD, "lost_or_stolen_card"], source="prompt file p.json")
    assert "p.json" in str(raised.value)
    assert "card_arrival" not in str(raised.value)


def test_render_without_prompt_is_the_default_request() -> None:
    expected = [
        {
            "role": "system",
            "content": "You are a text classifier. Read the message and answer with exactly one label from the list, "
            "and nothing else.",
        },
        {"role": "user", "content": "Message:\nwhere is it\n\nLabels:\n- a\n- b\n\nAnswer with one label."},
    ]
    assert render("where is it", ["a", "b"]) == expected == build_messages("where is it", ["a", "b"])
    assert render("where is it", ["a", "b"], Prompt()) == expected


def test_render_describes_and_shows_examples_of_the_candidates_only() -> None:
    system, user = render("it never came", [CARD, "other"], PROMPT, examples=[("card still not here", CARD)])
    assert system["content"].endswith("\n\nThe messages are from bank customers.")
    content = user["content"]
    assert f"- {CARD}: the customer asks where their ordered card is\n- other\n" in content
    assert "lost or stolen" not in content
    assert "top-up" not in content
    assert f"Examples:\n- Where is my card? => {CARD}\n- card still not here => {CARD}\n" in content
    assert content.startswith("Message:\nit never came\n\nLabels:\n")
    assert content.endswith("\n\nAnswer with one label.")


def test_render_puts_the_lines_system_messages_first_then_the_conversation_then_the_text() -> None:
    context = [
        Message(role=Role.SYSTEM, content="You are a helpful assistant."),
        Message(role=Role.USER, content="Hi"),
        Message(role=Role.ASSISTANT, content="Hello, how can I help?"),
    ]
    messages = render("my card is lost", ["a", "b"], PROMPT, context=context)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    system = messages[0]["content"]
    assert system.startswith("You are a helpful assistant.\n\nYou are a text classifier.")  # added, not replacing
    assert messages[1:3] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, how can I help?"},
    ]
    assert messages[3]["content"].startswith("Message:\nmy card is lost\n\nLabels:\n- a\n- b")
