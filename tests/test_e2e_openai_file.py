"""OpenAI's documented batch lines, unchanged, through `cascade api` with the official `openai` client, a real worker
and the real vLLM (SmolLM2): every line ends in the output file, and the LLM reads each line's system message and
conversation. A recording proxy between the worker and vLLM shows what the LLM was sent."""

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from cascade.broker.settings import Settings
from cascade.workers.items import AnswerSource, Escalation, Item, ItemResult, Message, Role
from cascade.workers.jobs import JobSpec
from cascade.workers.llm import LLMClient
from cascade.workers.memory import MemoryAnswerCache, MemoryJobStore
from cascade.workers.pipeline import run_llm_chunk
from cascade.workers.prompts import SYSTEM_PROMPT, LabelPrompt, Prompt
from tests.conftest import CASCADE, WorkerFactory, _env, free_port, write_jsonl

pytestmark = pytest.mark.llm

ALIAS = "gpt-3.5-turbo-0125"
TOKEN = "tok-e2e"
HELPFUL = "You are a helpful assistant."
UNHELPFUL = "You are an unhelpful assistant."


def line(cid: str, messages: list[dict[str, str]], model: str | None = ALIAS) -> dict[str, object]:
    body: dict[str, object] = {"messages": messages, "max_tokens": 1000}
    if model is not None:
        body = {"model": model, **body}
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}


ROWS: list[dict[str, object] | str] = [  # the first two as OpenAI's Batch API guide gives them
    line("request-1", [{"role": "system", "content": HELPFUL}, {"role": "user", "content": "Hello world!"}]),
    line("request-2", [{"role": "system", "content": UNHELPFUL}, {"role": "user", "content": "Hello world!"}]),
    line(
        "request-3",
        [
            {"role": "user", "content": "Hi, I have a question."},
            {"role": "assistant", "content": "Sure, ask away."},
            {"role": "user", "content": "Did I really win a free cruise? Call 0800 now to claim."},
        ],
        model=None,
    ),
]
REFUSED = line("request-4", [{"role": "user", "content": "Hello world!"}], model="gpt-4o")


class Recorder:
    """A proxy in front of vLLM that keeps the JSON body of every chat request it forwards."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.bodies = upstream.rstrip("/"), []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorder.bodies.append(json.loads(raw))
                self._forward("POST", raw)

            def do_GET(self) -> None:
                self._forward("GET", None)

            def _forward(self, method: str, raw: bytes | None) -> None:
                url = recorder.upstream + self.path.removeprefix("/v1")
                request = urllib.request.Request(url, data=raw, method=method)
                request.add_header("Content-Type", "application/json")
                with urllib.request.urlopen(request, timeout=300) as answer:
                    payload = answer.read()
                    self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.bodies: list[dict[str, Any]]
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder(vllm_server: str) -> Iterator[Recorder]:
    proxy = Recorder(vllm_server)
    yield proxy
    proxy.close()


@pytest.fixture
def api_url(settings: Settings, sms_model: Path, redis_db: object, tmp_path: Path) -> Iterator[str]:
    """`cascade api` escalating every item (threshold 1), with the alias set."""
    port = free_port()
    env = {
        **_env(settings),
        "CASCADE_API_TOKENS": f"{TOKEN}=team-e2e",
        "CASCADE_MODEL_DIR": str(sms_model),
        "CASCADE_THRESHOLD": "1",
        "CASCADE_LLM_MODEL_ALIASES": ALIAS,
    }
    with (tmp_path / "api.log").open("ab") as out:
        proc = subprocess.Popen(
            [CASCADE, "api", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(150):
            try:
                httpx2.get(url + "/batches", timeout=1)
                break
            except httpx2.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_openai_documented_lines_run_unchanged_and_the_llm_reads_their_system_messages(
    settings: Settings, api_url: str, recorder: Recorder, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    # The worker reads the upload (its intake), so it needs the alias too.
    start_worker(queues="specialist,llm", CASCADE_LLM_URL=recorder.url, CASCADE_LLM_MODEL_ALIASES=ALIAS)
    client = openai.OpenAI(base_url=api_url, api_key=TOKEN)
    path = write_jsonl(tmp_path / "batch.jsonl", [*ROWS, REFUSED])
    with path.open("rb") as f:
        file_id = client.files.create(file=f, purpose="batch").id
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 600
    while batch.status not in {"completed", "failed", "cancelled", "expired"} and time.monotonic() < deadline:
        time.sleep(1)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch

    assert batch.output_file_id
    assert batch.error_file_id
    output = [json.loads(x) for x in client.files.content(batch.output_file_id).read().splitlines()]
    errors = [json.loads(x) for x in client.files.content(batch.error_file_id).read().splitlines()]
    assert sorted(o["custom_id"] for o in output) == ["request-1", "request-2", "request-3"]
    assert all(o["response"]["body"]["cascade"]["tier"] == "llm" for o in output)  # threshold 1: all escalated
    assert [e["custom_id"] for e in errors] == ["request-4"]
    assert "'body.model'" in json.dumps(errors[0])
    assert "CASCADE_LLM_MODEL_ALIASES" in json.dumps(errors[0])

    asked = [b for b in recorder.bodies if b["messages"][-1]["content"].startswith("Message:\n")]
    assert {b["model"] for b in asked} == {settings.llm_model}  # the alias means the configured LLM
    hello = [b["messages"] for b in asked if b["messages"][-1]["content"].startswith("Message:\nHello world!\n")]
    # Two system prompts, two questions: the answer cache never shares an answer across them.
    assert sorted(m[0]["content"].split("\n\n")[0] for m in hello) == [HELPFUL, UNHELPFUL]
    for messages in hello:
        assert [m["role"] for m in messages] == ["system", "user"]
        assert messages[0]["content"].split("\n\n")[1].startswith("You are a text classifier.")
    (turns,) = [b["messages"] for b in asked if "free cruise" in b["messages"][-1]["content"]]
    assert [m["role"] for m in turns] == ["system", "user", "assistant", "user"]
    assert turns[0]["content"].startswith("You are a text classifier.")
    assert turns[1:3] == [
        {"role": "user", "content": "Hi, I have a question."},
        {"role": "assistant", "content": "Sure, ask away."},
    ]
    assert "Labels:\n- ham\n- spam" in turns[3]["content"] or "Labels:\n- spam\n- ham" in turns[3]["content"]


def escalation(cid: str, text: str, context: list[Message] | None = None) -> Escalation:
    return Escalation(
        custom_id=cid,
        line=int(cid.removeprefix("e")),
        text=text,
        gold=None,
        specialist_label="ham",
        specialist_confidence=0.5,
        candidates=["ham", "spam"],
        context=context,
    )


def test_the_jobs_prompt_and_each_lines_messages_reach_the_llm_and_key_its_answers(
    settings: Settings, recorder: Recorder
) -> None:
    """The in-process LLM chunk against the real vLLM: the prompt file's description and instructions are sent; an
    answer is shared only by the same text under the same messages and the same prompt."""
    prompt = Prompt(
        instructions="The messages are SMS.", labels={"spam": LabelPrompt(description="unsolicited advertising")}
    )
    spec = JobSpec(model_path="m", model_sha256="s", threshold=1.0, top_k=2, llm_model="x", prompt=prompt)
    helpful = [Message(role=Role.SYSTEM, content=HELPFUL)]
    texts = "Free entry to win a prize, text WIN now"
    escalations = [
        escalation("e1", texts),
        escalation("e2", texts, helpful),
        escalation("e3", texts, [Message(role=Role.SYSTEM, content=UNHELPFUL)]),
    ]
    store, cache = MemoryJobStore(), MemoryAnswerCache()

    def run(job_spec: JobSpec, batch: list[Escalation]) -> list[ItemResult]:
        job = store.create(job_spec)
        store.put_chunk(job, 0, [Item(custom_id=e.custom_id, text=e.text, line=e.line) for e in batch])
        store.finish_intake(job, total=len(batch), chunks=1)
        config = settings.llm_config().model_copy(update={"url": recorder.url})

        async def go() -> None:
            async with LLMClient(config) as client:
                await run_llm_chunk(store, client, job, 0, batch, cache=cache)

        asyncio.run(go())
        return sorted(store.iter_results(job), key=lambda r: r.custom_id)

    first = run(spec, escalations)
    assert [r.llm_source for r in first] == [AnswerSource.LLM] * 3  # three contexts: three questions
    sent = [b["messages"] for b in recorder.bodies]
    assert len(sent) == 3
    assert all("- spam: unsolicited advertising\n" in m[-1]["content"] for m in sent)
    assert all(m[0]["content"].endswith(f"{SYSTEM_PROMPT}\n\nThe messages are SMS.") for m in sent)
    assert {m[0]["content"].split("\n\n")[0] for m in sent} == {HELPFUL, UNHELPFUL, SYSTEM_PROMPT}

    again = run(spec, [escalation("e4", texts, helpful), escalation("e5", texts)])
    assert [r.llm_source for r in again] == [AnswerSource.CACHE] * 2  # same text, messages and prompt
    assert len(recorder.bodies) == 3
    other = spec.model_copy(update={"prompt": None})
    assert [r.llm_source for r in run(other, [escalation("e6", texts)])] == [AnswerSource.LLM]  # another prompt
    assert len(recorder.bodies) == 4
