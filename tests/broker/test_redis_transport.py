"""cascade.broker.redis_transport: a channel whose connection the worker dropped after losing Redis can still
acknowledge."""

import os
import signal
from pathlib import Path

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.message import Message
from kombu.transport import redis as kombu_redis

from tests.conftest import free_port
from tests.test_faults import _redis_server


def test_a_message_is_acknowledged_on_its_channel_after_redis_was_killed_and_the_connection_dropped(
    tmp_path: Path,
) -> None:
    port = free_port()
    server = _redis_server(port, tmp_path)
    client = redis.Redis(port=port)
    queue = Queue("q", Exchange("q", type="direct"), routing_key="q")
    conn = Connection(f"redis://127.0.0.1:{port}/0", transport="cascade.broker.redis_transport:Transport")
    try:
        conn.Producer().publish({"x": 1}, exchange=queue.exchange, routing_key="q", declare=[queue])
        got: list[Message] = []
        conn.Consumer(queue, callbacks=[lambda _body, message: got.append(message)], accept=["json"]).consume()
        conn.drain_events(timeout=5)
        (message,) = got
        assert client.hlen("unacked") == 1
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        # What Celery's consumer does on losing the broker (on_connection_error_after_connected): collect the
        # connection, which drops its transport's client, then close it. Closing restores the channel's unacked
        # messages; with kombu's own transport that raises AttributeError ('NoneType' object has no attribute
        # 'hostname') and the worker's main process dies. Here Redis is down: a connection error, ignored.
        conn._do_close_transport()
        conn.close()
        server = _redis_server(port, tmp_path)
        message.ack()  # a task that outlived the connection acknowledges on its old channel
        assert client.hlen("unacked") == 0
        assert client.llen("q") == 0
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_message_taken_off_its_queue_as_redis_dies_goes_back_on_it_at_the_next_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu pops a message (BRPOP), then records it as unacknowledged in a second command: Redis killed in between
    (here: the second command fails) would lose it."""
    port = free_port()
    server = _redis_server(port, tmp_path)
    client = redis.Redis(port=port)
    queue = Queue("q", Exchange("q", type="direct"), routing_key="q")
    url = f"redis://127.0.0.1:{port}/0"
    try:
        with Connection(url, transport="cascade.broker.redis_transport:Transport") as conn:
            conn.Producer().publish({"x": 1}, exchange=queue.exchange, routing_key="q", declare=[queue])
            got: list[Message] = []
            conn.Consumer(queue, callbacks=[lambda _body, message: got.append(message)], accept=["json"]).consume()

            def redis_gone(*_: object) -> None:
                raise redis.ConnectionError("Redis went away")

            with monkeypatch.context() as m:
                m.setattr(kombu_redis.QoS, "append", redis_gone)
                with pytest.raises(redis.ConnectionError):
                    conn.drain_events(timeout=5)
            assert not got
            assert (client.llen("q"), client.hlen("unacked")) == (0, 0)  # popped, recorded nowhere
        with Connection(url, transport="cascade.broker.redis_transport:Transport") as again:
            again.default_channel  # noqa: B018 (connecting puts it back)
        assert client.llen("q") == 1
    finally:
        server.terminate()
        server.wait(timeout=30)
