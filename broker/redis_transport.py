"""kombu's Redis transport, repaired so that a worker survives losing Redis.

When a worker loses Redis, Celery collects the broken connection (``kombu.Connection.collect`` sets its transport's
``client`` to None) and then closes it. Closing a channel that still holds unacknowledged deliveries restores them,
and kombu builds the Redis client for that from ``transport.client``: AttributeError ``'NoneType' object has no
attribute 'hostname'``, which is not a connection error, so the worker's main process dies. A task that started
before the reconnection and acknowledges (or rejects) its message on its old channel fails the same way.

Here a channel keeps the connection parameters it was created with: acknowledging, rejecting and restoring on a
channel whose connection was collected reach Redis again, or fail with a connection error, which Celery logs and
survives (the message then stays in Redis's unacked hash and is delivered again after the visibility timeout).
Also: kombu takes a message off its queue (BRPOP) and then, in a second command, records it as unacknowledged. When
Redis dies between the two, the message is gone from Redis and kombu drops the only copy it holds; here it is kept
and put back on its queue as soon as this process reaches Redis again.

Set as ``broker_transport`` by ``cascade.broker.celery_app.configure``; the URL stays ``redis://`` (or ``rediss://``:
``configure`` then sets ``broker_use_ssl``, which is what makes kombu connect with TLS).
"""

import os
from typing import Any

import redis
from kombu.log import get_logger
from kombu.transport import redis as kombu_redis

from cascade.broker import connections

logger = get_logger(__name__)

_POPPED: list[tuple[dict[str, Any], str, str]] = []
"""Messages taken off their queue whose record as unacknowledged failed: (payload, exchange, routing key)."""
os.register_at_fork(after_in_child=_POPPED.clear)  # the parent puts them back, not each pool process


class QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        try:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]
        except self.channel.connection_errors:
            info = message.delivery_info
            _POPPED.append((message._raw, info["exchange"], info["routing_key"]))
            raise


class Channel(kombu_redis.Channel):
    # A refused or missing password is one error that says where and what to set (cascade.broker.connections).
    connection_class = connections.Connection
    connection_class_ssl = connections.SSLConnection
    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._cascade_connparams: dict[bool, dict[str, Any]] = {}
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._connparams(asynchronous=False)  # remembered while the connection is there
        while _POPPED:  # Redis answers again (the channel pinged it)
            payload, exchange, routing_key = _POPPED[0]
            with self.conn_or_acquire() as client, client.pipeline() as pipe:
                self._do_restore_message(payload, exchange, routing_key, pipe)  # type: ignore[no-untyped-call]
                pipe.execute()
            _POPPED.pop(0)
            logger.warning("put back on its queue a message taken off it as Redis went away: %s", routing_key)

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        connection = self.connection
        if connection is not None and connection.client is not None:
            params = super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]
            self._cascade_connparams[asynchronous] = params
        elif asynchronous not in self._cascade_connparams:
            raise redis.ConnectionError("the broker connection of this channel is closed")
        return dict(self._cascade_connparams[asynchronous])


class Transport(kombu_redis.Transport):
    Channel = Channel
