"""A chunk's items as columns: what the job store keeps of a chunk, and what a worker reads back.

``ItemColumns`` is a ``Sequence[Item]`` (an item is built when it is asked for) whose columns the specialist path
reads directly: a chunk of thousands of items is loaded, predicted and answered without one ``Item`` object. Its
JSON (``dump_json`` / ``load_json``) is the columns themselves, a few list validations instead of one model per
item; the optional columns (labels, contexts) are left out when no item has one.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import overload

from pydantic import TypeAdapter

from cascade.workers.items import Item, Message


@dataclass(frozen=True)
class ItemColumns(Sequence[Item]):
    """Items as columns, in line order."""

    custom_id: list[str]
    text: list[str]
    line: list[int]
    label: list[str | None] | None = None
    """None: no item has a label."""
    context: list[list[Message] | None] | None = None
    """None: no item has messages of its own (``Item.context``)."""

    @classmethod
    def of(cls, items: Iterable[Item]) -> "ItemColumns":
        if isinstance(items, ItemColumns):
            return items
        items = list(items)
        labels = [i.label for i in items]
        contexts = [i.context for i in items]
        return cls(
            custom_id=[i.custom_id for i in items],
            text=[i.text for i in items],
            line=[i.line for i in items],
            label=labels if any(label is not None for label in labels) else None,
            context=contexts if any(c is not None for c in contexts) else None,
        )

    def __post_init__(self) -> None:
        n = len(self.custom_id)
        lengths = [len(c) for c in (self.text, self.line, self.label, self.context) if c is not None]
        if any(length != n for length in lengths):
            raise ValueError(f"a chunk's columns differ in length ({n} ids, others {lengths})")

    def __len__(self) -> int:
        return len(self.custom_id)

    @overload
    def __getitem__(self, index: int) -> Item: ...

    @overload
    def __getitem__(self, index: slice) -> "ItemColumns": ...

    def __getitem__(self, index: int | slice) -> "Item | ItemColumns":
        if isinstance(index, slice):
            return ItemColumns.of(self[i] for i in range(len(self))[index])
        return Item(
            custom_id=self.custom_id[index],
            text=self.text[index],
            line=self.line[index],
            label=None if self.label is None else self.label[index],
            context=None if self.context is None else self.context[index],
        )

    @property
    def labels(self) -> list[str | None]:
        """Each item's gold label (None where it has none)."""
        return [None] * len(self) if self.label is None else self.label

    def dump_json(self) -> bytes:
        return _WIRE.dump_json(self, exclude_none=True)

    @staticmethod
    def load_json(raw: str | bytes) -> "ItemColumns":
        return _WIRE.validate_json(raw)


_WIRE = TypeAdapter(ItemColumns)
