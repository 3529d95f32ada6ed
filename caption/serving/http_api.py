"""The plain HTTP API beside the page: ``POST /v1/caption``, ``/healthz``, ``/readyz`` and ``/metrics``.

``curl -F file=@photo.jpg -F beam_size=5 http://127.0.0.1:7860/v1/caption`` answers the JSON the page's
``/caption`` answers, through the same ``CaptionService``: the same validator, the same file loader, the
same batches as the page's users. Its status says what happened (``ERROR_STATUS``); an error's body is
``{"error", "error_kind"}``, never a traceback. The request body is streamed to a file of the API's own,
which holds its size of the upload budget until the request is answered, and work the server could not hold
is refused at once with 503 and ``Retry-After``. Gradio's own upload route is held to the same budget
(``GradioUploadAdmission``), so neither surface can take the space the other's accepted requests need.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from python_multipart import FormParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect

from caption.config import DecodingConfig, setting_label
from caption.errors import ErrorKind, ImageLoadError, ParameterError, ServerBusy
from caption.serving.service import CaptionService, error_answer

ERROR_STATUS = {
    ErrorKind.PARAMETER: 400,
    ErrorKind.UNAUTHORIZED: 401,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.NOT_MEDIA: 415,
    ErrorKind.WRONG_TYPE: 415,
    ErrorKind.UNSUPPORTED: 415,
    ErrorKind.SERVER: 500,
    ErrorKind.BUSY: 503,
}
DAMAGED_STATUS = 422  # every other kind: the file is what it says, but cannot be read (corrupt, empty, ...)
FORM_OVERHEAD = 64 * 1024  # a multipart body's bytes beyond its file: boundaries, headers, settings
GRADIO_UPLOAD_ROUTE = "/gradio_api/upload"


class FormError(ParameterError):
    """The request is not the form the API takes; the message says what to send."""

    def __init__(self, name: str, message: str):
        super().__init__(name, None, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class RequestRefused(Exception):
    """Answer the request with ``answer`` now (its status follows its error kind)."""

    def __init__(self, answer: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(answer["error"])
        self.answer = answer
        self.headers = headers or {}


def status_of(answer: dict[str, Any]) -> int:
    if "error" not in answer:
        return 200
    return ERROR_STATUS.get(ErrorKind(answer["error_kind"] or ErrorKind.SERVER), DAMAGED_STATUS)


def busy(err: ServerBusy) -> RequestRefused:
    return RequestRefused(error_answer(str(err), err.kind), {"Retry-After": str(err.retry_after)})


def install(app: FastAPI, service: CaptionService, token: str | None = None) -> None:
    """Add the HTTP API to ``app`` (before the page is mounted on it, so that its routes come first)."""
    if service.janitor is None:
        raise ValueError("build the page first (build_app): the API shares its upload budget")
    root = os.environ.get("GRADIO_TEMP_DIR")  # beside the page's uploads, where an operator looks for them
    if root:
        Path(root).mkdir(parents=True, exist_ok=True)
    uploads = Path(tempfile.mkdtemp(prefix="caption-http-", dir=root))
    app.router.on_shutdown.append(lambda: shutil.rmtree(uploads, ignore_errors=True))
    app.include_router(_routes(service, token, uploads))
    app.add_exception_handler(RequestRefused, _refused)
    app.add_middleware(GradioUploadAdmission, service=service)


async def _refused(request: Request, err: RequestRefused) -> JSONResponse:
    return JSONResponse(err.answer, status_of(err.answer), err.headers)


def _routes(service: CaptionService, token: str | None, uploads: Path) -> APIRouter:
    router = APIRouter()
    bearer = Depends(HTTPBearer(auto_error=False, description="The server's --api-token, if it has one"))

    def authorized(credentials: HTTPAuthorizationCredentials | None = bearer) -> None:
        if token is None:
            return
        given = credentials.credentials.encode() if credentials is not None else b""
        if not secrets.compare_digest(given, token.encode()):
            answer = error_answer("this server asks for its API token: send the header 'Authorization: "
                                  "Bearer <token>'", ErrorKind.UNAUTHORIZED)
            service.metrics.answered("http", answer)
            raise RequestRefused(answer, {"WWW-Authenticate": "Bearer"})

    @router.post("/v1/caption", dependencies=[Depends(authorized)], tags=["caption"],
                 summary="Caption one photo or video", responses=_documented_responses(),
                 openapi_extra={"requestBody": _documented_form(service)})
    async def caption(request: Request) -> JSONResponse:
        """A multipart form: the photo or video as ``file``, and any decoding setting as a field (left out:
        the model's default). Answers the caption JSON of the page's ``/caption``."""
        started = time.perf_counter()
        try:
            service.admit("http")
        except ServerBusy as err:
            refused = busy(err)
            answer, headers = refused.answer, refused.headers
        else:
            with service.counted("http"):
                try:
                    answer, headers = await _caption_request(service, request, uploads), {}
                except RequestRefused as refused:
                    answer, headers = refused.answer, refused.headers
        service.metrics.answered("http", answer, time.perf_counter() - started)
        return JSONResponse(answer, status_of(answer), headers)

    @router.get("/healthz", tags=["health"], summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", tags=["health"], summary="The model is loaded and there is room for new work",
                responses={503: {"description": "Not ready now: full, or the model stopped serving"}})
    async def readyz() -> JSONResponse:
        ready, state = service.readiness()
        headers = {} if ready else {"Retry-After": str(service.retry_after())}
        return JSONResponse({"ready": ready, **state}, 200 if ready else 503, headers)

    @router.get("/metrics", tags=["health"], summary="Prometheus metrics",
                response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(service.metrics.exposition(), media_type=service.metrics.content_type)

    return router


async def _caption_request(service: CaptionService, request: Request, uploads: Path) -> dict[str, Any]:
    limit = int(service.limits.max_file_mb * 2**20) + FORM_OVERHEAD
    length = declared_length(request.scope)
    if length is not None and length > limit:
        raise RequestRefused(error_answer(
            f"the request's {length / 2**20:.1f} MB is over the {service.limits.max_file_mb:g} MB limit",
            ErrorKind.TOO_LARGE))
    try:
        with service.janitor.reserve(length or limit):
            folder = Path(tempfile.mkdtemp(dir=uploads))
            try:
                path, name, settings = await _read_form(request, folder, limit, service.setting_names)
                return await service.caption_upload(path, name, settings)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    except ServerBusy as err:
        raise busy(err) from None
    except (ParameterError, ImageLoadError) as err:
        raise RequestRefused(error_answer(str(err), err.kind)) from None


async def _read_form(request: Request, folder: Path, limit: int,
                     setting_names: list[str]) -> tuple[str, str, dict[str, Any]]:
    """Stream a multipart body into ``folder``: (the file's path, its name as sent, the settings)."""
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise FormError("Content-Type", "the request is not a multipart/form-data form: send the file in one "
                                        "(curl -F file=@photo.jpg)")
    fields, files = [], []
    parser = FormParser("multipart/form-data", fields.append, files.append, boundary=options[b"boundary"],
                        config={"UPLOAD_DIR": str(folder), "MAX_MEMORY_FILE_SIZE": 0,
                                "UPLOAD_KEEP_EXTENSIONS": True, "UPLOAD_DELETE_TMP": False})
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise ImageLoadError("the request", f"its body is over the {limit / 2**20:.1f} MB limit",
                                     ErrorKind.TOO_LARGE)
            parser.write(chunk)
        parser.finalize()
    except FormParserError as err:
        raise FormError("body", f"the form is malformed ({err}): send multipart/form-data") from None
    except ClientDisconnect:
        raise FormError("body", "the client went away before sending the whole form") from None
    finally:
        for file in files:
            file.close()
    settings: dict[str, Any] = {}
    for field in fields:
        name, value = (field.field_name or b"").decode("utf-8", "replace"), field.value
        if name == "file":
            raise FormError(name, "the form's field 'file' is text, not a file: send the file itself "
                                  "(curl -F file=@photo.jpg: the @ sends the file)")
        if name not in setting_names:
            raise FormError(name, f"the form's field {name!r} is no setting: send the file as 'file' and "
                                  f"settings among {', '.join(setting_names)}")
        settings[name] = _form_value(value)
    if len(files) > 1:
        raise FormError("file", f"the form has {len(files)} files: send one per request")
    if not files or files[0].field_name != b"file":
        raise FormError("file", "the form has no field 'file': send the photo or video as 'file' "
                                "(curl -F file=@photo.jpg)")
    upload = files[0]
    name = Path((upload.file_name or b"upload").decode("utf-8", "replace")).name or "upload"
    if upload.actual_file_name is None:  # nothing was written: an empty file
        path = folder / "empty"
        path.write_bytes(b"")
        return str(path), name, settings
    return os.fsdecode(upload.actual_file_name), name, settings


def declared_length(scope) -> int | None:
    """The request's Content-Length, when it sends a valid one."""
    declared = dict(scope["headers"]).get(b"content-length", b"")
    return int(declared) if declared.isdigit() else None


def _form_value(value: bytes | None) -> int | float | str | None:
    """A form field as the number it spells (so that errors quote 1000, not '1000'); empty: the default."""
    text = (value or b"").decode("utf-8", "replace").strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text or None


class GradioUploadAdmission:
    """Gradio's upload route (the page's and gradio_client's uploads) holds its size of the upload budget
    while its bytes arrive; when the budget cannot hold it, it is refused at once: 503, ``Retry-After`` and a
    plain-text reason, which the page shows."""

    def __init__(self, app, service: CaptionService):
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST"
                or not scope["path"].rstrip("/").endswith(GRADIO_UPLOAD_ROUTE)):
            await self.app(scope, receive, send)
            return
        size = declared_length(scope) or int(self.service.limits.max_file_mb * 2**20)
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self.service.janitor.reserve(size))
            except ServerBusy as err:
                self.service.metrics.answered("gradio", error_answer(str(err), err.kind))
                refusal = PlainTextResponse(str(err), 503, {"Retry-After": str(err.retry_after)})
                await refusal(scope, receive, send)
                return
            await self.app(scope, receive, send)


def _documented_form(service: CaptionService) -> dict[str, Any]:
    properties: dict[str, Any] = {"file": {"type": "string", "format": "binary",
                                           "description": "The photo (JPEG, PNG, WebP, ...) or video (mp4, "
                                                          "avi, webm, mov, mkv)"}}
    for f in DecodingConfig.public_fields():
        default = getattr(service.defaults, f.name)
        properties[f.name] = {"type": "integer" if f.metadata["whole"] else "number",
                              "description": f"{setting_label(f).capitalize()} (default {default:g})"}
    return {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["file"], "properties": properties}}}}


def _documented_responses() -> dict[int | str, dict[str, Any]]:
    def error(description: str, kind: ErrorKind, message: str) -> dict[str, Any]:
        return {"description": description,
                "content": {"application/json": {"example": {"error": message, "error_kind": kind.value}}}}

    return {
        200: {"description": "The caption, its beams, its words and where it looked for each",
              "content": {"application/json": {"example": {
                  "source": "photo.jpg", "caption": "a dog runs on the grass", "score": -1.39,
                  "beams": [{"text": "a dog runs on the grass", "score": -1.39}], "words": ["a", "dog"],
                  "attention": [[0.01]], "grid": [9, 9]}}}},
        400: error("A setting is not allowed, or the form is not one file and settings", ErrorKind.PARAMETER,
                   "beam size 1000 is not allowed: choose a whole number from 1 to 10"),
        401: error("The server asks for its API token", ErrorKind.UNAUTHORIZED,
                   "this server asks for its API token: send the header 'Authorization: Bearer <token>'"),
        413: error("The file is over a size, pixel or duration limit", ErrorKind.TOO_LARGE,
                   "photo.png: 61.0 MB is over the 50 MB limit"),
        415: error("Not an image or video", ErrorKind.NOT_MEDIA,
                   "notes.jpg: not an image file: it is a text file"),
        422: error("An image or video whose data is damaged, cut short or empty", ErrorKind.CORRUPT,
                   "photo.jpg: the image data is corrupt or truncated"),
        500: error("The file was fine, the server failed (out of memory, say)", ErrorKind.SERVER,
                   "photo.jpg: the server could not caption this file now (...); try again later"),
        503: error("Full now (queue or upload space): retry after the seconds in Retry-After", ErrorKind.BUSY,
                   "the server is busy: 64 requests are in flight, its queue's limit; try again in 3 s"),
    }
