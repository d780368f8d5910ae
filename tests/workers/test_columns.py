"""A chunk's items as columns: the same items back, in the store's JSON and as a sequence."""

import pytest
from pydantic import ValidationError

from cascade.workers.columns import ItemColumns
from cascade.workers.items import Item, Message, Role

PLAIN = [Item(custom_id=f"c{n}", text=f"text {n}", line=n + 1) for n in range(4)]
MIXED = [
    Item(custom_id="a", text="one", line=2),
    Item(custom_id="b", text="two", line=5, label="spam"),
    Item(custom_id="c", text="three", line=9, context=[Message(role=Role.SYSTEM, content="Be terse.")]),
]


@pytest.mark.parametrize("items", [PLAIN, MIXED, []])
def test_items_round_trip_through_the_columns_json(items: list[Item]) -> None:
    columns = ItemColumns.of(items)
    back = ItemColumns.load_json(columns.dump_json())
    assert back == columns
    assert list(back) == items
    assert len(back) == len(items)
    assert [back[i] for i in range(len(items))] == items
    assert list(back[1:]) == items[1:]


def test_optional_columns_are_left_out_when_no_item_has_them() -> None:
    raw = ItemColumns.of(PLAIN).dump_json()
    assert b"label" not in raw
    assert b"context" not in raw
    assert ItemColumns.of(PLAIN).labels == [None] * len(PLAIN)
    assert ItemColumns.of(MIXED).labels == [None, "spam", None]


def test_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValidationError, match="differ in length"):
        ItemColumns.load_json(b'{"custom_id": ["a", "b"], "text": ["one"], "line": [1, 2]}')
    with pytest.raises(ValidationError):
        ItemColumns.load_json(b'{"custom_id": ["a"], "text": [3], "line": [1]}')
