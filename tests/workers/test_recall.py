"""The answer memory (``cascade.workers.recall``): packing, look-up, its replica of the shared store, and its place in
calibration: the memory's answers are measured like the other tiers and counted in the policy's certificate."""

import dataclasses

import numpy as np
import pytest
import redis

from cascade.broker.recall_store import RedisMemoryStore
from cascade.workers.calibration import CalibrationData, FitOptions, Identity, fit_policy
from cascade.workers.recall import (
    AnswerMemory,
    MemoryRule,
    Remembered,
    leave_one_out,
    memory_name,
    pack,
    unpack,
)

IDENT = Identity("s" * 64, "llm", "c" * 64)
DIM = 8


def unit(*values: float) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


def test_pack_round_trips_a_unit_vector_and_refuses_anything_else() -> None:
    v = unit(3, 4)
    back = unpack(pack(v * 10), DIM)  # packed at unit length
    assert back is not None
    assert np.allclose(back, v, atol=1e-3)
    assert unpack(pack(v), DIM + 1) is None  # another dimension
    assert unpack("not base64!", DIM) is None
    assert unpack("", DIM) is None


def test_a_memory_name_changes_with_the_encoder_the_llm_and_the_prompt() -> None:
    names = {
        memory_name("enc", "gpt", "p1"),
        memory_name("enc2", "gpt", "p1"),
        memory_name("enc", "gpt2", "p1"),
        memory_name("enc", "gpt", "p2"),
    }
    assert len(names) == 4


def filled(bound: int = 100) -> AnswerMemory:
    memory = AnswerMemory(DIM, bound)
    memory.extend(
        [
            Remembered("card_lost", pack(unit(1, 0.05))),
            Remembered("card_lost", pack(unit(1, -0.05))),
            Remembered("card_lost", pack(unit(1, 0.1))),
            Remembered("refund", pack(unit(0, 1))),
            Remembered("top_up", pack(unit(0, 1, 0.1))),
        ]
    )
    return memory


def test_lookup_answers_only_when_the_k_nearest_agree_and_are_similar_enough() -> None:
    memory = filled()
    rule = MemoryRule(k=3, similarity=0.95)
    near_cards, between, near_mixed = unit(1, 0), unit(1, 1), unit(0, 1, 0.05)
    found = memory.lookup(np.stack([near_cards, between, near_mixed]), rule)
    assert found[0] is not None
    assert found[0].label == "card_lost"
    assert found[0].similarity >= 0.95
    assert found[1] is None  # not similar enough to any
    assert found[2] is None  # its neighbours disagree (refund, top_up)
    assert memory.lookup(np.stack([near_cards]), MemoryRule(k=6, similarity=0.0)) == [None]  # fewer than k


def test_the_memory_keeps_its_newest_entries_within_its_bound_and_skips_undecodable_ones() -> None:
    memory = filled(bound=4)
    assert len(memory) == 4
    assert memory.labels[0] == "card_lost"
    assert memory.labels[-1] == "top_up"
    memory.extend([Remembered("x", "garbage"), Remembered("", pack(unit(1)))])
    assert len(memory) == 4
    assert memory.skipped == 2


@pytest.fixture
def memory_store(redis_db: redis.Redis) -> RedisMemoryStore:
    return RedisMemoryStore(redis_db, bound=5, ttl=600)


def test_the_redis_memory_is_read_incrementally_bounded_and_expiring(
    memory_store: RedisMemoryStore, redis_db: redis.Redis
) -> None:
    replica = AnswerMemory(DIM, 5)
    memory_store.append("m", [Remembered("a", pack(unit(1))), Remembered("b", pack(unit(0, 1)))])
    replica.sync(memory_store, "m")
    assert replica.labels == ["a", "b"]
    memory_store.append("m", [Remembered(f"n{i}", pack(unit(1, i))) for i in range(4)])
    replica.sync(memory_store, "m")  # only the new entries are read
    assert replica.labels == ["b", "n0", "n1", "n2", "n3"]
    assert redis_db.xlen("cascade:memory:m") == 5
    assert 0 < redis_db.ttl("cascade:memory:m") <= 600
    memory_store.append("m", [Remembered("corrupt", "%%%")])
    replica.sync(memory_store, "m")
    assert "corrupt" not in replica.labels
    assert replica.skipped == 1


def test_a_deleted_memory_is_rebuilt_in_the_replica_not_kept(
    memory_store: RedisMemoryStore, redis_db: redis.Redis
) -> None:
    replica = AnswerMemory(DIM, 5)
    memory_store.append("m", [Remembered("old", pack(unit(1)))])
    replica.sync(memory_store, "m")
    redis_db.flushdb()
    replica.sync(memory_store, "m")
    assert len(replica) == 0
    memory_store.append("m", [Remembered("new", pack(unit(1)))])
    replica.sync(memory_store, "m")
    assert replica.labels == ["new"]


def test_leave_one_out_never_uses_an_items_own_answer() -> None:
    vectors = np.stack([unit(1, 0), unit(1, 0.01), unit(1, 0.02), unit(0, 1), unit(0, 1, 0.01), unit(0, 1, 0.02)])
    labels, similarity = leave_one_out(vectors, ["a", "a", "x", "b", "b", None], k=1)
    assert labels == ["a", "a", "a", "b", "b", "b"]  # item 2 answered "x", but only the others count
    assert np.all(similarity > 0.99)
    pairs, _ = leave_one_out(vectors, ["a", "a", "x", "b", "b", None], k=2)
    assert pairs[0] is None  # its two nearest others say "a" and "x"
    assert pairs[5] == "b"
    lone, _ = leave_one_out(vectors[:2], ["a", "a"], k=2)  # one other answer only: fewer than k
    assert lone == [None, None]


def memory_data(n: int, memory_p: float, seed: int = 0) -> CalibrationData:
    """Low-confidence items where the LLM beats the specialist (0.85 against 0.4); the memory answers 60% of them
    at similarity 0.97, right with probability ``memory_p``."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.0, 0.6, n)
    spec_ok = rng.random(n) < 0.4
    llm_ok = (rng.random(n) < 0.85).astype(float)
    answered = rng.random(n) < 0.6
    memory_ok = np.where(answered, (rng.random(n) < memory_p).astype(float), np.nan)
    similarity = np.where(answered, 0.97, np.nan)
    return CalibrationData(conf, ["a"] * n, spec_ok, llm_ok, np.full(n, 50.0), memory_ok, similarity, 3)


def test_a_memory_as_good_as_the_llm_joins_the_policy_and_its_certificate() -> None:
    data = memory_data(3000, memory_p=0.95)
    policy = fit_policy(data, FitOptions(target=0.8, delta=0.05), IDENT)
    assert policy.reachable
    assert policy.memory is not None
    assert policy.memory.similarity <= 0.97
    assert policy.memory.k == 3
    assert policy.memory.accuracy is not None
    assert policy.memory.accuracy > 0.9
    cert = policy.certificate
    assert cert is not None
    assert cert.memory_share == pytest.approx(0.6 * cert.escalation_share, abs=0.05)
    # the certificate counts the memory's answers, more accurate than the LLM's: the same target is certified
    # with far fewer LLM calls than without the memory
    without = fit_policy(dataclasses.replace(data, memory_ok=None, memory_similarity=None), FitOptions(0.8), IDENT)
    assert without.certificate is not None
    assert without.memory is None
    assert cert.lower_bound >= 0.8
    assert without.certificate.lower_bound >= 0.8
    assert cert.escalation_share - cert.memory_share < without.certificate.escalation_share - 0.3
    assert "answered by the answer memory" in policy.message


def test_a_memory_worse_than_the_llm_is_left_out() -> None:
    policy = fit_policy(memory_data(3000, memory_p=0.5), FitOptions(target=0.8, delta=0.05), IDENT)
    assert policy.memory is None
    assert policy.certificate is not None
    assert policy.certificate.memory_share == 0.0


def test_a_memory_that_would_break_the_guarantee_is_counted_in_it() -> None:
    """The similarity is chosen on the selection part; if the memory is worse on the certification part, the
    certificate sees it (its accuracy is the memory's, not the LLM's)."""
    data = memory_data(3000, memory_p=0.95)
    assert data.memory_ok is not None
    worse = data.memory_ok.copy()
    policy = fit_policy(data, FitOptions(target=0.8, delta=0.05, seed=0), IDENT)
    assert policy.memory is not None
    assert policy.certificate is not None
    # the same split, the memory now wrong everywhere outside the selection part
    order = np.random.default_rng(0).permutation(len(worse))
    cert_idx = order[round(len(worse) * 0.3) :]
    worse[cert_idx] = np.where(np.isnan(worse[cert_idx]), np.nan, 0.0)
    broken = fit_policy(dataclasses.replace(data, memory_ok=worse), FitOptions(target=0.8, delta=0.05), IDENT)
    assert broken.certificate is not None
    assert broken.certificate.accuracy < policy.certificate.accuracy - 0.1
