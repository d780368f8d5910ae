"""Cascade's HTTP API: OpenAI's Files and Batch API, so that OpenAI clients and batch files work unchanged.

Bearer tokens come from ``CASCADE_API_TOKENS`` (token=owner pairs); a caller sees only its own files and batches,
and another caller's are answered 404, like missing ones. Domain errors become HTTP errors here, at the edge, every
one as OpenAI's error object ``{"error": {"message", "type", "param", "code"}}``: a bad request 400, a missing or
wrong token 401, something missing 404, a full disk 507, anything unexpected 500 (its traceback in the log).
"""

import hashlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, PROCESS_COLLECTOR, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from cascade.broker.batches import ERRORS_PREFIX, OUTPUT_PREFIX, Batch, batch_view, error_line, output_line
from cascade.broker.celery_app import app as celery_app
from cascade.broker.celery_app import configure, send_intake, send_sweep
from cascade.broker.collector import JobsCollector
from cascade.broker.files import FileObject, FileStore, StorageFullError
from cascade.broker.intake import ENDPOINT
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.broker.submit import build_spec
from cascade.workers.errors import CascadeError, InputError, NotFoundError, SettingsError
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


MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
"""OpenAI's limits on a batch's metadata."""
THRESHOLD = "metadata.cascade_threshold"


class CreateBatch(BaseModel):
    input_file_id: str
    endpoint: str
    completion_window: str = Field(default="24h", max_length=32)
    metadata: dict[str, str] | None = None


class ParamError(InputError):
    """A request parameter is unusable: a 400 that names it (``param``)."""

    def __init__(self, param: str, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class UnauthorizedError(Exception):
    """No bearer token, or not one of ``CASCADE_API_TOKENS``."""


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

    def owned_job(self, job_id: str, owner: str) -> None:
        (found,) = self.store.fields(job_id, "owner")
        if found != owner:
            raise NotFoundError(f"no batch {job_id!r}")

    def view(self, job_id: str) -> Batch:
        expire_if_due(self.store, self.sweep, job_id)  # a job past its window ends when next looked at
        values = self.store.fields(job_id, *API_FIELDS)
        return batch_view(self.store.get(job_id), dict(zip(API_FIELDS, values, strict=True)))

    @staticmethod
    def sweep(job_id: str) -> None:
        send_sweep(celery_app, job_id)


def _context(request: Request) -> Context:
    ctx: Context = request.app.state.cascade
    return ctx


_bearer = HTTPBearer(auto_error=False)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _owner_of(tokens: tuple[tuple[bytes, str], ...], presented: str) -> str:
    """The owner of the presented token, or "" (no one). Every token is compared, in constant time and at the same
    length (their digests), so the time taken tells neither which token matched nor how much of one."""
    digest = _digest(presented)
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
router = APIRouter(prefix="/v1")
metrics_router = APIRouter()


@router.post("/files")
async def upload(ctx: Ctx, owner: Owner, file: UploadFile, purpose: Annotated[str, Form()]) -> FileObject:
    if purpose != "batch":
        raise ParamError("purpose", "purpose must be 'batch', the only purpose this API serves")

    async def chunks() -> AsyncIterator[bytes]:
        while block := await file.read(1 << 20):
            yield block

    return await ctx.files.save(owner, file.filename or "input.jsonl", purpose, chunks())


@router.get("/files/{file_id}")
def file_info(ctx: Ctx, owner: Owner, file_id: str) -> FileObject:
    return ctx.files.get(file_id, owner)


@router.get("/files/{file_id}/content", response_model=None)
def file_content(ctx: Ctx, owner: Owner, file_id: str) -> FileResponse | StreamingResponse:
    for prefix in (OUTPUT_PREFIX, ERRORS_PREFIX):
        if file_id.startswith(prefix):
            job_id = file_id.removeprefix(prefix)
            ctx.owned_job(job_id, owner)
            if not ctx.store.status(job_id).is_final:
                raise NotFoundError(f"no file {file_id!r} yet: the batch has not ended")
            lines = _output(ctx.store, job_id) if prefix == OUTPUT_PREFIX else _errors(ctx.store, job_id)
            return StreamingResponse(lines, media_type="application/jsonl")
    ctx.files.get(file_id, owner)
    path = ctx.files.path(file_id)
    if not path.is_file():  # its metadata outlived it (removed by hand, or another files folder)
        raise NotFoundError(f"no file {file_id!r}: its content is gone")
    return FileResponse(path, media_type="application/jsonl")


@router.post("/batches")
def create_batch(ctx: Ctx, owner: Owner, body: CreateBatch) -> Batch:
    """The batch is created validating; a specialist worker reads its input file (the intake task)."""
    if body.endpoint != ENDPOINT:
        raise ParamError("endpoint", f"endpoint must be {ENDPOINT}, the only endpoint this API serves")
    try:
        window = parse_window(body.completion_window, ctx.settings.job_ttl)
    except InputError as e:
        raise ParamError("completion_window", str(e)) from e
    metadata = body.metadata or {}
    _check_metadata(metadata)
    settings = ctx.settings
    threshold = _threshold(metadata, settings.threshold)
    ctx.files.get(body.input_file_id, owner)
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
    job_id = ctx.store.create(spec, owner=owner, extra=extra, window=window)
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
    """``metadata.cascade_threshold`` (a number from 0 to 1), or the default."""
    raw = metadata.get("cascade_threshold")
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:  # nan is refused here too
        raise ParamError(THRESHOLD, f"{THRESHOLD} must be a number between 0 and 1, not {raw!r}")
    return value


@router.get("/batches/{batch_id}")
def get_batch(ctx: Ctx, owner: Owner, batch_id: str) -> Batch:
    ctx.owned_job(batch_id, owner)
    return ctx.view(batch_id)


@router.get("/batches")
def list_batches(
    ctx: Ctx, owner: Owner, limit: Annotated[int, Query(ge=1, le=100)] = 20, after: str | None = None
) -> dict[str, Any]:
    ids = ctx.store.owned_ids(owner, limit=limit + 1, after=after)
    data = [ctx.view(i) for i in ids[:limit]]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0].id if data else None,
        "last_id": data[-1].id if data else None,
        "has_more": len(ids) > limit,
    }


@router.post("/batches/{batch_id}/cancel")
def cancel_batch(ctx: Ctx, owner: Owner, batch_id: str) -> Batch:
    ctx.owned_job(batch_id, owner)
    cancel(ctx.store, ctx.sweep, batch_id)
    return ctx.view(batch_id)


@metrics_router.get("/metrics", include_in_schema=False)
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
    return _error(404, str(e))


async def _storage_full(_: Request, e: Exception) -> JSONResponse:
    return _error(507, str(e), "server_error", code="insufficient_storage")


async def _bad_request(_: Request, e: Exception) -> JSONResponse:
    """Any other CascadeError (bad input, a model or setting that cannot serve the request): 400."""
    return _error(400, str(e), param=getattr(e, "param", None), code=getattr(e, "code", None))


async def _http_error(_: Request, e: Exception) -> JSONResponse:
    """Starlette's own (no such route, method not allowed)."""
    status = e.status_code if isinstance(e, HTTPException) else 500
    return _error(status, str(e.detail) if isinstance(e, HTTPException) else "error")


_LOCATIONS = {"body", "query", "path", "header", "cookie"}


def _param(loc: Sequence[int | str]) -> str | None:
    """The parameter a validation error is about, dotted (``metadata.key``); a long part (a key) is left out."""
    parts = [str(p) for p in loc if p != "[key]"]
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
    store = RedisJobStore.from_url(settings.redis_url, settings.job_ttl)
    configure(celery_app, settings)
    api = FastAPI(title="Cascade Batch API", version="1", description=__doc__)
    registry = CollectorRegistry()
    registry.register(JobsCollector(store))
    registry.register(PROCESS_COLLECTOR)
    files = FileStore(store.redis, settings.files_dir, settings.job_ttl)
    tokens = tuple((_digest(token), owner) for token, owner in owners.items())
    api.state.cascade = Context(settings, tokens, store, files, registry)
    _handle_errors(api)
    api.include_router(router)
    api.include_router(metrics_router)
    return api


def _output(store: RedisJobStore, job_id: str) -> Iterator[str]:
    job = store.get(job_id)
    created = int(job.finished_at or job.created_at)
    for r in store.iter_results(job_id):
        yield json.dumps(output_line(job_id, job.spec.llm_model, created, r)) + "\n"


def _errors(store: RedisJobStore, job_id: str) -> Iterator[str]:
    for e in store.iter_errors(job_id):
        yield json.dumps(error_line(job_id, e)) + "\n"
