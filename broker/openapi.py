"""The Batch API's contract: its request bodies, list pages and error object, and the OpenAPI document that states
them exactly, so that a request the document allows is one the API takes, and one it forbids is refused (400).
``tests/broker/test_api.py`` holds the API to it with schemathesis' checks."""

from typing import Annotated, Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic.config import JsonDict

from cascade.broker.batches import Batch
from cascade.broker.file_objects import File

MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
"""OpenAI's limits on a batch's metadata."""
MIN_EXPIRES_AFTER, MAX_EXPIRES_AFTER = 3600, 30 * 86_400
"""OpenAI's bounds on ``expires_after[seconds]`` (files) and ``output_expires_after.seconds`` (batches)."""
MAX_WINDOW_CHARS = 32
THRESHOLD_PATTERN = r"^(0(\.[0-9]+)?|1(\.0+)?)$"
"""``metadata.cascade_threshold``: a decimal number from 0 to 1 (``0``, ``0.85``, ``1.0``). Checked with ``re.search``,
as JSON Schema validators read ``pattern``."""


class ErrorObject(BaseModel):
    message: str
    type: str
    """``invalid_request_error`` for a 4xx, ``server_error`` for a 5xx."""
    param: str | None
    """The request parameter at fault (dotted: ``output_expires_after.seconds``), if one is."""
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error object: the body of every error the API answers."""

    error: ErrorObject


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


Responses = dict[int | str, dict[str, Any]]
"""FastAPI's ``responses``: status code → the response's description and model."""
ERRORS: Responses = {
    400: _error("A parameter is missing or invalid (named in `param`)"),
    401: _error("No bearer token, or not one of CASCADE_API_TOKENS"),
    500: _error("An unexpected failure; its traceback is in the server's log"),
}
"""The errors any call may answer."""
NOT_FOUND: Responses = {404: _error("No such file or batch of the caller's (or it expired)")}
CONFLICT: Responses = {409: _error("The request conflicts with the state of the batch or file")}
STORAGE_FULL: Responses = {507: _error("The disk under CASCADE_FILES_DIR is full")}


def _whole(value: object) -> object:
    """A float without fraction as the integer it is (JSON Schema's ``integer`` takes ``3600.0``); the rest as it is,
    for the strict check (so ``true`` and ``"3600"`` are refused)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


WholeNumber = Annotated[int, BeforeValidator(_whole)]


class ExpiresAfter(BaseModel):
    """OpenAI's ``output_expires_after``: ``seconds`` after the anchor, the files' creation (the batch's end)."""

    model_config = ConfigDict(strict=True)

    anchor: Literal["created_at"]
    seconds: WholeNumber = Field(ge=MIN_EXPIRES_AFTER, le=MAX_EXPIRES_AFTER)


METADATA_SCHEMA: JsonDict = {
    "type": "object",
    "maxProperties": MAX_METADATA_PAIRS,
    "propertyNames": {"maxLength": MAX_METADATA_KEY},
    "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE},
    "properties": {"cascade_threshold": {"type": "string", "pattern": THRESHOLD_PATTERN}},
}
"""What ``api._check_metadata`` and ``api._threshold`` enforce, with messages of their own."""


class CreateBatch(BaseModel):
    """The body of ``POST /v1/batches``. Strict: ``"3600"`` is not a number, nor ``true`` one."""

    model_config = ConfigDict(strict=True)

    input_file_id: str
    endpoint: Literal["/v1/chat/completions"]
    """The only endpoint served: ``/v1/responses``, ``/v1/embeddings`` and the others are refused (400)."""
    completion_window: str = Field(default="24h", max_length=MAX_WINDOW_CHARS)
    """A duration (``24h``, ``90m``, ``30s``) up to ``CASCADE_JOB_TTL``: the app's ``window_pattern``."""
    metadata: Annotated[dict[str, str], WithJsonSchema(METADATA_SCHEMA)] | None = None
    output_expires_after: ExpiresAfter | None = None


class FilesPage(BaseModel):
    """OpenAI's page of a list: the SDK pages on with ``after`` = ``last_id`` while ``has_more``."""

    object: Literal["list"] = "list"
    data: list[File]
    first_id: str | None
    last_id: str | None
    has_more: bool


class BatchesPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[Batch]
    first_id: str | None
    last_id: str | None
    has_more: bool


def _up_to(n: int) -> str:
    """A regular expression for the integers from 1 to ``n`` (ASCII digits, no leading zero)."""
    digits = str(n)
    parts = [f"[1-9][0-9]{{0,{len(digits) - 2}}}"] if len(digits) > 1 else []
    for i, d in enumerate(digits):
        low = 1 if i == 0 else 0
        if int(d) > low:
            parts.append(f"{digits[:i]}[{low}-{int(d) - 1}][0-9]{{{len(digits) - i - 1}}}")
    return "|".join([*parts, digits])


_UNITS = ((1, "s"), (60, "m"), (3600, "h"))


def window_pattern(max_seconds: int) -> str:
    """The completion windows from 1 s to ``max_seconds`` (``CASCADE_JOB_TTL``): a number of seconds, minutes or hours
    (leading zeros allowed), with spaces or tabs around it. What ``parse_window`` reads, and no more."""
    units = [f"({_up_to(max_seconds // size)}){unit}" for size, unit in _UNITS if max_seconds >= size]
    return r"^[ \t]*0*(" + "|".join(units) + r")[ \t]*$"


EXPIRES_ANCHOR, EXPIRES_SECONDS = "expires_after[anchor]", "expires_after[seconds]"
"""The upload form's ``expires_after`` fields."""


def tighten(api: FastAPI, window: str) -> None:
    """The app's OpenAPI document, as FastAPI writes it, less FastAPI's 422 (its validation errors are answered 400,
    in OpenAI's shape), every error as JSON, and ``completion_window``'s pattern for this ``CASCADE_JOB_TTL``."""
    generate = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is not None:
            return api.openapi_schema
        document = generate()
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        for operations in document["paths"].values():
            for operation in operations.values():
                responses = operation["responses"]
                responses.pop("422", None)
                for status in responses:
                    if int(status) >= 400:  # JSON, even where the success is not (a file's content)
                        responses[status]["content"] = error
        schemas = document["components"]["schemas"]
        _no_null_in_forms(document["paths"], schemas)
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        schemas["CreateBatch"]["properties"]["completion_window"]["pattern"] = window
        upload = schemas["Body_upload_v1_files_post"]  # OpenAI's expires_after: both of its fields, or neither
        upload["dependentRequired"] = {EXPIRES_ANCHOR: [EXPIRES_SECONDS], EXPIRES_SECONDS: [EXPIRES_ANCHOR]}
        return document

    api.openapi = openapi  # type: ignore[method-assign]


def _no_null_in_forms(paths: dict[str, Any], schemas: dict[str, Any]) -> None:
    """A form field is sent or not, never null: FastAPI's ``anyOf [type, null]`` of an optional one becomes the type
    (an absent field takes its default)."""
    for operations in paths.values():
        for operation in operations.values():
            form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            if form is None:
                continue
            body = schemas[form["schema"]["$ref"].rsplit("/", 1)[-1]]
            for name, field in body["properties"].items():
                kept = [branch for branch in field.get("anyOf", ()) if branch != {"type": "null"}]
                if len(kept) == 1 and len(field["anyOf"]) == 2:
                    rest = {k: v for k, v in field.items() if k != "anyOf" and not (k == "default" and v is None)}
                    body["properties"][name] = kept[0] | rest
