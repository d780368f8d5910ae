import json

import pytest

from cascade.broker.intake import Intake
from cascade.workers.items import ErrorCode, Item, ItemError


def parse(intake: Intake, n: int, line: str | bytes) -> Item | ItemError:
    return intake.parse(n, line if isinstance(line, bytes) else line.encode())


def test_valid_line_becomes_item_with_its_line_number() -> None:
    item = parse(Intake(100), 7, json.dumps({"custom_id": "a", "text": "hello", "label": "x"}))
    assert item == Item(custom_id="a", text="hello", line=7, label="x")


@pytest.mark.parametrize(
    ("line", "code", "field"),
    [
        (b"\xff\xfe not utf8", ErrorCode.INVALID_UTF8, None),
        ("{not json", ErrorCode.INVALID_JSON, None),
        ("[1, 2]", ErrorCode.NOT_AN_OBJECT, None),
        ('{"text": "hi"}', ErrorCode.MISSING_FIELD, "custom_id"),
        ('{"custom_id": 5, "text": "hi"}', ErrorCode.INVALID_FIELD, "custom_id"),
        ('{"custom_id": "a"}', ErrorCode.MISSING_FIELD, "text"),
        ('{"custom_id": "a", "text": "   "}', ErrorCode.INVALID_FIELD, "text"),
        ('{"custom_id": "a", "text": 3}', ErrorCode.INVALID_FIELD, "text"),
        ('{"custom_id": "a", "text": "' + "x" * 101 + '"}', ErrorCode.TEXT_TOO_LONG, "text"),
        ('{"custom_id": "a", "text": "hi", "label": 1}', ErrorCode.INVALID_FIELD, "label"),
    ],
)
def test_bad_line_names_line_and_field(line: str | bytes, code: ErrorCode, field: str | None) -> None:
    error = parse(Intake(100), 12, line)
    assert isinstance(error, ItemError)
    assert error.code == code.value
    assert error.line == 12
    assert error.message.startswith("line 12: ")
    if field:
        assert f"'{field}'" in error.message


def openai_line(cid: str, content: object, url: str = "/v1/chat/completions") -> str:
    return json.dumps(
        {
            "custom_id": cid,
            "method": "POST",
            "url": url,
            "body": {
                "model": "m",
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": content}],
            },
        }
    )


def test_openai_batch_line_uses_the_last_user_message() -> None:
    item = parse(Intake(100), 1, openai_line("a", "where is my card"))
    assert isinstance(item, Item)
    assert item.text == "where is my card"
    parts = parse(Intake(100), 2, openai_line("b", [{"type": "text", "text": "hello"}]))
    assert isinstance(parts, Item)
    assert parts.text == "hello"


@pytest.mark.parametrize(
    ("line", "field"),
    [
        (openai_line("a", "x", url="/v1/embeddings"), "'url'"),
        (json.dumps({"custom_id": "a", "url": "/v1/chat/completions", "body": {}}), "'body.messages'"),
        (openai_line("a", 5), "content"),
    ],
)
def test_bad_openai_lines_name_the_field(line: str, field: str) -> None:
    error = parse(Intake(100), 3, line)
    assert isinstance(error, ItemError)
    assert field in error.message
