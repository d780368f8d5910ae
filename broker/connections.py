"""Cascade's Redis connections: a Redis that refuses the password, or wants one that was not given, is one error
that says which Redis (its password masked) and which setting to change, instead of redis-py's bare "invalid
username-password pair" (or, with no password, a message about HELLO). The job store, ``cascade doctor`` and the
Celery broker (``cascade.broker.redis_transport``) connect through these classes.
"""

from typing import Any
from urllib.parse import urlsplit

import redis

SETTING = "set CASCADE_REDIS_PASSWORD (or the password in CASCADE_REDIS_URL)"
"""What to change, in every authentication error."""


def where(connection: redis.Connection) -> str:
    """The Redis a connection is for, as a URL with its password, if any, as ``***``."""
    scheme = "rediss" if isinstance(connection, redis.SSLConnection) else "redis"
    user = connection.username or ""
    credentials = f"{user}:***@" if connection.password else (f"{user}@" if user else "")
    return f"{scheme}://{credentials}{connection.host}:{connection.port}/{connection.db}"


class AuthError(redis.AuthenticationError):
    """Redis refused the password, or wanted one: says where, and what to set. A ``redis.ConnectionError``, as
    redis-py's own, so that whoever handles those (the CLI: exit 6) handles it."""


def explained(connection: redis.Connection, error: redis.AuthenticationError) -> AuthError:
    if connection.password:
        return AuthError(f"Redis at {where(connection)} refused the password ({error}): {SETTING} to Redis's")
    return AuthError(f"Redis at {where(connection)} wants a password and none was given: {SETTING}")


class Connection(redis.Connection):
    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except AuthError:
            raise
        except redis.AuthenticationError as e:
            raise explained(self, e) from None  # redis-py's message is in ours


class SSLConnection(Connection, redis.SSLConnection):
    """TLS, with ``Connection``'s explained authentication errors (its ``read_response`` comes first)."""


def client(url: str, **options: Any) -> redis.Redis:
    """A redis-py client of ``url`` (``Settings.redis_url``: password and CA file included) whose authentication
    errors are explained; ``options`` as ``redis.Redis.from_url``'s."""
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss"):  # unix:// keeps redis-py's own connection class
        options["connection_class"] = SSLConnection if scheme == "rediss" else Connection
    return redis.Redis.from_url(url, **options)


__all__ = ["SETTING", "AuthError", "Connection", "SSLConnection", "client", "where"]
