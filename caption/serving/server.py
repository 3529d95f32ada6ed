"""One server, one port: the HTTP API (``caption.serving.http_api``) with the Gradio page mounted under it.

FastAPI serves ``/v1/caption``, ``/healthz``, ``/readyz``, ``/metrics`` and the API's docs at ``/docs``;
every other path is the page (Gradio is a FastAPI app too, mounted at ``/``). Both share one
``CaptionService``: one model, one batcher, one upload budget. ``serve`` runs it with uvicorn.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass

import gradio as gr
import uvicorn
from fastapi import FastAPI

from caption.serving import http_api
from caption.serving.service import CaptionService

logger = logging.getLogger("caption.server")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def build_server(service: CaptionService, page: gr.Blocks, *, token: str | None = None,
                 protect_page: bool = False, allowed_paths: list[str] | None = None) -> FastAPI:
    """The app: the API's routes first, then the page (its queue already set up with ``page.queue``).
    ``protect_page``: the page (and Gradio's API) ask for ``token`` too, on a login form (any user name)."""
    if protect_page and not token:
        raise ValueError("protecting the page needs an API token (--api-token or CAPTION_API_TOKEN)")
    app = FastAPI(title="Image and video captioning", version="1",
                  description="Caption a photo or a video: `POST /v1/caption` with the file as a multipart "
                              "form field `file`. The web page is at `/`.")
    http_api.install(app, service, token)
    login = (lambda _user, password: secrets.compare_digest(password.encode(), token.encode())) \
        if protect_page else None
    return gr.mount_gradio_app(
        app, page, path="/", auth=login, auth_message="Sign in with any user name and the server's API token",
        max_file_size=int(service.limits.max_file_mb * 2**20), allowed_paths=allowed_paths, ssr_mode=False,
    )


def exposure_warning(host: str, token: str | None, protect_page: bool, share: bool) -> str | None:
    """What a server reachable beyond this machine leaves open, or None when nothing is."""
    if host in LOCAL_HOSTS and not share:
        return None
    where = "a public gradio.live link" if share else host
    if not token:
        return (f"warning: listening on {where} without --api-token: anyone who can reach it can caption "
                "with /v1/caption, use the page and its Gradio API, and read /metrics")
    if not protect_page:
        return (f"warning: listening on {where}: /v1/* asks for the API token, but the page and its Gradio "
                "API (/gradio_api/*) are open to anyone who can reach it (add --protect-page), and so are "
                "/healthz, /readyz and /metrics")
    return None


@dataclass
class RunningServer:
    url: str
    server: uvicorn.Server
    stopped: threading.Event  # set when the server thread has returned (shut down, or failed to start)

    def wait(self) -> None:
        """Serve until Ctrl-C (or SIGTERM turned into it), then shut down gracefully."""
        # An Event, not Thread.join: a join interrupted by Ctrl-C can leave the thread looking finished
        # (CPython), and the process would then exit before the server's shutdown ran.
        try:
            while not self.stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            self.stop()

    def stop(self) -> None:
        self.server.should_exit = True
        self.stopped.wait(30)


def serve(app: FastAPI, host: str, port: int) -> RunningServer:
    """Start ``app`` on ``host:port`` in a thread; returns once it listens (raises if it cannot)."""
    # Proxy headers are trusted from the local machine only (a reverse proxy on the same host).
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", proxy_headers=True,
                            forwarded_allow_ips="127.0.0.1", timeout_graceful_shutdown=5)
    server, stopped = uvicorn.Server(config), threading.Event()

    def run() -> None:
        try:
            server.run()
        finally:
            stopped.set()

    threading.Thread(target=run, name="http-server", daemon=True).start()
    while not server.started:
        if stopped.is_set():
            raise OSError(f"could not listen on {host}:{port} (is the port in use? choose one with --port)")
        time.sleep(0.05)
    shown = f"[{host}]" if ":" in host else host
    return RunningServer(f"http://{shown}:{port}/", server, stopped)
