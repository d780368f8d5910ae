"""Cascade's HTTP API: OpenAI's Files and Batch API, so that OpenAI clients and batch files work unchanged.

Bearer tokens come from ``CASCADE_API_TOKENS`` (token=owner pairs); a caller sees only its own files and batches,
and another caller's are answered 404, like missing ones. Domain errors become HTTP errors here, at the edge, every
one as OpenAI's error object ``{"error": {"message", "type", "param", "code"}}``: a bad request 400, a missing or
wrong token 401, something missing 404, a conflict with the state of a batch or file 409, a full disk 507, anything
unexpected 500 (its traceback in the log).
"""

import hashlib
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, PROCESS_COLLECTOR, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException
from starlette.routing import Match

from cascade.broker import file_objects, keys, openapi
from cascade.broker.batches import Batch, Usage, batch_view
from cascade.broker.celery_app import app as celery_app
from cascade.broker.celery_app import configure, send_intake, send_sweep
from cascade.broker.collector import JobsCollector
from cascade.broker.file_objects import OUTPUT_EXPIRES_AFTER, File, FileDeleted
from cascade.broker.files import FileStore, StorageFullError, open_files
from cascade.broker.openapi import (
    CONFLICT,
    ERRORS,
    MAX_EXPIRES_AFTER,
    MAX_METADATA_KEY,
    MAX_METADATA_PAIRS,
    MAX_METADATA_VALUE,
    MIN_EXPIRES_AFTER,
    NOT_FOUND,
    STORAGE_FULL,
    THRESHOLD_PATTERN,
    BatchesPage,
    CreateBatch,
    FilesPage,
    tighten,
    window_pattern,
)
from cascade.broker.results import open_parts
from cascade.broker.settings import Settings, token_digest
from cascade.broker.store import RedisJobStore
from cascade.broker.submit import build_spec
from cascade.workers.errors import CascadeError, InputError, JobError, NotFoundError, SettingsError, StorageError
from cascade.workers.jobs import parse_window
from cascade.workers.lifecycle import cancel, expire_if_due

logger = logging.getLogger(__name__)

API_FIELDS = (
    "input_file_id",
    "endpoint",
    "completion_window",
    "metadata",
    "started_at",
    "expires_at",
    "cancelling_at",
    "finalizing_at",
)
THRESHOLD = "metadata.cascade_threshold"


class ParamError(InputError):
    """A request parameter is unusable: a 400 that names it (``param``)."""

    def __init__(self, param: str, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class MissingParamError(NotFoundError):
    """What a request parameter names does not exist, or is another caller's: a 404 that names it (``param``)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class UnauthorizedError(Exception):
    """No bearer token, or not one of ``CASCADE_API_TOKENS``."""


class ConflictError(JobError):
    """What was asked conflicts with the state of what it is about (a batch that has ended cannot be cancelled, a
    file that a batch still reads cannot be deleted): a 409."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _error(
    status: int, message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> JSONResponse:
    """OpenAI's error object."""
    error = {"message": message, "type": kind, "param": param, "code": code}
    return JSONResponse(status_code=status, content={"error": error})


@dataclass(frozen=True)
class Context:
    """What the endpoints share: built once by ``create_app``, kept on ``app.state``."""

    settings: Settings
    tokens: tuple[tuple[bytes, str], ...]
    """Each token's SHA-256 and its owner."""
    store: RedisJobStore
    files: FileStore
    registry: CollectorRegistry
    window: str
    """The completion windows a batch may have (``openapi.window_pattern`` of ``CASCADE_JOB_TTL``)."""

    def owned_job(self, job_id: str, owner: str) -> None:
        (found,) = self.store.fields(job_id, "owner")
        if found != owner:
            raise NotFoundError(f"no batch {job_id!r}")

    def view(self, job_id: str) -> Batch:
        expire_if_due(self.store, self.sweep, job_id)  # a job past its window ends when next looked at
        values = self.store.fields(job_id, *API_FIELDS)
        job = self.store.get(job_id)
        usage = self._usage(job_id) if job.status.is_final else None
        return batch_view(job, dict(zip(API_FIELDS, values, strict=True)), usage)

    def _usage(self, job_id: str) -> Usage | None:
        """None when the result store cannot give the records now: the batch is shown all the same."""
        try:
            return file_objects.usage(self.store, job_id)
        except StorageError as e:
            logger.warning("the usage of batch %s is unknown for now: %s", job_id, e)
            return None

    def file(self, file_id: str, owner: str) -> File:
        if file_objects.is_batch_file(file_id):
            return file_objects.batch_file(self.store, file_id, owner)
        return file_objects.upload_object(self.files.get(file_id, owner), self.files.expires_at(file_id))

    @staticmethod
    def sweep(job_id: str) -> None:
        send_sweep(celery_app, job_id)


def _context(request: Request) -> Context:
    ctx: Context = request.app.state.cascade
    return ctx


_bearer = HTTPBearer(auto_error=False)


def _owner_of(tokens: tuple[tuple[bytes, str], ...], presented: str) -> str:
    """The owner of the presented token, or "" (no one). Every token is compared, in constant time and at the same
    length (their digests), so the time taken tells neither which token matched nor how much of one. The presented
    token is hashed as it is, never read as a ``sha256:`` digest: knowing a hashed token does not let one in."""
    digest = hashlib.sha256(presented.encode()).digest()
    owner = ""
    for token, candidate in tokens:
        if secrets.compare_digest(digest, token):
            owner = candidate
    return owner


def _caller(
    ctx: Annotated[Context, Depends(_context)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The caller's owner name; never "" (the owner of the CLI's jobs, which no token has)."""
    owner = _owner_of(ctx.tokens, credentials.credentials) if credentials is not None else ""
    if not owner:
        raise UnauthorizedError("a valid API key is required: Authorization: Bearer TOKEN, one of CASCADE_API_TOKENS")
    return owner


Ctx = Annotated[Context, Depends(_context)]
Owner = Annotated[str, Depends(_caller)]
router = APIRouter(prefix="/v1", responses=ERRORS)
metrics_router = APIRouter()


ANCHOR, SECONDS = openapi.EXPIRES_ANCHOR, openapi.EXPIRES_SECONDS


@router.post("/files", responses=STORAGE_FULL)
async def upload(
    request: Request,
    ctx: Ctx,
    owner: Owner,
    file: UploadFile,
    purpose: Annotated[Literal["batch"], Form()],
    anchor: Annotated[Literal["created_at"] | None, Form(alias=ANCHOR)] = None,
    seconds: Annotated[int | None, Form(alias=SECONDS, ge=MIN_EXPIRES_AFTER, le=MAX_EXPIRES_AFTER)] = None,
) -> File:
    """Purpose ``batch`` only. OpenAI's ``expires_after`` (anchor ``created_at``, 1 hour to 30 days) shortens the file's
    retention (``CASCADE_FILE_RETENTION``)."""
    form = await request.form()  # FastAPI reads an empty field as an absent one: it is refused instead
    if empty := [name for name in (ANCHOR, SECONDS) if form.get(name) == ""]:
        raise ParamError(_param(empty[:1]) or "", f"{empty[0]} is empty: give a value, or leave the field out")
    if (anchor is None) != (seconds is None):  # OpenAI's expires_after is both fields or neither
        missing = SECONDS if seconds is None else ANCHOR
        raise ParamError(_param([missing]) or "", f"{missing} is missing: expires_after takes both anchor and seconds")

    async def chunks() -> AsyncIterator[bytes]:
        while block := await file.read(1 << 20):
            yield block

    meta = await ctx.files.save(owner, file.filename or "input.jsonl", purpose, chunks(), retention=seconds)
    return file_objects.upload_object(meta, ctx.files.expires_at(meta.id))


MAX_FILES_PAGE = 10_000
"""OpenAI's bound on a files listing's ``limit``, and its default."""


@router.get("/files", responses=NOT_FOUND)
def list_files(
    ctx: Ctx,
    owner: Owner,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_FILES_PAGE)] = MAX_FILES_PAGE,
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> FilesPage:
    """The caller's uploads and its batches' output and error files, by ``created_at`` (then id). An ``after`` that is
    none of the caller's files: 404."""
    every = file_objects.listing(ctx.files, ctx.store, owner, newest_first=order == "desc")
    ids = [f.id for f in every]
    if after is not None and after not in ids:
        raise MissingParamError("after", f"no file {after!r}: after must be one of yours (the last_id of a page)")
    start = ids.index(after) + 1 if after is not None else 0
    matching = [f for f in every[start:] if purpose is None or f.purpose == purpose]
    data = [file for f in matching[:limit] if (file := _file_if_kept(ctx, f.id, owner)) is not None]
    first, last = (data[0].id, data[-1].id) if data else (None, None)
    return FilesPage(data=data, first_id=first, last_id=last, has_more=len(matching) > limit)


def _file_if_kept(ctx: Context, file_id: str, owner: str) -> File | None:
    """The file, or None when it went (expired, deleted) since it was listed."""
    try:
        return ctx.file(file_id, owner)
    except NotFoundError:
        return None


@router.get("/files/{file_id}", responses=NOT_FOUND)
def file_info(ctx: Ctx, owner: Owner, file_id: str) -> File:
    return ctx.file(file_id, owner)


@router.delete("/files/{file_id}", responses=NOT_FOUND | CONFLICT)
def delete_file(ctx: Ctx, owner: Owner, file_id: str) -> FileDeleted:
    """An upload: content and metadata deleted now; refused (409) while a batch is still reading it (it has not
    ended and its intake has not finished). A batch's output or error file: hidden at once (``file_objects``)."""
    if file_objects.is_batch_file(file_id):
        file_objects.delete_batch_file(ctx.store, file_id, owner)
        return FileDeleted(id=file_id)
    ctx.files.get(file_id, owner)
    if reading := file_objects.still_reading(ctx.files, ctx.store, file_id):
        message = f"batch {reading[0]!r} is still reading file {file_id!r}: delete it once the batch is in_progress"
        raise ConflictError(message, code="file_in_use")
    ctx.files.delete(file_id)
    return FileDeleted(id=file_id)


class JSONLResponse(StreamingResponse):
    """A file's content, streamed: JSON Lines."""

    media_type = "application/jsonl"


BLOCK_BYTES = 1 << 16
"""What a streamed file's lines are gathered into: each block is one hand-off from the thread that reads the
records to the event loop that sends them, which per line cost more than the line (~8,000 lines/s)."""


def in_blocks(lines: Iterable[str | bytes]) -> Iterator[bytes]:
    """``lines`` (or chunks of a file) joined into blocks of at least ``BLOCK_BYTES``, in order."""
    block: list[bytes] = []
    size = 0
    for line in lines:
        data = line.encode() if isinstance(line, str) else line
        block.append(data)
        size += len(data)
        if size >= BLOCK_BYTES:
            yield b"".join(block)
            block, size = [], 0
    if block:
        yield b"".join(block)


@router.get("/files/{file_id}/content", response_class=JSONLResponse, responses=NOT_FOUND)
def file_content(ctx: Ctx, owner: Owner, file_id: str) -> JSONLResponse:
    if file_objects.is_batch_file(file_id):
        return JSONLResponse(in_blocks(file_objects.batch_file_lines(ctx.store, file_id, owner)))
    ctx.files.get(file_id, owner)
    if not ctx.files.exists(file_id):  # its metadata outlived it (removed by hand, or another files store)
        raise NotFoundError(f"no file {file_id!r}: its content is gone")
    return JSONLResponse(ctx.files.content(file_id))  # read in blocks of a MiB already


@router.post("/batches", responses=NOT_FOUND)
def create_batch(ctx: Ctx, owner: Owner, body: CreateBatch) -> Batch:
    """The batch is created validating; a specialist worker reads its input file (the intake task). Its ``endpoint``
    must be ``/v1/chat/completions`` (400 otherwise); an ``input_file_id`` that is none of the caller's files: 404."""
    if re.search(ctx.window, body.completion_window) is None:
        message = f"completion_window {body.completion_window!r}: expected 1s to {ctx.settings.job_ttl}s, as 24h or 90m"
        raise ParamError("completion_window", message)
    try:
        window = parse_window(body.completion_window, ctx.settings.job_ttl)
    except InputError as e:
        raise ParamError("completion_window", str(e)) from e
    metadata = body.metadata or {}
    _check_metadata(metadata)
    keep = body.output_expires_after.seconds if body.output_expires_after else None
    settings = ctx.settings
    threshold = _threshold(metadata, settings.threshold)
    try:
        ctx.files.get(body.input_file_id, owner)
    except NotFoundError as e:
        raise MissingParamError("input_file_id", str(e)) from e
    spec = build_spec(
        settings,
        Path(settings.model_dir),
        threshold=threshold,
        policy_file=Path(settings.policy_file) if settings.policy_file else None,
    )
    extra = {
        "input_file_id": body.input_file_id,
        "endpoint": body.endpoint,
        "completion_window": body.completion_window,
        "metadata": json.dumps(metadata),
    }
    if keep is not None:
        extra[OUTPUT_EXPIRES_AFTER] = str(keep)
    job_id = ctx.store.create(spec, owner=owner, extra=extra, window=window)
    ctx.files.use(body.input_file_id, job_id)  # kept until its retention has passed after the batch's end
    send_intake(celery_app, job_id, body.input_file_id)
    return ctx.view(job_id)


def _check_metadata(metadata: dict[str, str]) -> None:
    """OpenAI's limits: at most 16 pairs, keys of at most 64 characters, values of at most 512."""
    if len(metadata) > MAX_METADATA_PAIRS:
        raise ParamError("metadata", f"metadata has {len(metadata)} pairs; at most {MAX_METADATA_PAIRS} are allowed")
    for n, (key, value) in enumerate(metadata.items(), start=1):
        if len(key) > MAX_METADATA_KEY:
            raise ParamError("metadata", f"metadata key {n} is {len(key)} characters long; at most {MAX_METADATA_KEY}")
        if len(value) > MAX_METADATA_VALUE:
            raise ParamError(
                "metadata", f"metadata value of {key!r} is {len(value)} characters long; at most {MAX_METADATA_VALUE}"
            )


def _threshold(metadata: dict[str, str], default: float) -> float:
    """``metadata.cascade_threshold`` (a decimal number from 0 to 1: ``0.85``, not ``.85`` nor ``nan``), or the
    default."""
    raw = metadata.get("cascade_threshold")
    if raw is None:
        return default
    if re.search(THRESHOLD_PATTERN, raw) is None:
        shown = raw if len(raw) <= MAX_METADATA_KEY else raw[:MAX_METADATA_KEY] + "…"
        message = f"{THRESHOLD} must be a decimal number between 0 and 1, such as 0.85, not {shown!r}"
        raise ParamError(THRESHOLD, message)
    return float(raw)


@router.get("/batches/{batch_id}", responses=NOT_FOUND)
def get_batch(ctx: Ctx, owner: Owner, batch_id: str) -> Batch:
    ctx.owned_job(batch_id, owner)
    return ctx.view(batch_id)


@router.get("/batches", responses=NOT_FOUND)
def list_batches(
    ctx: Ctx, owner: Owner, limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None
) -> BatchesPage:
    """Newest first. An ``after`` that is none of the caller's batches: 404."""
    if after is not None and ctx.store.redis.zscore(keys.owner(owner), after) is None:
        raise MissingParamError("after", f"no batch {after!r}: after must be one of yours (the last_id of a page)")
    ids = ctx.store.owned_ids(owner, limit=limit + 1, after=after)
    data = [batch for i in ids[:limit] if (batch := _view_if_kept(ctx, i)) is not None]
    first, last = (data[0].id, data[-1].id) if data else (None, None)
    return BatchesPage(data=data, first_id=first, last_id=last, has_more=len(ids) > limit)


def _view_if_kept(ctx: Context, job_id: str) -> Batch | None:
    """The batch, or None when its keys expired since it was listed."""
    try:
        return ctx.view(job_id)
    except NotFoundError:
        return None


@router.post("/batches/{batch_id}/cancel", responses=NOT_FOUND | CONFLICT)
def cancel_batch(ctx: Ctx, owner: Owner, batch_id: str) -> Batch:
    """A batch already cancelling is answered as it is; one that has ended (or is expiring) cannot be: 409."""
    ctx.owned_job(batch_id, owner)
    if not cancel(ctx.store, ctx.sweep, batch_id):
        status = ctx.store.status(batch_id).value
        raise ConflictError(f"cannot cancel a batch with status {status!r}", code="batch_not_cancellable")
    return ctx.view(batch_id)


def _scraper(ctx: Ctx, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """With ``CASCADE_METRICS_TOKEN`` set, /metrics answers only that bearer token (Prometheus' ``authorization``),
    compared in constant time and at the same length (their digests); without it, anyone."""
    expected = ctx.settings.metrics_token.get_secret_value()
    if not expected:
        return
    presented = credentials.credentials if credentials is not None else ""
    digests = (hashlib.sha256(token.encode()).digest() for token in (presented, expected))
    if not secrets.compare_digest(*digests):
        raise UnauthorizedError("a valid metrics token is required: Authorization: Bearer CASCADE_METRICS_TOKEN")


@metrics_router.get("/metrics", include_in_schema=False, dependencies=[Depends(_scraper)])
def metrics(ctx: Ctx) -> Response:
    """Prometheus: jobs by status and queue lengths (from Redis), and this process's own metrics."""
    return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE_LATEST)


@metrics_router.get("/health", include_in_schema=False)
def health(ctx: Ctx) -> dict[str, str]:
    """Readiness (Kubernetes' probe, deploy/): ok once Redis answers; an error status while it does not."""
    ctx.store.redis.ping()
    return {"status": "ok"}


async def _unauthorized(_: Request, e: Exception) -> JSONResponse:
    response = _error(401, str(e), code="invalid_api_key")
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


async def _not_found(_: Request, e: Exception) -> JSONResponse:
    return _error(404, str(e), param=getattr(e, "param", None))


async def _conflict(_: Request, e: Exception) -> JSONResponse:
    return _error(409, str(e), code=getattr(e, "code", None))


async def _storage_full(_: Request, e: Exception) -> JSONResponse:
    return _error(507, str(e), "server_error", code="insufficient_storage")


async def _bad_request(_: Request, e: Exception) -> JSONResponse:
    """Any other CascadeError (bad input, a model or setting that cannot serve the request): 400."""
    return _error(400, str(e), param=getattr(e, "param", None), code=getattr(e, "code", None))


async def _http_error(request: Request, e: Exception) -> JSONResponse:
    """Starlette's own: no such route (404); a method not allowed (405), its ``Allow`` header naming every method of
    the path (Starlette's names those of the first route only: FastAPI makes a route per method)."""
    if not isinstance(e, HTTPException):
        return _error(500, "error", "server_error")
    response = _error(e.status_code, str(e.detail))
    response.headers.update(e.headers or {})
    if e.status_code == 405:
        routes = [r for r in (*router.routes, *metrics_router.routes) if isinstance(r, APIRoute)]
        methods = {m for r in routes if r.matches(request.scope)[0] is Match.PARTIAL for m in r.methods or ()}
        response.headers["Allow"] = ", ".join(sorted(methods))
    return response


_LOCATIONS = {"body", "query", "path", "header", "cookie"}


def _param(loc: Sequence[int | str]) -> str | None:
    """The parameter a validation error is about, dotted (``metadata.key``, ``expires_after.seconds`` for the form
    field ``expires_after[seconds]``); a long part (a key) is left out."""
    parts = [re.sub(r"\[(\w+)\]", r".\1", str(p)) for p in loc if p != "[key]"]
    if parts and parts[0] in _LOCATIONS:
        parts = parts[1:]
    kept: list[str] = []
    for part in parts:
        if len(part) > MAX_METADATA_KEY:
            break
        kept.append(part)
    return ".".join(kept) or None


async def _invalid(_: Request, e: Exception) -> JSONResponse:
    """FastAPI's validation errors (422 ``{"detail": [...]}``) as OpenAI's 400, about the first error."""
    first: dict[str, Any] = e.errors()[0] if isinstance(e, RequestValidationError) and e.errors() else {}
    kind = first.get("type", "")
    if kind == "json_invalid":
        return _error(400, "the request body is not valid JSON", code="invalid_value")
    param = _param(first.get("loc", ()))
    if kind == "missing":
        return _error(
            400, f"missing required parameter {param or 'body'!r}", param=param, code="missing_required_parameter"
        )
    message = " ".join(str(first.get("msg", "invalid request")).split())
    return _error(
        400, f"invalid value for {param!r}: {message}" if param else message, param=param, code="invalid_value"
    )


async def _unexpected(request: Request, e: Exception) -> JSONResponse:
    """The last resort: a 500 in OpenAI's shape that tells nothing of the server; the traceback goes to the log."""
    logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=e)
    return _error(
        500, "the server failed on this request; the reason is in its log", "server_error", code="internal_error"
    )


def _handle_errors(api: FastAPI) -> None:
    api.add_exception_handler(UnauthorizedError, _unauthorized)
    api.add_exception_handler(NotFoundError, _not_found)
    api.add_exception_handler(ConflictError, _conflict)
    api.add_exception_handler(StorageFullError, _storage_full)
    api.add_exception_handler(CascadeError, _bad_request)
    api.add_exception_handler(RequestValidationError, _invalid)
    api.add_exception_handler(HTTPException, _http_error)
    api.add_exception_handler(Exception, _unexpected)


def create_app(settings: Settings) -> FastAPI:
    owners = settings.owners()  # a SettingsError naming the bad entry
    if not owners:
        raise SettingsError("CASCADE_API_TOKENS is empty: the API needs at least one token=owner pair")
    if not settings.model_dir:
        raise SettingsError("CASCADE_MODEL_DIR is empty: the API's batches need a specialist model folder")
    store = RedisJobStore.from_url(settings.redis_url, settings.job_ttl, open_parts(settings))
    configure(celery_app, settings)
    api = FastAPI(title="Cascade Batch API", version="1", description=__doc__)
    registry = CollectorRegistry()
    registry.register(JobsCollector(store))
    registry.register(PROCESS_COLLECTOR)
    files = open_files(store.redis, settings)
    tokens = tuple((token_digest(token), owner) for token, owner in owners.items())
    window = window_pattern(settings.job_ttl)
    api.state.cascade = Context(settings, tokens, store, files, registry, window)
    _handle_errors(api)
    api.include_router(router)
    api.include_router(metrics_router)
    tighten(api, window)
    return api
