"""A lean HTTP/1.1 keep-alive client for load generation (asyncio protocol + httptools).

Why not httpx: on the 2-core bench machine the load generator shares the cores with the
server, and httpx's async client cost about 3 ms of CPU per request (as much as the server's
own work), so the bench measured the two fighting for CPU. This client sends pre-serialised
request bytes over a fixed pool of persistent connections and parses responses with
httptools (the parser uvicorn itself uses): tens of microseconds per request.

Requests are balanced over the server's *processes*, not its connections: each connection
learns which worker holds it from the `X-Cadence-Instance` header of its warm-up answer, and
each request goes to an idle connection of the worker with the fewest requests in flight (a
reverse proxy's least-request balancing). Without it the split follows the kernel's accept
race: one run put 78 % of the load on one of two uvicorn workers, which queued while the
other idled.
It is for benchmarks and tests, not a general HTTP client (no redirects, TLS or chunked uploads).
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from urllib.parse import urlsplit

import httptools

from server.signing import HEADER_INSTANCE

#: response header naming the server process, as httptools reports names (lower-cased here)
INSTANCE_HEADER = HEADER_INSTANCE.lower().encode("latin-1")


def raw_request(method: str, url: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """The exact bytes of one HTTP/1.1 request (serialised once, before any timing)."""
    host = urlsplit(url).netloc
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}"]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"content-length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items() if k.lower() not in ("host", "content-length")]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Connection(asyncio.Protocol):
    """One persistent connection; at most one request in flight (no pipelining)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.chunks: list[bytes] = []
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False
        #: the server process holding this connection (from `INSTANCE_HEADER`), once answered
        self.instance = ""

    # asyncio protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"bad HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("server closed the connection"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == INSTANCE_HEADER:
            self.instance = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        body, self.chunks = b"".join(self.chunks), []
        waiter, self.waiter = self.waiter, None
        if not self.parser.should_keep_alive():
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), body))

    def _fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, raw: bytes) -> asyncio.Future[tuple[int, bytes]]:
        self.waiter = self.loop.create_future()
        assert self.transport is not None
        self.transport.write(raw)
        return self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class ConnectionPool:
    """Up to `size` persistent connections to one host, balanced over the server's processes.

    An idle connection is taken from the server process (instance) with the fewest requests
    in flight; between processes with equally few, from the one sent the fewest requests so far
    (round robin among the least loaded, as nginx's `least_conn` breaks ties), first-in
    first-out within it. Connections whose instance is unknown form one group of their own.
    """

    def __init__(self, url: str, size: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.size = size
        self.idle: dict[str, deque[_Connection]] = {}
        self.in_flight: Counter[str] = Counter()
        #: requests sent per instance (the tie-break)
        self.sent: Counter[str] = Counter()
        self.waiting: deque[asyncio.Future[_Connection | None]] = deque()
        self.open = 0

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        self.open += 1
        try:
            _, conn = await loop.create_connection(lambda: _Connection(loop), self.host, self.port)
        except BaseException:
            self.open -= 1
            self._wake_one()  # a waiter may now open its own connection
            raise
        return conn

    async def warm(self, probe: bytes | None = None, *, spread: int = 1, budget_s: float = 5.0) -> None:
        """Open every connection up front (connecting is not part of what a phase measures).

        One at a time, each answering `probe` (a cheap request; `/v1/health` also names the
        server process) before the next is opened, as connections from separate clients
        arrive. Opened all at once, they queue on the listening socket and the first server
        worker to wake accepts every one of them.

        `spread`: the server's process count. A connection accepted by a process that already
        holds its share (size / spread) is closed and opened again, for up to `budget_s`: on a
        loaded 2-core host one worker, descheduled, once let the other accept all 32 in turn,
        and the whole load went to one process.
        """
        loop = asyncio.get_running_loop()
        share = -(-self.size // max(spread, 1))
        deadline = loop.time() + budget_s
        while self.open < self.size:
            conn = await self._connect()
            if probe is None:
                self._park(conn)
                continue
            await conn.send(probe)
            if spread > 1 and len(self.idle.get(conn.instance, ())) >= share and loop.time() < deadline:
                conn.close()  # its process holds its share: another try may reach one that does not
                self.open -= 1
                await asyncio.sleep(0.005)
                continue
            self._park(conn)

    def instances(self) -> Counter[str]:
        """Idle connections per server process (after `warm`: how the connections spread)."""
        return Counter({k: len(v) for k, v in self.idle.items() if v})

    def _park(self, conn: _Connection) -> None:
        self.idle.setdefault(conn.instance, deque()).append(conn)

    def _take_idle(self) -> _Connection | None:
        while True:
            ready = [k for k, q in self.idle.items() if q]
            if not ready:
                return None
            queue = self.idle[min(ready, key=lambda k: (self.in_flight[k], self.sent[k]))]
            conn = queue.popleft()
            if not conn.closed:
                return conn
            self.open -= 1

    async def acquire(self) -> _Connection:
        conn = self._take_idle()
        if conn is not None:
            return conn
        if self.open < self.size:
            return await self._connect()
        fut: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        handed = await fut
        return handed if handed is not None else await self.acquire()

    def release(self, conn: _Connection) -> None:
        if conn.closed:
            self.open -= 1
            self._wake_one()
            return
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        self._park(conn)

    def _wake_one(self) -> None:
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_result(None)  # no connection handed over: the waiter connects itself
                return

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send one serialised request; (status, body). Connection errors propagate."""
        conn = await self.acquire()
        instance = conn.instance
        self.in_flight[instance] += 1
        self.sent[instance] += 1
        try:
            return await conn.send(raw)
        except BaseException:
            conn.close()
            raise
        finally:
            self.in_flight[instance] -= 1
            self.release(conn)

    def close(self) -> None:
        for queue in self.idle.values():
            for conn in queue:
                conn.close()
        self.idle.clear()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """An event loop: uvloop when installed (uvicorn[standard] brings it), else asyncio's own."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
