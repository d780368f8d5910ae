"""Cascade's HTTP API: OpenAI's Files and Batch API, so that OpenAI clients and batch files work unchanged.

Bearer tokens come from ``CASCADE_API_TOKENS`` (token=owner pairs); a caller sees only its own files and batches,
and another caller's are answered 404, like missing ones. Domain errors become HTTP errors here, at the edge.
"""

import json
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, PROCESS_COLLECTOR, CollectorRegistry, generate_latest
from pydantic import BaseModel

from cascade.broker.batches import ERRORS_PREFIX, OUTPUT_PREFIX, Batch, batch_view, error_line, output_line
from cascade.broker.celery_app import app as celery_app
from cascade.broker.celery_app import configure, send_intake, send_sweep
from cascade.broker.collector import JobsCollector
from cascade.broker.files import FileObject, FileStore
from cascade.broker.intake import ENDPOINT
from cascade.broker.settings import Settings
from cascade.broker.store import RedisJobStore
from cascade.broker.submit import build_spec
from cascade.workers.errors import CascadeError, InputError, NotFoundError, SettingsError
from cascade.workers.lifecycle import cancel, expire_if_due, parse_window

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


class CreateBatch(BaseModel):
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind}})


@dataclass(frozen=True)
class Context:
    """What the endpoints share: built once by ``create_app``, kept on ``app.state``."""

    settings: Settings
    owners: dict[str, str]
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


def _caller(
    ctx: Annotated[Context, Depends(_context)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    if credentials is not None:
        for token, owner in ctx.owners.items():
            if secrets.compare_digest(credentials.credentials.encode(), token.encode()):
                return owner
    raise HTTPException(status_code=401, detail="a valid bearer token is required")


Ctx = Annotated[Context, Depends(_context)]
Owner = Annotated[str, Depends(_caller)]
router = APIRouter(prefix="/v1")
metrics_router = APIRouter()


@router.post("/files")
async def upload(ctx: Ctx, owner: Owner, file: UploadFile, purpose: Annotated[str, Form()]) -> FileObject:
    if purpose != "batch":
        raise InputError(f"purpose must be 'batch', not {purpose!r}")

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
    return FileResponse(ctx.files.path(file_id), media_type="application/jsonl")


@router.post("/batches")
def create_batch(ctx: Ctx, owner: Owner, body: CreateBatch) -> Batch:
    """The batch is created validating; a specialist worker reads its input file (the intake task)."""
    if body.endpoint != ENDPOINT:
        raise InputError(f"endpoint must be {ENDPOINT}, not {body.endpoint!r}")
    window = parse_window(body.completion_window, ctx.settings.job_ttl)
    ctx.files.get(body.input_file_id, owner)
    metadata = body.metadata or {}
    settings = ctx.settings
    try:
        threshold = float(metadata.get("cascade_threshold", settings.threshold))
    except ValueError as e:
        raise InputError(f"metadata.cascade_threshold must be a number ({e})") from e
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


@router.get("/batches/{batch_id}")
def get_batch(ctx: Ctx, owner: Owner, batch_id: str) -> Batch:
    ctx.owned_job(batch_id, owner)
    return ctx.view(batch_id)


@router.get("/batches")
def list_batches(ctx: Ctx, owner: Owner, limit: int = 20, after: str | None = None) -> dict[str, Any]:
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


async def _not_found(_: Request, e: Exception) -> JSONResponse:
    return _error(404, str(e), "invalid_request_error")


async def _bad_request(_: Request, e: Exception) -> JSONResponse:
    return _error(400, str(e), "invalid_request_error")


def create_app(settings: Settings) -> FastAPI:
    owners = settings.owners()
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
    api.state.cascade = Context(settings, owners, store, files, registry)
    api.add_exception_handler(NotFoundError, _not_found)
    api.add_exception_handler(CascadeError, _bad_request)
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
