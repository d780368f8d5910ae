"""Duplicate custom_ids of one reading, on local disk: the first line owns its id, exactly, whatever the filter
says, and a new reading of the same lines gives the same answers."""

import os
import random
from pathlib import Path

import pytest

from cascade.broker.claims import IdClaims
from cascade.workers.errors import StorageError
from cascade.workers.items import Item


def numbered(ids: list[str]) -> list[Item]:
    return [Item(custom_id=c, text="t", line=n + 1) for n, c in enumerate(ids)]


def expected(items: list[Item]) -> list[bool]:
    seen: set[str] = set()
    owns = []
    for i in items:
        owns.append(i.custom_id not in seen)
        seen.add(i.custom_id)
    return owns


def claimed(claims: IdClaims, items: list[Item], batch: int) -> list[bool]:
    return [own for start in range(0, len(items), batch) for own in claims.claim(items[start : start + batch])]


@pytest.mark.parametrize("bits", [64, 1 << 20])  # a filter of 64 bits: nearly every id is looked up on disk
@pytest.mark.parametrize("batch", [1, 7, 500])
def test_the_first_line_owns_its_id_across_and_within_batches(bits: int, batch: int) -> None:
    rnd = random.Random(bits + batch)
    items = numbered([f"id-{rnd.randrange(1500)}" for _ in range(3000)])
    with IdClaims(bits=bits) as claims:
        assert claimed(claims, items, batch) == expected(items)
    assert 0 < sum(expected(items)) < len(items)


def test_a_new_reading_of_the_same_lines_gives_the_same_answers() -> None:
    items = numbered(["a", "b", "a", "c", "b", "a"])
    answers = []
    for _ in range(2):  # a worker died mid-intake: the next reading starts from line 1, with claims of its own
        with IdClaims() as claims:
            answers.append(claimed(claims, items, batch=2))
    assert answers == [[True, True, False, True, False, False]] * 2
    with IdClaims() as claims:
        assert claims.claim([]) == []


def test_odd_ids_are_kept_exactly() -> None:
    ids = ["n\x00ul", "n\x00ul2", "n", "ünï ☃", "\x00", "n\x00ul", "", " ", "x" * 600, "x" * 600]
    items = numbered(ids)
    with IdClaims(bits=64) as claims:
        assert claims.claim(items) == expected(items)


def test_the_claims_folder_is_deleted_when_the_reading_ends(tmp_path: os.PathLike[str]) -> None:
    with IdClaims(folder=str(tmp_path)) as claims:
        claims.claim(numbered(["a", "b"]))
        assert os.listdir(tmp_path)
    assert os.listdir(tmp_path) == []


def test_a_folder_it_cannot_write_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "not-there"
    with pytest.raises(StorageError, match="TMPDIR") as raised:
        IdClaims(folder=str(missing))
    assert "\n" not in str(raised.value)
    assert str(missing) in str(raised.value)
