"""Cascade: asynchronous batch classification, a cheap specialist on every item and an LLM on the unsure ones.

One import package with three parts, one dependency direction (checked by ``lint-imports``, see pyproject.toml):
the edges (``cascade.broker.cli``, ``cascade.broker.api``) → the Celery tasks (``cascade.workers.tasks``) → the
queue side (``cascade.broker``) → the compute core (``cascade.workers``) → metric declarations
(``cascade.monitoring.metrics``).
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from cascade.workers.errors import (
    CascadeError,
    InputError,
    JobError,
    LLMContractError,
    LLMError,
    ModelError,
    NotFoundError,
    SettingsError,
)
from cascade.workers.items import ErrorCode, Item, ItemError, ItemResult, Route, Tier
from cascade.workers.jobs import JobSpec, JobStatus, JobView, OnLLMError

try:
    __version__ = _version("cascade")
except _PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = [
    "CascadeError",
    "ErrorCode",
    "InputError",
    "Item",
    "ItemError",
    "ItemResult",
    "JobError",
    "JobSpec",
    "JobStatus",
    "JobView",
    "LLMContractError",
    "LLMError",
    "ModelError",
    "NotFoundError",
    "OnLLMError",
    "Route",
    "SettingsError",
    "Tier",
    "__version__",
]
