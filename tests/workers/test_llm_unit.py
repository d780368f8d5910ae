"""Pure parts of the LLM client, and its contract check against a fake server (fault injection)."""

import asyncio
import json
import math

import httpx2
import pytest

from cascade.workers.config import LLMConfig
from cascade.workers.errors import LLMContractError, LLMError
from cascade.workers.llm import LLMClient, build_messages, choice_confidence

CONFIG = LLMConfig(
    url="http://llm.test/v1", model="m", api_key="k", concurrency=4, timeout=5, max_retries=0, max_tokens=24
)
"""A client that fails at once: no retries (the fake server answers the same every time)."""


def tok(token: str, lp: float, alts: list[tuple[str, float]]) -> dict[str, object]:
    return {"token": token, "logprob": lp, "top_logprobs": [{"token": t, "logprob": v} for t, v in alts]}


def test_confidence_is_product_of_renormalised_token_probabilities() -> None:
    candidates = ["card_arrival", "card_lost", "refund"]
    tokens = [
        tok("card", math.log(0.6), [("card", math.log(0.6)), ("ref", math.log(0.2)), ("hello", math.log(0.2))]),
        tok("_arrival", math.log(0.3), [("_arrival", math.log(0.3)), ("_lost", math.log(0.1)), ("!", 0.0)]),
    ]
    # "hello" and "!" cannot continue any candidate: position 1 -> 0.6/0.8, position 2 -> 0.3/0.4
    assert choice_confidence(tokens, candidates) == pytest.approx(0.75 * 0.75)


def test_confidence_with_masked_alternatives_equals_sequence_probability() -> None:
    tokens = [tok("yes", math.log(0.9), [("yes", math.log(0.9)), ("no", math.log(0.1)), ("x", -9999.0)])]
    assert choice_confidence(tokens, ["yes", "no"]) == pytest.approx(0.9)


def test_messages_list_every_candidate_and_the_text() -> None:
    messages = build_messages("where is my card", ["a_label", "b_label"])
    user = messages[-1]["content"]
    assert "where is my card" in user
    assert "- a_label" in user
    assert "- b_label" in user


def fake_server(content: str, status: int = 200) -> httpx2.AsyncClient:
    """A fake OpenAI-compatible server that always answers ``content``: for fault injection only."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        if status != 200:
            return httpx2.Response(status, json={"error": {"message": "boom"}})
        body = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
        return httpx2.Response(200, content=json.dumps(body), headers={"content-type": "application/json"})

    return httpx2.AsyncClient(transport=httpx2.MockTransport(handler))


def test_contract_check_refuses_a_server_that_ignores_structured_outputs() -> None:
    async def run() -> None:
        async with LLMClient(CONFIG, http_client=fake_server("hello")) as client:
            await client.check_constrained()

    with pytest.raises(LLMContractError, match="ignores structured_outputs"):
        asyncio.run(run())


def test_failing_server_gives_llm_error_per_item() -> None:
    async def run() -> list[object]:
        async with LLMClient(CONFIG, http_client=fake_server("", status=500)) as client:
            return list(await client.classify_many([("a", ["x", "y"]), ("b", ["x", "y"])]))

    answers = asyncio.run(run())
    assert len(answers) == 2
    assert all(isinstance(a, LLMError) for a in answers)
