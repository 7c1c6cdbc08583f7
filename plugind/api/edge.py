"""The HTTP edge: what a slow or numerous client can hold of the daemon, and for how long.

uvicorn (h11) reads a request head and body for as long as a client cares to send them, keeps every
accepted connection, and arms its keep-alive timer only after a first response. `GuardedH11Protocol`
is its h11 protocol with the edge's limits on top, all decided per connection on the event loop:

- at accept: over `api.max_connections` open API connections, or over
  `api.max_connections_per_client` from one client IP address, the connection gets a 503 and is
  closed at once (before a byte of it is read);
- a request head (request line and headers) must be complete within `api.header_timeout_secs` of
  the connection opening, or of the first byte of a later request on a kept-alive connection: else
  408 and close;
- a request body must be complete within `api.body_timeout_secs` of its head: else the connection
  is closed (the application sees a disconnect);
- an idle kept-alive connection is closed after `api.keepalive_timeout_secs` (uvicorn's timer), and
  a connection's `api.max_requests_per_connection`-th response carries `Connection: close`.

`effective_max_connections` keeps the cap under the process's RLIMIT_NOFILE, less the fds open at
start and a reserve for the plugins' channels, the monitor and the logs, so clients can never
exhaust the daemon's fds.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import resource
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.flow_control import CLOSE_HEADER
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

try:  # uvicorn's C-parser protocol; h11's (pure Python) is the fallback where httptools is missing
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

    HAVE_HTTPTOOLS = True
except ImportError:  # pragma: no cover
    HAVE_HTTPTOOLS = False
    HttpToolsProtocol = H11Protocol  # type: ignore[misc,assignment]  # a base never chosen (parser_protocol)
    STATUS_LINE = {}

from plugind.api.fastpath import HookFastPath
from plugind.config import Settings
from plugind.errors import ConfigError
from plugind.monitor import metrics

log = logging.getLogger("plugind.api")

# fds kept out of the clients' reach: plugins' sockets and pidfds, cgroup and /proc reads of the
# monitor, log and audit files, the probe listener. At least this many, or a quarter of the limit.
FD_RESERVE_MIN = 64

_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"retry-after: 1\r\ncontent-length: %d\r\n\r\n%s"
)
_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)


def _reply(template: bytes, message: str, error: str) -> bytes:
    body = b'{"success":false,"message":"%s","error":"%s"}' % (message.encode(), error.encode())
    return template % (len(body), body)


def fd_limit() -> int:
    """The process's soft RLIMIT_NOFILE (a large number when unlimited)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def fds_in_use() -> int:
    """How many fds this process has open now (0 when /proc cannot tell)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def effective_max_connections(configured: int, nofile: int, in_use: int = 0) -> int:
    """`configured`, lowered so that the connections, the `in_use` fds and a reserve fit in `nofile`
    fds (at least 1). 0 stays 0: no cap at all, the operator's explicit choice."""
    if configured == 0:
        return 0
    reserve = max(FD_RESERVE_MIN, nofile // 4)
    return max(1, min(configured, nofile - in_use - reserve))


@dataclass
class EdgeLimits:
    """The edge's limits, from `[api]`. A timeout or cap of 0 means none."""

    max_connections: int
    max_connections_per_client: int
    header_timeout: float
    body_timeout: float
    max_requests_per_connection: int
    max_header_bytes: int = 16384

    @classmethod
    def from_settings(cls, settings: Settings, *, nofile: int | None = None, in_use: int = 0) -> EdgeLimits:
        """The limits for this process: its fd limit (or `nofile`), less `in_use` fds and a reserve."""
        api = settings.api
        limit = fd_limit() if nofile is None else nofile
        cap = effective_max_connections(api.max_connections, limit, in_use)
        if 0 < cap < api.max_connections:
            log.warning(
                "api.max_connections lowered from %d to %d to stay within the fd limit (%d, with a "
                "reserve for plugins and the monitor); raise LimitNOFILE / ulimit -n to allow more",
                api.max_connections, cap, limit,
            )
        return cls(
            max_connections=cap,
            max_connections_per_client=api.max_connections_per_client,
            header_timeout=api.header_timeout_secs,
            body_timeout=api.body_timeout_secs,
            max_requests_per_connection=api.max_requests_per_connection,
            max_header_bytes=api.max_header_bytes,
        )


@dataclass
class EdgeState:
    """Open connections of the API listeners, in total and by client address."""

    limits: EdgeLimits
    open: int = 0
    by_client: Counter[str] = field(default_factory=Counter)

    def admit(self, client: str | None) -> str | None:
        """Count a new connection in; returns why it is refused (and counts nothing) or None."""
        if self.limits.max_connections and self.open >= self.limits.max_connections:
            return "max_connections"
        per_client = self.limits.max_connections_per_client
        if client is not None and per_client and self.by_client[client] >= per_client:
            return "max_connections_per_client"
        self.open += 1
        if client is not None:
            self.by_client[client] += 1
        metrics.http_connections(self.open)
        return None

    def release(self, client: str | None) -> None:
        self.open -= 1
        if client is not None:
            self.by_client[client] -= 1
            if self.by_client[client] <= 0:
                del self.by_client[client]
        metrics.http_connections(self.open)


class _Guard:
    """The edge's limits, common to both protocols below; `_pending()` says what the connection
    waits for from the client: "head" (a request head begun or expected), "body", or "" (nothing)."""

    edge: ClassVar[EdgeState]
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    client: tuple[str, int] | None

    def _guard_init(self) -> None:
        self._admitted = False
        self._peer: str | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_for = ""  # "head" or "body": what the deadline is for
        self._requests = 0

    def _admit(self, transport: asyncio.Transport) -> bool:
        # A TCP peer's address; None on the Unix socket, where only the total cap applies.
        self._peer = self.client[0] if self.client else None
        refused = self.edge.admit(self._peer)
        if refused is not None:
            metrics.http_connection_refused(refused)
            transport.write(_reply(_REFUSED, f"too many connections ({refused})", "unavailable"))
            transport.close()
            return False
        self._admitted = True
        self._arm("head", self.edge.limits.header_timeout)
        return True

    def _release(self) -> None:
        self._disarm()
        if self._admitted:
            self._admitted = False
            self.edge.release(self._peer)

    def _last_request(self) -> bool:
        """Count a new request in; True when it is the connection's last (`Connection: close`)."""
        self._requests += 1
        most = self.edge.limits.max_requests_per_connection
        return bool(most) and self._requests >= most

    def _pending(self) -> str:
        raise NotImplementedError

    def _follow(self) -> None:
        """Arm or disarm the deadline for what the connection now waits for."""
        if self.transport.is_closing():
            self._disarm()
            return
        pending = self._pending()
        if pending == "head":
            if self._waiting_for != "head":
                self._arm("head", self.edge.limits.header_timeout)
        elif pending == "body":
            if self._waiting_for != "body":
                self._arm("body", self.edge.limits.body_timeout)
        elif self._deadline is not None:
            self._disarm()

    def _arm(self, what: str, seconds: float) -> None:
        self._disarm()
        if seconds > 0:
            self._waiting_for = what
            self._deadline = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._waiting_for = ""

    def _expired(self, what: str) -> None:
        pending = self._pending()
        self._deadline = None
        self._waiting_for = ""
        if self.transport.is_closing():
            return
        if what == "head" and pending == "head":
            metrics.http_connection_timed_out("header_timeout")
            limit = self.edge.limits.header_timeout
            self.transport.write(
                _reply(_TIMED_OUT, f"request head not complete within {limit:g} s", "request_timeout")
            )
            self.transport.close()
        elif what == "body" and pending == "body":
            # The application is already reading the body: no answer can be sent over it, the
            # connection is closed and the application sees a disconnect.
            metrics.http_connection_timed_out("body_timeout")
            self.transport.close()


class GuardedH11Protocol(_Guard, H11Protocol):
    """uvicorn's h11 protocol with the edge's limits (see the module docstring): the fallback where
    httptools is missing. Bind it to an `EdgeState` with `protocol_class(state, "h11")`; uvicorn
    makes one instance per connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard_init()
        self._last_cycle: Any = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._admit(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return  # refused: closing, nothing of it is read
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self.cycle is not self._last_cycle:
            self._last_cycle = self.cycle
            headers = self.headers  # the list in the new request's scope (not yet run)
            if self._last_request() and CLOSE_HEADER not in headers:
                # uvicorn answers a request that says `Connection: close` with the same, and closes.
                headers.append(CLOSE_HEADER)
        self._follow()

    def _pending(self) -> str:
        state = self.conn.their_state
        if state is h11.IDLE:
            # Bytes of a request head are buffered, not the whole head yet (data_received calls us
            # with data only; after a response the keep-alive timer covers the idle connection).
            return "head" if self.conn.trailing_data[0] or self._waiting_for == "head" else ""
        if state is h11.SEND_BODY:
            return "body"
        return ""

    def on_response_complete(self) -> None:
        self._disarm()  # the keep-alive timer takes over
        super().on_response_complete()


class GuardedHttpToolsProtocol(_Guard, HttpToolsProtocol):
    """uvicorn's httptools protocol (the C parser llhttp; what the daemon uses where httptools is
    installed) with the edge's limits, and `api.max_header_bytes` (which h11 enforces itself): a
    request head larger than that gets 400 and the connection is closed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard_init()
        self._phase = "head"  # "head" until its headers are complete, then "body", then ""
        self._head_bytes = 0  # bytes received while the head is incomplete
        self._began = False  # whether a request began in the segment being parsed
        self._head_parsed = 0  # request line and headers parsed so far
        # The hook route answered in this protocol (see `_start_asgi_task`): the app's fast path.
        fast = getattr(self.config.app, "fast_path", None)
        self._fast: HookFastPath | None = fast if isinstance(fast, HookFastPath) else None
        self._held: tuple[Any, str] | None = None  # (cycle, hook) whose body is still coming
        self.holding: _HeadWithBody | None = None  # the cycle transport holding a head back, if one is

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._admit(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return  # refused: closing, nothing of it is read
        self._began = False
        super().data_received(data)
        if self._phase == "head" and not self.transport.is_closing():
            # A head still incomplete: llhttp holds its unfinished line; bound what it may hold. A
            # head that began in this segment counts what of it is parsed: the bytes before it were
            # the previous request's (its body, pipelined); the rest counts with the next segment.
            if self._began:
                self._head_bytes = self._head_parsed
            else:
                self._head_bytes += len(data)
            if self._head_bytes > self.edge.limits.max_header_bytes:
                self._head_too_large()
                return
        self._follow()

    def _head_too_large(self) -> None:
        self._disarm()
        self._phase = ""
        if not self.transport.is_closing():
            self.send_400_response("Invalid HTTP request received.")  # as h11's limit answers

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = "head"
        self._began = True
        self._head_bytes = 0
        self._head_parsed = 0

    def on_url(self, url: bytes) -> None:
        self._head_parsed += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_parsed += len(name) + len(value) + 4
        if self._head_parsed > self.edge.limits.max_header_bytes:
            raise ValueError("request head too large")  # the parser stops: data_received's 400
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        self._phase = "body"
        self._head_bytes = 0
        cycle = self.cycle
        if cycle is not None and cycle is not before:
            cycle.transport = _HeadWithBody(self.transport, cycle, self.loop, self)  # type: ignore[assignment]
            if self._last_request():
                cycle.keep_alive = False  # its response says `Connection: close`, then it closes

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        held = self._held
        if held is not None and held[0] is self.cycle:
            assert self._fast is not None
            if len(self.cycle.body) > self._fast.max_bytes:
                # A chunked body past the limit: the ASGI app reads on and answers (BodyLimit's 413).
                self._held = None
                super()._start_asgi_task(self.cycle, self.app)
            else:
                # Nobody calls receive() for a held request (which resumes reading): read on.
                self.flow.resume_reading()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._phase = ""
        held = self._held
        if held is not None and held[0] is self.cycle:
            self._held = None
            self._answer_hook(*held)

    # --------------------------------------------------------------- the hook route, in the protocol
    # uvicorn runs every request as an ASGI task of a RequestResponseCycle (receive/send coroutines,
    # an Event per body message, header checks on every send) before FastAPI, or the app's fast path
    # in front of it, sees it. A hook call the fast path takes (`HookFastPath.hook_of`: route, name,
    # content type, length, bearer token) is answered here instead, once its whole body is in: the
    # same `call_of` and `answer` as the ASGI fast path, the reply written as the cycle's send would
    # write it (status line, uvicorn's default headers, content-type, content-length, `connection:
    # close` when the connection ends), and the cycle then completed as send completes it, so
    # keep-alive, pipelining (requests answered in order, one at a time), `Connection: close`,
    # HTTP/1.0, max_requests_per_connection, shutdown and the access log behave as they do for any
    # request. Anything the fast path would refuse runs as the ASGI task it would have been, with
    # the body already read (FastAPI answers it, as it does without the fast path).

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        fast = self._fast
        hook = fast.hook_of(cycle.scope) if fast is not None and app is self.app else None
        if hook is None:
            super()._start_asgi_task(cycle, app)
            return
        if cycle.waiting_for_100_continue and not self.transport.is_closing():
            # What the app's first receive() would write: the client may wait for it to send the body.
            # After the previous response's head, which its cycle may still hold (a reply to HEAD,
            # which has no body to send it with, waits for the loop's next turn).
            cycle.waiting_for_100_continue = False
            if self.holding is not None:
                self.holding.flush()
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if cycle.more_body:
            self._held = (cycle, hook)  # answered from on_message_complete
            self.flow.resume_reading()  # (a pipelined request's head paused it)
        else:
            self._answer_hook(cycle, hook)

    def _answer_hook(self, cycle: Any, hook: str) -> None:
        assert self._fast is not None
        body = bytes(cycle.body)
        call = self._fast.call_of(body)
        if call is None:
            super()._start_asgi_task(cycle, self.app)  # FastAPI's to answer, the body already read
            return
        cycle.body = bytearray()
        coro = self._hook_reply(cycle, hook, call)
        if self.config.reset_contextvars:  # as uvicorn starts a request's task
            task = self.loop.create_task(coro, context=contextvars.Context())
        else:
            task = self.loop.create_task(coro)
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _hook_reply(self, cycle: Any, hook: str, call: tuple[Any, str, float | None]) -> None:
        assert self._fast is not None
        scope = cycle.scope
        try:
            code, payload = await self._fast.answer(hook, call, scope["path"])
            if self.flow.write_paused and not cycle.disconnected:
                await self.flow.drain()  # as send() waits for a client that does not read
            if cycle.disconnected:
                return  # nobody to answer (the hook ran, its metrics are counted)
            cycle.response_started = True
            if cycle.access_log:
                cycle.access_logger.info(
                    '%s - "%s %s HTTP/%s" %d', get_client_addr(scope), scope["method"],
                    get_path_with_query_string(scope), scope["http_version"], code,
                )
            head = [STATUS_LINE[code]]
            for name, value in cycle.default_headers:
                head += (name.lower(), b": ", value, b"\r\n")
            head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(payload))
            if not cycle.keep_alive:
                head.append(b"connection: close\r\n")
            head += (b"\r\n", payload)
            self.transport.write(b"".join(head))
            cycle.response_complete = True
            cycle.message_event.set()
            if not cycle.keep_alive:
                self.transport.close()
            cycle.on_response()
        except BaseException as exc:  # as uvicorn's run_asgi: logged, a 500 if nothing was sent yet
            cycle.logger.error("Exception in ASGI application\n", exc_info=exc)
            if not cycle.response_started:
                await cycle.send_500_response()
            else:
                self.transport.close()
        finally:
            cycle.on_response = lambda: None

    def _pending(self) -> str:
        return self._phase

    def on_response_complete(self) -> None:
        self._disarm()  # the keep-alive timer takes over
        super().on_response_complete()
        if self._phase == "head" and not self.transport.is_closing():
            self._follow()  # the next request's head has begun: its deadline runs


class _HeadWithBody:
    """The transport as one httptools response cycle sees it: its response head is held back until
    the body's first write, so a reply sent at once (as the app sends one) leaves in one send(2), one
    TCP segment, instead of two. A head whose body is late goes out at the loop's next turn; the
    `100 Continue` interim reply (written before the response starts) is never held."""

    __slots__ = ("_cycle", "_held", "_loop", "_owner", "_transport", "_waiting")

    def __init__(self, transport: asyncio.Transport, cycle: Any, loop: asyncio.AbstractEventLoop,
                 owner: GuardedHttpToolsProtocol) -> None:
        self._transport = transport
        self._cycle = cycle
        self._loop = loop
        self._owner = owner  # told what is held (`holding`): what it writes itself goes after it
        self._held: bytes | None = None
        self._waiting = True  # for the response head

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._release()
            self._transport.write(held + data)
        elif self._waiting and self._cycle.response_started:
            self._waiting = False
            self._held = data
            self._owner.holding = self
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def _release(self) -> None:
        self._held = None
        if self._owner.holding is self:
            self._owner.holding = None

    def flush(self) -> None:
        """Write the head held back, if any, now."""
        held = self._held
        if held is not None:
            self._release()
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def parser_protocol(choice: str) -> type[_Guard]:
    """The guarded protocol of `api.http_parser`: "auto" is httptools where it is installed."""
    if choice == "h11" or (choice == "auto" and not HAVE_HTTPTOOLS):
        return GuardedH11Protocol
    if not HAVE_HTTPTOOLS:
        raise ConfigError("api.http_parser = \"httptools\" but httptools is not installed",
                          key="api.http_parser")
    return GuardedHttpToolsProtocol


def protocol_class(state: EdgeState, parser: str = "auto") -> type[_Guard]:
    """The edge's protocol bound to `state` (for `uvicorn.Config(http=...)`)."""
    base = parser_protocol(parser)
    return type(base.__name__, (base,), {"edge": state})


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The `uvicorn.Config` keywords of the edge's limits."""
    api = settings.api
    state = EdgeState(EdgeLimits.from_settings(settings, in_use=fds_in_use()))
    return {
        "http": protocol_class(state, api.http_parser),
        "timeout_keep_alive": api.keepalive_timeout_secs,
        "h11_max_incomplete_event_size": api.max_header_bytes,
    }


__all__ = [
    "EdgeLimits",
    "EdgeState",
    "GuardedH11Protocol",
    "GuardedHttpToolsProtocol",
    "effective_max_connections",
    "fd_limit",
    "fds_in_use",
    "parser_protocol",
    "protocol_class",
    "uvicorn_options",
]
