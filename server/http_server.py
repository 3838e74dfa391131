"""Serving an ASGI app (the web console, the national JSON door) with uvicorn
beside the gRPC server: a thread of its own with its own event loop, so the
gRPC threads never wait for it (and it never waits for them)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

# How long a request under way may still run once the server stops (the gRPC calls' grace too:
# app.RunningServer.stop); `begin_stop` has uvicorn cancel what is left then.
DRAIN_SECONDS = 5.0

log = logging.getLogger("settlesim.server")


@dataclass
class HttpServer:
    """A running uvicorn server: where it listens, and how to stop it."""

    host: str
    port: int
    _server: uvicorn.Server
    _thread: threading.Thread
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def begin_stop(self, grace: float = DRAIN_SECONDS) -> None:
        """No new connections or requests from now on (within uvicorn's 0.1 s tick); the
        requests under way go on for about `grace` seconds, then uvicorn cancels them (its tick
        and its own 0.1 s pause before the wait are taken off, and 0.1 s more of slack)."""
        self._server.config.timeout_graceful_shutdown = max(0.0, grace - 0.3)  # read when it stops
        self._server.should_exit = True

    def join(self, timeout: float) -> None:
        """Wait for the end of `begin_stop`: `timeout` seconds and a second more."""
        self._thread.join(max(0.0, timeout) + 1.0)
        if self._thread.is_alive():
            log.warning("%s still running %.1f s after it was told to stop", self._thread.name, timeout + 1.0)

    def stop(self, timeout: float = DRAIN_SECONDS) -> None:
        self.begin_stop(timeout)
        self.join(timeout)


def start_http(
    app: Any,
    host: str,
    port: int,
    *,
    name: str = "http",
    timeout: float = 10.0,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    client_ca: Path | None = None,
    protocol: type | None = None,
) -> HttpServer:
    """Start `app` on host:port (0: any free port) in a background thread and
    return once it listens; OSError when it cannot bind. With `tls_cert` and
    `tls_key` it speaks HTTPS; with `client_ca` too, only to clients whose certificate
    that CA signed (the handshake fails otherwise). `protocol`: uvicorn's HTTP protocol
    class (the national door's hands the app the client certificate)."""
    config = uvicorn.Config(
        # log_config None: uvicorn's loggers go to the server's own handler (JSON lines), not to a
        # plain-text one of uvicorn's making
        app, host=host, port=port, log_level="warning", log_config=None, access_log=False, lifespan="off",
        ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None,
        ssl_ca_certs=str(client_ca) if client_ca else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if client_ca else ssl.CERT_NONE, http=protocol or "auto",
    )  # fmt: skip
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the gRPC server owns signals
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve())
        except BaseException as error:  # SystemExit when uvicorn cannot bind
            failure.append(error)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise OSError(f"cannot serve {name} on {host}:{port} (address in use or not local?)")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return HttpServer(host, bound, server, thread, "https" if tls_cert else "http")
