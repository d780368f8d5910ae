"""The ``AnswerCache`` contract, one test class for every implementation (as ``store_contract`` for the job store).

Subclassed with a ``cache`` fixture by ``tests/workers/test_answers.py`` (the in-memory fake) and
``tests/broker/test_answer_cache.py`` (the real Redis, the tests' own database).
"""

import time

from cascade.workers.answers import AnswerCache, CachedAnswer, Claim


def cached(label: str = "b", tokens: int = 10) -> CachedAnswer:
    return CachedAnswer(
        label=label, confidence=0.75, prompt_tokens=tokens, completion_tokens=2, model="m", prompt_version="p1"
    )


class AnswerCacheContract:
    def test_a_put_answer_comes_back_from_get_and_claim(self, cache: AnswerCache) -> None:
        assert cache.get(["k1", "k2"]) == {}
        cache.put({"k1": cached("a")})
        assert cache.get(["k1", "k2"]) == {"k1": cached("a")}
        assert cache.claim(["k1"], "w1", 30) == {"k1": cached("a")}

    def test_a_claim_is_exclusive_until_released(self, cache: AnswerCache) -> None:
        assert cache.claim(["k1", "k2"], "w1", 30) == {"k1": Claim.MINE, "k2": Claim.MINE}
        assert cache.claim(["k1", "k2", "k3"], "w2", 30) == {"k1": Claim.THEIRS, "k2": Claim.THEIRS, "k3": Claim.MINE}
        assert cache.claim(["k1"], "w1", 30) == {"k1": Claim.MINE}  # its own claim: renewed
        cache.release(["k1", "k3"], "w2")  # only w2's own claim (k3) goes
        assert cache.claim(["k1", "k3"], "w1", 30) == {"k1": Claim.MINE, "k3": Claim.MINE}
        cache.release(["k1"], "w1")
        assert cache.claim(["k1"], "w2", 30) == {"k1": Claim.MINE}

    def test_a_claim_lapses_after_its_seconds(self, cache: AnswerCache) -> None:
        assert cache.claim(["k1"], "w1", 0.2) == {"k1": Claim.MINE}
        assert cache.claim(["k1"], "w2", 30) == {"k1": Claim.THEIRS}
        time.sleep(0.3)
        assert cache.claim(["k1"], "w2", 30) == {"k1": Claim.MINE}

    def test_put_drops_the_claim_and_the_first_answer_stays(self, cache: AnswerCache) -> None:
        assert cache.claim(["k1"], "w1", 30) == {"k1": Claim.MINE}
        cache.put({"k1": cached("a")})
        assert cache.claim(["k1"], "w2", 30) == {"k1": cached("a")}
        cache.put({"k1": cached("b")})  # a second answer to the same question (a claim lapsed): the first stays
        assert cache.get(["k1"]) == {"k1": cached("a")}

    def test_empty_calls_do_nothing(self, cache: AnswerCache) -> None:
        assert cache.get([]) == {}
        assert cache.claim([], "w1", 30) == {}
        cache.put({})
        cache.release([], "w1")
