"""The in-memory store keeps the ``JobStore`` contract (no Redis needed)."""

import pytest

from cascade.workers.memory import MemoryJobStore
from cascade.workers.storage import JobStore
from tests.workers.store_contract import StoreContract


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> JobStore:
        return MemoryJobStore()
