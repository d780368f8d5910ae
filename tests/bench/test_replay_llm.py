"""The recorded-answers LLM server (bench/replay_llm.py), as a real process, through the official openai client
and through Cascade's own LLM client (its prompts, its start-up contract check)."""

import asyncio
import csv
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletion
from prometheus_client.parser import text_string_to_metric_families

from cascade.monitoring.vllm_metrics import VLLM_METRICS
from cascade.workers.config import LLMConfig
from cascade.workers.llm import LLMClient, build_messages
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
ANSWERS = Path(os.environ.get("CASCADE_DATASETS", ROOT.parent / "shared" / "datasets")) / "banking77" / "llm_answers"
MODEL = "gpt-4-recorded-test"
LATENCY_MS = 300  # the GPT-3.5 server's simulated delay, to show that requests overlap


def cascade_messages(text: str, candidates: list[str]) -> list[dict[str, str]]:
    return build_messages(text, candidates)


def rows(name: str) -> list[dict[str, str]]:
    with (ANSWERS / name).open(newline="") as f:
        return list(csv.DictReader(f))


@dataclass(frozen=True)
class Server:
    base: str

    @property
    def url(self) -> str:
        return f"{self.base}/v1"

    def client(self, **options: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key="EMPTY", **options)  # type: ignore[arg-type]

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics by name and labels, e.g. ``replay_requests_total{outcome="off_choice"}``."""
        response = httpx2.get(f"{self.base}/metrics", timeout=5)
        assert response.status_code == 200
        found = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return found

    def outcome(self, outcome: str) -> float:
        return self.metrics()[f'replay_requests_total{{outcome="{outcome}"}}']


def _start(answers: Path, *options: str) -> Iterator[Server]:
    port = free_port()
    with tempfile.TemporaryFile() as log:
        command = [sys.executable, "-m", "bench.replay_llm", "--answers", str(answers), "--port", str(port)]
        process = subprocess.Popen([*command, "--model", MODEL, *options], cwd=ROOT, stdout=log, stderr=log)
        try:
            server = Server(f"http://127.0.0.1:{port}")
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"the replay server did not start: {log.read().decode(errors='replace')[-2000:]}")
                try:
                    if httpx2.get(f"{server.base}/health", timeout=1).status_code == 200:
                        break
                except httpx2.HTTPError:
                    pass
                time.sleep(0.1)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def gpt4() -> Iterator[Server]:
    yield from _start(ANSWERS / "test_gpt4.csv")


@pytest.fixture(scope="module")
def gpt35() -> Iterator[Server]:
    yield from _start(ANSWERS / "test_gpt35.csv", "--latency-ms", str(LATENCY_MS))


def ask(server: Server, messages: list[dict[str, str]], choices: list[str] | None = None) -> ChatCompletion:
    """One request with the parameters of Cascade's LLMClient.classify (structured_outputs when ``choices``)."""
    extra = {"structured_outputs": {"choice": choices}} if choices is not None else None
    with server.client(max_retries=0) as client:
        return client.chat.completions.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=24,
            temperature=0.0,
            logprobs=True,
            top_logprobs=5,
            extra_body=extra,
        )


def test_known_text_gets_its_recorded_answer_with_usage_and_logprobs(gpt4: Server) -> None:
    row = next(r for r in rows("test_gpt4.csv") if r["llm_label"] != r["label"])  # GPT-4 was wrong: replay, not gold
    candidates = [row["label"], row["llm_label"], "card_arrival"]
    response = ask(gpt4, cascade_messages(row["text"], candidates), candidates)
    choice = response.choices[0]
    assert choice.message.content == row["llm_label"]
    assert response.system_fingerprint == "replay"
    assert response.model == MODEL
    usage = response.usage
    assert usage is not None
    assert usage.prompt_tokens > len(row["text"]) / 4
    assert usage.completion_tokens == len(choice.logprobs.content or []) > 0  # type: ignore[union-attr]
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    tokens = choice.logprobs.content or []  # type: ignore[union-attr]
    assert "".join(t.token for t in tokens) == row["llm_label"]
    assert all(t.logprob == 0.0 and [a.token for a in t.top_logprobs] == [t.token] for t in tokens)


@pytest.mark.parametrize(
    "variant",
    ["whole_message", "whitespace_and_case", "system_prompt_and_descriptions", "conversation"],
)
def test_the_item_is_found_when_the_prompt_changes(gpt4: Server, variant: str) -> None:
    data = rows("test_gpt4.csv")
    row = next(r for r in data if r["llm_label"] != r["label"] and len(r["text"]) > 40)
    longer = max((r for r in data if r["llm_label"] != row["llm_label"]), key=lambda r: len(r["text"]))
    text = row["text"]
    messages = {
        "whole_message": [{"role": "user", "content": text}],
        "whitespace_and_case": [{"role": "user", "content": "  " + "\n ".join(text.upper().split()) + "\t"}],
        "system_prompt_and_descriptions": [
            {"role": "system", "content": "You are a bank's intent router."},
            {"role": "user", "content": f"Customer wrote: «{text}»\nLabels:\n- {row['llm_label']}: the intent"},
        ],
        "conversation": [
            {"role": "user", "content": f"Message:\n{longer['text']}\n\nLabels:\n- x"},
            {"role": "assistant", "content": longer["llm_label"]},
            {"role": "user", "content": f"And this one? {text}"},
        ],
    }[variant]
    assert ask(gpt4, messages).choices[0].message.content == row["llm_label"]


def test_an_answer_outside_the_choices_is_never_the_gold_label(gpt4: Server) -> None:
    row = next(r for r in rows("test_gpt4.csv") if r["llm_label"] != r["label"])
    choices = [row["label"], "card_arrival" if row["label"] != "card_arrival" else "lost_or_stolen_card"]
    before = gpt4.outcome("off_choice")
    response = ask(gpt4, cascade_messages(row["text"], choices), choices)
    assert response.choices[0].message.content == choices[1]  # the first choice that is not the gold label
    assert response.system_fingerprint == "replay-off-choice"
    assert gpt4.outcome("off_choice") == before + 1


def test_invalid_77_is_replayed_unconstrained_and_never_answered_correctly(gpt35: Server) -> None:
    row = next(r for r in rows("test_gpt35.csv") if r["llm_label"] == "INVALID_77")
    gold, messages = row["label"], [{"role": "user", "content": row["text"]}]
    assert ask(gpt35, messages).choices[0].message.content == "INVALID_77"
    choices = [gold, "card_arrival", "age_limit"]
    response = ask(gpt35, cascade_messages(row["text"], choices), choices)
    assert response.choices[0].message.content == "card_arrival"
    assert response.system_fingerprint == "replay-off-choice"

    before = gpt35.outcome("no_wrong_choice")
    with gpt35.client(max_retries=2) as client, pytest.raises(openai.ConflictError) as caught:
        client.chat.completions.create(  # only the gold label allowed: an LLM failure
            model=MODEL,
            messages=cascade_messages(row["text"], [gold]),  # type: ignore[arg-type]
            extra_body={"structured_outputs": {"choice": [gold]}},
        )
    assert caught.value.status_code == 409
    assert gpt35.outcome("no_wrong_choice") == before + 1  # x-should-retry: false, so the client did not retry


def test_unknown_text_is_a_404_in_openai_error_shape(gpt4: Server) -> None:
    text = "Zebra-striped submarines are not a Banking77 intent, and this sentence is long enough to get truncated."
    body = {"model": MODEL, "messages": cascade_messages(text, ["a", "b"]), "structured_outputs": {"choice": ["a"]}}
    response = httpx2.post(f"{gpt4.url}/chat/completions", json=body, timeout=5)
    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "unknown_text"
    assert text[:80] in error["message"]
    assert text not in error["message"]
    with pytest.raises(openai.NotFoundError):
        ask(gpt4, [{"role": "user", "content": text}])


def config(server: Server) -> LLMConfig:
    return LLMConfig(
        url=server.url, model=MODEL, api_key="EMPTY", concurrency=8, timeout=10, max_retries=0, max_tokens=24
    )


def test_cascade_llm_client_passes_its_contract_check_and_classifies(gpt4: Server) -> None:
    """Cascade's own client: the start-up check an LLM worker runs, then answers as a worker gets them."""
    before = gpt4.outcome("contract_check")
    wanted = rows("test_gpt4.csv")[:20]

    async def run() -> list[str]:
        async with LLMClient(config(gpt4)) as client:
            await client.check_constrained()
            answers = await client.classify_many([(r["text"], sorted({r["llm_label"], r["label"]})) for r in wanted])
        return [a.label if not isinstance(a, Exception) else repr(a) for a in answers]

    assert asyncio.run(run()) == [r["llm_label"] for r in wanted]
    assert gpt4.outcome("contract_check") == before + 1


def test_metrics_expose_vllm_names_and_count_tokens(gpt4: Server) -> None:
    row = rows("test_gpt4.csv")[0]
    before = gpt4.metrics()
    usage = ask(gpt4, cascade_messages(row["text"], [row["llm_label"]]), [row["llm_label"]]).usage
    after = gpt4.metrics()
    names = {key.split("{")[0] for key in after}
    for name in VLLM_METRICS:
        assert name in names or f"{name}_count" in names, name
    by_model = f'{{model_name="{MODEL}"}}'
    assert usage is not None
    prompt, generation = "vllm:prompt_tokens_total" + by_model, "vllm:generation_tokens_total" + by_model
    assert after[prompt] - before[prompt] == usage.prompt_tokens
    assert after[generation] - before[generation] == usage.completion_tokens
    latency = "vllm:e2e_request_latency_seconds_count" + by_model
    assert after[latency] == before[latency] + 1


def test_models_lists_the_served_name_and_others_are_refused(gpt4: Server) -> None:
    with gpt4.client() as client:
        assert [m.id for m in client.models.list()] == [MODEL]
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "x"}])


def test_requests_are_answered_concurrently(gpt35: Server) -> None:
    data = [r for r in rows("test_gpt35.csv") if r["llm_label"] != "INVALID_77"][:64]

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=gpt35.url, api_key="EMPTY", max_retries=0) as client:
            responses = await asyncio.gather(
                *(
                    client.chat.completions.create(model=MODEL, messages=cascade_messages(r["text"], ["x"]))  # type: ignore[arg-type]
                    for r in data
                )
            )
        return [r.choices[0].message.content or "" for r in responses]

    start = time.perf_counter()
    answers = asyncio.run(run())
    elapsed = time.perf_counter() - start
    assert answers == [r["llm_label"] for r in data]
    assert elapsed < len(data) * LATENCY_MS / 1000 / 4  # one at a time would take 19 s


def test_serve_in_thread_runs_the_app_in_process() -> None:
    from bench.replay_llm import create_app, serve_in_thread

    row = rows("test_gpt4.csv")[1]
    with (
        serve_in_thread(create_app(ANSWERS / "test_gpt4.csv", MODEL)) as url,
        openai.OpenAI(base_url=url, api_key="EMPTY", max_retries=0) as client,
    ):
        answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": row["text"]}])
    assert answer.choices[0].message.content == row["llm_label"]


def test_the_longest_recorded_text_in_a_message_wins() -> None:
    from bench.replay_llm import Answers, Recorded

    texts = ["my card", "i lost my card yesterday", "card yesterday and"]
    answers = Answers({t: Recorded(t, "gold", f"answer {t}") for t in texts})
    assert answers.find(["Hello. I LOST my card\n yesterday, what now?"]) == "i lost my card yesterday"
    assert answers.find(["where is mycard"]) is None  # a recorded text must stand between word boundaries
    assert answers.find(["my card", "nothing recorded here"]) == "my card"  # earlier user messages are searched too
