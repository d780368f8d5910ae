import json
import random
import time

import pytest

from cascade.broker import intake as intake_module
from cascade.broker.intake import MAX_CUSTOM_ID_CHARS, MAX_LINE_BYTES, Intake
from cascade.workers.columns import ItemColumns
from cascade.workers.items import ErrorCode, Item, ItemError, Message, Role


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


# --- hostile lines: whatever a line holds, parse returns an Item or an ItemError, quickly --------------------

DEEP = 200_000


def refused(line: str | bytes, intake: Intake | None = None, n: int = 9) -> ItemError:
    error = parse(intake or Intake(100), n, line)
    assert isinstance(error, ItemError), error
    assert error.line == n
    assert error.message.startswith(f"line {n}: ")
    error.model_dump_json()  # the error file takes it: nothing of the bad line that JSON cannot hold
    return error


@pytest.mark.parametrize(
    "line",
    [
        "[" * DEEP,
        "[" * DEEP + "]" * DEEP,
        '{"custom_id": "a", "text": ' + "[" * DEEP + "]" * DEEP + "}",
        '{"custom_id": "a", "text": "hi", "x": ' + '{"a": ' * DEEP + "1" + "}" * DEEP + "}",
        '{"custom_id": "a", "text": "hi", "x": ' + "[" * 65 + "]" * 65 + "}",
    ],
    ids=["open", "closed", "text", "objects", "just-over"],
)
def test_deeply_nested_line_is_refused_quickly(line: str) -> None:
    start = time.perf_counter()
    error = refused(line)
    assert time.perf_counter() - start < 0.5
    assert error.code == ErrorCode.TOO_DEEP.value
    assert "nest" in error.message


def test_brackets_inside_strings_and_moderate_nesting_are_not_depth() -> None:
    text = "[{" * 1000 + " a JSON-looking text ]" * 3
    item = parse(Intake(5000), 1, json.dumps({"custom_id": "a", "text": text, "x": [[[[[[[[{"y": [1]}]]]]]]]]}))
    assert isinstance(item, Item)
    assert item.text == text
    escaped = parse(Intake(5000), 2, json.dumps({"custom_id": 'b"[', "text": '\\"' + "[" * 500}))
    assert isinstance(escaped, Item)


@pytest.mark.parametrize("escape", ["\\ud800", "\\udc00", "\\uDBFF", "x\\udfffy"])
@pytest.mark.parametrize("field", ["custom_id", "text", "label"])
def test_lone_surrogate_is_refused_naming_the_field(field: str, escape: str) -> None:
    fields = {"custom_id": '"a"', "text": '"hello"', "label": '"x"'} | {field: f'"{escape}"'}
    line = "{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}"
    error = refused(line)
    assert error.code == ErrorCode.INVALID_UNICODE.value
    assert f"'{field}'" in error.message
    assert error.custom_id == (None if field == "custom_id" else "a")


def test_lone_surrogate_in_an_openai_message_is_refused_naming_the_message() -> None:
    error = refused(openai_line("a", "why \\ud800").replace("\\\\ud800", "\\ud800"))
    assert error.code == ErrorCode.INVALID_UNICODE.value
    assert "'body.messages[1].content'" in error.message


def test_surrogate_pairs_and_other_scripts_are_text() -> None:
    item = parse(Intake(100), 1, '{"custom_id": "\\ud83d\\ude00-\u00e9", "text": "caf\u00e9 \\ud83d\\ude00 \u6f22"}')
    assert item == Item(custom_id="\U0001f600-\u00e9", text="caf\u00e9 \U0001f600 \u6f22", line=1)


def test_custom_id_over_the_limit_is_refused_without_keeping_it() -> None:
    line = json.dumps({"custom_id": "x" * 20_000_000, "text": "hi"})
    start = time.perf_counter()
    error = refused(line, Intake(100, max_line_bytes=32 * 1024 * 1024))
    assert time.perf_counter() - start < 2
    assert error.code == ErrorCode.FIELD_TOO_LONG.value
    assert "'custom_id'" in error.message
    assert "512" in error.message
    assert error.custom_id is None
    assert len(error.message) < 200
    too_long = refused(line)  # by default, a line of 20 MB is over the 16 MiB limit of a line
    assert too_long.code == ErrorCode.LINE_TOO_LONG.value
    assert str(MAX_LINE_BYTES) in too_long.message


def test_custom_id_limit_is_512_characters_by_default_and_configurable() -> None:
    assert MAX_CUSTOM_ID_CHARS == 512
    assert isinstance(parse(Intake(100), 1, json.dumps({"custom_id": "\u00e9" * 512, "text": "hi"})), Item)
    assert refused(json.dumps({"custom_id": "x" * 513, "text": "hi"})).code == ErrorCode.FIELD_TOO_LONG.value
    longer = Intake(100, max_custom_id_chars=2000)
    assert isinstance(parse(longer, 1, json.dumps({"custom_id": "x" * 2000, "text": "hi"})), Item)


def test_label_over_the_limit_is_refused() -> None:
    error = refused(json.dumps({"custom_id": "a", "text": "hi", "label": "x" * 513}))
    assert error.code == ErrorCode.FIELD_TOO_LONG.value
    assert "'label'" in error.message


def test_nul_and_control_characters_are_kept_in_text_and_label() -> None:
    item = parse(Intake(100), 1, '{"custom_id": "a\\u0000b", "text": "x\\u0000y\\u0007", "label": "l\\u0000"}')
    assert item == Item(custom_id="a\x00b", text="x\x00y\x07", line=1, label="l\x00")


@pytest.mark.parametrize("custom_id", ["", " ", "   ", "\t\n", "\u3000"])
def test_custom_id_of_only_spaces_is_refused(custom_id: str) -> None:
    error = refused(json.dumps({"custom_id": custom_id, "text": "hi"}))
    assert error.code == ErrorCode.INVALID_FIELD.value
    assert "'custom_id'" in error.message


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}],
        [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}, {"type": "input_audio"}],
        [],
    ],
)
def test_openai_message_with_no_text_part_names_the_message(content: object) -> None:
    error = refused(openai_line("a", content))
    assert error.code == ErrorCode.INVALID_FIELD.value
    assert "'body.messages[1].content'" in error.message
    assert "no text" in error.message
    assert "'text' is missing" not in error.message


def test_openai_text_part_that_is_not_a_string_is_refused() -> None:
    error = refused(openai_line("a", [{"type": "text", "text": 5}]))
    assert error.code == ErrorCode.INVALID_FIELD.value
    assert "'body.messages[1].content'" in error.message


def test_blank_openai_text_names_the_message() -> None:
    error = refused(openai_line("a", [{"type": "text", "text": "  "}]))
    assert "'body.messages[1].content'" in error.message


def test_integer_too_long_for_python_is_invalid_json() -> None:
    error = refused('{"custom_id": "a", "text": "hi", "n": ' + "1" * 5000 + "}")
    assert error.code == ErrorCode.INVALID_JSON.value


def test_an_unexpected_failure_is_an_error_naming_its_class(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object) -> None:
        raise ZeroDivisionError("surprise")

    monkeypatch.setattr(intake_module, "_openai_text", boom)
    error = refused(openai_line("a", "hi"))
    assert error.code == ErrorCode.INVALID_LINE.value
    assert "ZeroDivisionError" in error.message


def _random_json(rnd: random.Random, depth: int = 0) -> object:
    kind = rnd.randrange(8 if depth < 4 else 4)
    atoms: list[object] = [None, True, rnd.random(), rnd.randrange(-(10**30), 10**30), "\ud800", "x\x00", " ", ""]
    if kind < 4:
        return rnd.choice(atoms)
    if kind < 6:
        return [_random_json(rnd, depth + 1) for _ in range(rnd.randrange(3))]
    keys = ["custom_id", "text", "label", "body", "messages", "role", "content", "type", "url", "method"]
    return {rnd.choice(keys): _random_json(rnd, depth + 1) for _ in range(rnd.randrange(4))}


def test_parse_is_total_over_random_lines() -> None:
    rnd = random.Random(7)
    intake = Intake(50)
    for n in range(3000):
        obj = _random_json(rnd)
        if n % 3 == 0:
            obj = {
                "custom_id": rnd.choice(["a", "\udc00", 5, " "]),
                "text": _random_json(rnd),
                "label": _random_json(rnd),
            }
        if n % 5 == 0:
            obj = {"custom_id": "a", "url": "/v1/chat/completions", "body": {"messages": [_random_json(rnd)]}}
        raw = json.dumps(obj).encode()
        if n % 7 == 0:  # cut and spliced bytes
            cut = rnd.randrange(len(raw) + 1)
            raw = raw[:cut] + bytes(rnd.randrange(256) for _ in range(rnd.randrange(4))) + raw[cut:]
        parsed = intake.parse(n + 1, raw)
        assert isinstance(parsed, Item | ItemError)
        # What the job store writes of it (an item in its chunk's columns) can be written.
        ItemColumns.of([parsed]).dump_json() if isinstance(parsed, Item) else parsed.model_dump_json()


def test_a_line_with_both_text_and_body_is_refused_not_guessed() -> None:
    line = json.dumps({"custom_id": "a", "text": "one text", **json.loads(openai_line("a", "another"))})
    error = parse(Intake(100), 4, line)
    assert isinstance(error, ItemError)
    assert error.code is ErrorCode.INVALID_FIELD
    assert error.message == "line 4: fields 'text' and 'body' are both given: give the text in one of them"


def conversation(*messages: dict[str, object], model: object = None, cid: str = "c") -> str:
    body: dict[str, object] = {"messages": list(messages), "max_tokens": 1000}
    if model is not None:
        body["model"] = model
    return json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body})


def test_the_lines_other_messages_are_carried_in_order_as_its_context() -> None:
    line = conversation(
        {"role": "developer", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]},
        {"role": "system", "content": "Classify spam."},
        {"role": "user", "content": "WIN a prize now"},
    )
    item = parse(Intake(100), 1, line)
    assert isinstance(item, Item)
    assert item.text == "WIN a prize now"
    assert item.context == [
        Message(role=Role.SYSTEM, content="Be terse."),  # OpenAI's developer role is a system message
        Message(role=Role.USER, content="Hi"),
        Message(role=Role.ASSISTANT, content="Hello\nthere"),
        Message(role=Role.SYSTEM, content="Classify spam."),
    ]
    alone = parse(Intake(100), 2, conversation({"role": "user", "content": "just me"}))
    assert isinstance(alone, Item)
    assert alone.context is None  # nothing more to store
    assert b"context" not in ItemColumns.of([alone]).dump_json()


@pytest.mark.parametrize(
    ("message", "field", "code"),
    [
        ({"role": "tool", "content": "42", "tool_call_id": "x"}, "body.messages[0].role", ErrorCode.INVALID_FIELD),
        ({"content": "no role"}, "body.messages[0].role", ErrorCode.INVALID_FIELD),
        ({"role": "assistant", "content": None, "tool_calls": []}, "body.messages[0].content", ErrorCode.INVALID_FIELD),
        ({"role": "system", "content": [{"type": "image_url"}]}, "body.messages[0].content", ErrorCode.INVALID_FIELD),
        ({"role": "system", "content": "x" * 101}, "body.messages", ErrorCode.TEXT_TOO_LONG),
    ],
)
def test_other_messages_cascade_cannot_carry_refuse_the_line(
    message: dict[str, object], field: str, code: ErrorCode
) -> None:
    error = parse(Intake(100), 4, conversation(message, {"role": "user", "content": "text"}))
    assert isinstance(error, ItemError)
    assert (error.code, error.custom_id) == (code, "c")
    assert f"'{field}" in error.message


def test_body_model_must_be_absent_the_configured_llm_or_an_alias() -> None:
    intake = Intake(100, models={"SmolLM2-135M-Instruct", "gpt-3.5-turbo-0125"})
    user = {"role": "user", "content": "Hello world!"}
    for model in (None, "SmolLM2-135M-Instruct", "gpt-3.5-turbo-0125"):
        assert isinstance(parse(intake, 1, conversation(user, model=model)), Item), model
    for model in ("gpt-4o", 7):
        error = parse(intake, 2, conversation(user, model=model))
        assert isinstance(error, ItemError)
        assert error.code is ErrorCode.INVALID_FIELD
        assert "'body.model'" in error.message
        assert "CASCADE_LLM_MODEL_ALIASES" in error.message
        assert "SmolLM2-135M-Instruct" in error.message
    assert "'gpt-4o'" in str(parse(intake, 3, conversation(user, model="gpt-4o")))
    assert isinstance(parse(Intake(100), 4, conversation(user, model="anything")), Item)  # no models: not checked
