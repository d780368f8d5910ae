"""Cascade's errors, all under one root.

    CascadeError
    ├── SettingsError           a setting is missing or out of range
    ├── InputError              a data file or input line is unusable (names the file, line and field)
    ├── ModelError              a model folder is missing, altered, foreign or built with other library versions
    ├── JobError                a job cannot do what was asked in its state
    │   └── NotFoundError       no such job or file (or not the caller's)
    ├── StorageError            the result store cannot be reached, or holds a part that is missing or damaged
    └── LLMError                the LLM server failed or broke its contract
        └── LLMContractError    the server does not constrain its output to the given choices

Foreign errors (redis, httpx, skops, json) are wrapped with ``raise ... from e``.
"""


class CascadeError(Exception):
    """Root of every error Cascade raises on purpose."""


class SettingsError(CascadeError):
    """A setting is missing or out of range."""


class InputError(CascadeError):
    """A data file or an input line is unusable."""


class ModelError(CascadeError):
    """A model folder is missing, altered, not written by Cascade, or built with other library versions."""


class JobError(CascadeError):
    """A job does not exist, or cannot do what was asked in its current state."""


class NotFoundError(JobError):
    """No such job or file, or one that belongs to another caller."""


class StorageError(CascadeError):
    """The result store cannot be written or read, or a committed part file is missing or fails its checksum."""


class LLMError(CascadeError):
    """The LLM server failed after its retries, or answered outside the contract."""

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind
        """timeout, connection, status_4xx, status_5xx, contract or other: the label of the error metric."""


class LLMContractError(LLMError):
    """The LLM server does not constrain its answers to the choices it was given."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="contract")
