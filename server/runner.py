"""Run the API with uvicorn in a thread on a free loopback port (`cadence demo`, tests).

Whoever starts it stops it (the context manager does).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from cadence.settings import Settings


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(settings: Settings, *, host: str = "127.0.0.1", port: int | None = None,
                   startup_timeout: float = 30.0) -> Iterator[str]:
    """Start the app in a background thread, yield its base URL, stop it on exit."""
    from server.app import create_app

    port = port or free_port(host)
    trusted = settings.forwarded_allow_ips or None  # as `cadence serve`: forwarded headers from named proxies only
    config = uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning", access_log=False,
                            proxy_headers=trusted is not None, forwarded_allow_ips=trusted)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="cadence-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the API did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
