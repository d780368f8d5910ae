"""The public surface of ``cascade`` is what ``__all__`` lists, no more, no less (as httpx guards its own)."""

import cascade


def test_all_public_members_are_exported() -> None:
    public = {name for name in vars(cascade) if not name.startswith("_") or name == "__version__"}
    modules = {"broker", "workers", "monitoring"}  # the subpackages, bound when they are imported
    assert len(cascade.__all__) == len(set(cascade.__all__))  # ruff (RUF022) keeps it sorted
    assert set(cascade.__all__) == public - modules


def test_every_exported_member_is_defined_in_the_core_and_documented() -> None:
    for name in cascade.__all__:
        if name == "__version__":
            continue
        member = getattr(cascade, name)
        assert member.__module__.startswith("cascade.workers."), name
        assert member.__doc__, f"{name} has no docstring"
