"""The HTTP side of `wan-agent serve`: OpenAI's video routes (``/v1/videos``), ``/health`` and ``/metrics``.

Every error is in OpenAI's shape (agent/serve/protocol.py) with the status the SDK maps to its exceptions: 400 bad
input, 401 API key, 404 unknown id or route, 429 queue full; never FastAPI's 422 ``{"detail": ...}``. With an API key,
each /v1 route needs ``Authorization: Bearer KEY``; /health and /metrics stay open. Video objects carry the
``openai-poll-after-ms`` header the SDK's ``create_and_poll`` waits by.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from agent.serve import protocol
from agent.serve.engine import Engine, JobRequest, QueueFull, Unavailable
from agent.serve.jobs import FINISHED, JobStore, new_id
from agent.serve.metrics import CONTENT_TYPE, ServeMetrics
from agent.serve.protocol import ApiError, bad_request

logger = logging.getLogger(__name__)
CHALLENGE = {"www-authenticate": "Bearer"}


def _error(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return _error(ApiError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None))

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        said = "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors())
        first = exc.errors()[0]["loc"][-1] if exc.errors() else None
        return _error(bad_request(said, str(first) if first is not None else None))

    async def crashed(request: Request, exc: Exception) -> Response:  # Starlette re-raises it after: uvicorn logs it
        return _error(ApiError(500, f"internal error ({type(exc).__name__}); the server's log has the details"))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, crashed)


def _key_check(api_key: str | None):
    def check(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "no API key: send the header 'Authorization: Bearer KEY'", code="invalid_api_key",
                           headers=CHALLENGE)  # fmt: skip
        if not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise ApiError(401, "incorrect API key", code="invalid_api_key", headers=CHALLENGE)

    return check


async def _fields(request: Request) -> dict[str, Any]:
    """The create request's fields, from multipart or urlencoded form data (what the SDK sends) or a JSON object."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            body = await request.json()
        except ValueError as err:
            raise bad_request(f"the body is not JSON: {err}") from None
        if not isinstance(body, dict):
            raise bad_request("the JSON body must be an object of fields (prompt, size, seconds, ...)")
        return body
    if kind not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise bad_request(f"send multipart/form-data or application/json, not {kind or 'no Content-Type'}")
    async with request.form() as form:
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile) and not key.startswith("input_reference"):
                raise bad_request(f"{key}: a file where text was expected", key)
            fields[key] = value if isinstance(value, str) else "(a file)"
        return fields


def _job_request(job_id: str, clip: protocol.Clip, store: JobStore) -> JobRequest:
    return JobRequest(
        id=job_id, prompt=clip.prompt, negative_prompt=clip.negative_prompt, width=clip.width, height=clip.height,
        frames=clip.frames, fps=clip.fps, seed=clip.seed, steps=clip.steps, guidance_scale=clip.guidance_scale,
        guidance_scale_2=clip.guidance_scale_2, flow_shift=clip.flow_shift, output=str(store.video_path(job_id)),
    )  # fmt: skip


def create_app(engine: Engine, store: JobStore, api_key: str | None, poll_after_ms: int = 1000) -> FastAPI:
    """The app serving ``engine``'s converged configuration, jobs kept in ``store``. Its lifespan starts the engine
    (the worker loads in the background: /health says when it is ready) and stops it on shutdown."""
    defaults = engine.defaults()
    metrics = ServeMetrics(engine, store)
    poll_header = {"openai-poll-after-ms": str(poll_after_ms)}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        await run_in_threadpool(engine.stop)

    app = FastAPI(title="wan-agent serve", lifespan=lifespan)
    _install_error_handlers(app)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(_key_check(api_key))])

    def known(video_id: str) -> dict:
        job = store.get(video_id)
        if job is None:
            raise ApiError(404, f"no video {video_id!r}", param="video_id", code="not_found")
        return job

    def submit(clip: protocol.Clip) -> dict:
        job_id = new_id()
        request = _job_request(job_id, clip, store)
        job = store.add(job_id, {"model": defaults["model"], "prompt": clip.prompt, "seconds": clip.seconds,
                                 "size": clip.size, "request": asdict(request)})  # fmt: skip
        try:
            engine.submit(request)
        except Unavailable as err:
            store.discard(job_id)
            raise ApiError(503, f"no GPU worker can take jobs ({err}); see /health, then restart the server",
                           code="service_unavailable") from None  # fmt: skip
        except QueueFull as err:
            store.discard(job_id)
            raise ApiError(429, f"the queue is full ({err}); retry once a job has finished", code="queue_full",
                           headers={"retry-after": str(max(1, poll_after_ms // 1000))}) from None  # fmt: skip
        except BaseException:
            store.discard(job_id)
            raise
        logger.info("job %s queued: %s, %d frames at %d fps", job_id, clip.size, clip.frames, clip.fps)
        return store.get(job_id) or job

    @v1.post("/videos")
    async def create_video(request: Request) -> JSONResponse:
        clip = protocol.parse_create(await _fields(request), engine.defaults())  # the sides' multiple, once loaded
        job = await run_in_threadpool(submit, clip)
        return JSONResponse(protocol.video_object(job), headers=poll_header)

    @v1.get("/videos")
    def list_videos(after: str | None = None, limit: int = Query(20, ge=1, le=100),
                    order: Literal["asc", "desc"] = "desc") -> dict:  # fmt: skip
        try:
            jobs, has_more = store.page(after, limit, order)
        except KeyError:
            raise ApiError(404, f"after={after!r} names no video", param="after", code="not_found") from None
        return protocol.video_list(jobs, has_more)

    @v1.get("/videos/{video_id}")
    def retrieve_video(video_id: str) -> JSONResponse:
        return JSONResponse(protocol.video_object(known(video_id)), headers=poll_header)

    @v1.get("/videos/{video_id}/content")
    def video_content(video_id: str, variant: str = "video") -> FileResponse:
        job = known(video_id)
        if variant != "video":
            raise bad_request(f"variant {variant!r}: this server makes only the video (variant=video)", "variant")
        if job["status"] != "completed":
            said = f"it failed: {job['error']['message']}" if job["status"] == "failed" else f"it is {job['status']}"
            raise bad_request(f"video {video_id} has no content: {said}", "video_id", "video_not_ready")
        path = store.video_path(video_id)
        if not path.is_file():
            raise ApiError(404, f"video {video_id}'s file is gone from {store.videos_dir}", param="video_id", code="not_found")
        return FileResponse(path, media_type="video/mp4", filename=f"{video_id}.mp4")

    @v1.delete("/videos/{video_id}")
    def delete_video(video_id: str) -> dict:
        job = known(video_id)
        cancelled = job["status"] == "queued" and engine.cancel(video_id)
        # A job the worker is generating cannot be stopped midway: it is marked, gone from every answer at once, and
        # its files are removed when it finishes (no 409, which the SDK would retry).
        if not store.delete(video_id, generating=job["status"] not in FINISHED and not cancelled):
            logger.info("job %s deleted while generating: removed when it finishes", video_id)
        return protocol.video_deleted(video_id)

    @app.get("/health")
    def health() -> JSONResponse:
        ready, why = engine.ready()
        body = {"status": "ready" if ready else "not ready", "reason": why, "queue_depth": engine.depth(),
                "running": engine.running(), "model": defaults["model"]}  # fmt: skip
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.include_router(v1)
    return app
