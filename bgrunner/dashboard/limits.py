"""How much any caller may ask for: credential attempts, open event streams, request bodies.

Attempts are counted *when they start*, before anything is awaited, so a
thousand concurrent guesses with slow bodies are as limited as a thousand
sequential ones. Each limit is per client address (or identity) with a global
one beside it, so many addresses (or sessions) together are bounded too. The
cost of the global limit is that a flood of wrong guesses can make everybody
wait out a window; with secrets of 128 bits or more that is the price of
keeping the server's work bounded.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Login form posts per client address per ``ATTEMPT_WINDOW`` seconds; then 429.
LOGIN_PER_ADDRESS = 5
#: Login form posts from all addresses together per window.
LOGIN_GLOBAL = 50
#: Requests with a wrong bearer token per client address per window (then 429 for any bearer).
BEARER_PER_ADDRESS = 10
#: Wrong bearer tokens from all addresses together per window.
BEARER_GLOBAL = 100
ATTEMPT_WINDOW = 60.0
#: Open event streams per identity (a session, or a token) and in all.
STREAMS_PER_IDENTITY = 8
STREAMS_GLOBAL = 64
#: The largest request body read (2 MiB): params may be 1 MiB as JSON, in a form that is more.
MAX_BODY = 2 << 20
#: Addresses remembered before those whose window has passed are forgotten.
_MAX_ADDRESSES = 10_000


class AttemptLimiter:
    """Attempts in a sliding window, per address and in all; thread-safe, bounded in memory."""

    def __init__(self, per_address: int = LOGIN_PER_ADDRESS, total: int = LOGIN_GLOBAL,
                 window: float = ATTEMPT_WINDOW) -> None:
        self.per_address, self.total, self.window = per_address, total, window
        self._times: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()
        self._lock = threading.Lock()

    def _expire(self, times: deque[float], now: float) -> deque[float]:
        while times and now - times[0] > self.window:
            times.popleft()
        return times

    def _wait(self, address: str, now: float) -> float:
        mine = self._expire(self._times.get(address, deque()), now)
        every = self._expire(self._all, now)
        waits = [self.window - (now - t[0]) for t, cap in ((mine, self.per_address), (every, self.total))
                 if len(t) >= cap]
        return max(0.0, *waits) if waits else 0.0

    def blocked(self, address: str) -> float:
        """Seconds until ``address`` may try again (0: now); counts nothing."""
        with self._lock:
            return self._wait(address, time.monotonic())

    def attempt(self, address: str) -> float:
        """Count an attempt now, unless blocked: then the seconds to wait (and nothing counted)."""
        now = time.monotonic()
        with self._lock:
            wait = self._wait(address, now)
            if wait:
                return max(wait, 0.001)
            self._record(address, now)
            return 0.0

    def failed(self, address: str) -> None:
        """Count a failure that was not counted as an attempt first (checked synchronously)."""
        with self._lock:
            self._record(address, time.monotonic())

    def forgive(self, address: str) -> None:
        """An attempt succeeded: it no longer counts against the address or the total."""
        with self._lock:
            mine = self._times.get(address)
            if mine:
                stamp = mine.pop()
                try:
                    self._all.remove(stamp)
                except ValueError:
                    pass

    def _record(self, address: str, now: float) -> None:
        if len(self._times) >= _MAX_ADDRESSES:
            for addr in [a for a, t in self._times.items() if not t or now - t[-1] > self.window]:
                del self._times[addr]
        self._times.setdefault(address, deque()).append(now)
        self._all.append(now)


class StreamSlots:
    """Open event streams per identity and in all: each stream polls the store while it lasts."""

    def __init__(self, per_identity: int = STREAMS_PER_IDENTITY, total: int = STREAMS_GLOBAL) -> None:
        self.per_identity, self.total = per_identity, total
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, who: str) -> bool:
        """Take a slot for ``who``; False when it or everybody has no slot left."""
        with self._lock:
            if self._open.get(who, 0) >= self.per_identity or sum(self._open.values()) >= self.total:
                return False
            self._open[who] = self._open.get(who, 0) + 1
            return True

    def give_back(self, who: str) -> None:
        with self._lock:
            left = self._open.get(who, 0) - 1
            if left > 0:
                self._open[who] = left
            else:
                self._open.pop(who, None)

    def open(self, who: str | None = None) -> int:
        with self._lock:
            return sum(self._open.values()) if who is None else self._open.get(who, 0)


class BodyTooLarge(HTTPException):
    """The request body is larger than ``MAX_BODY``: 413 (reading stopped there)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large (at most {limit} bytes)")


class BodyLimit:
    """ASGI middleware: refuse a body over ``limit`` bytes, by its Content-Length or while it arrives.

    The body is never read past the limit: the counting ``receive`` raises
    ``BodyTooLarge`` (an HTTP 413) at the chunk that crosses it.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or len(value) > 18 or int(value) > self.limit:
                    await self._refuse(scope, receive, send)
                    return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watch)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        from starlette.responses import JSONResponse, PlainTextResponse

        text = f"request body too large (at most {self.limit} bytes)"
        response = (JSONResponse({"error": text}, status_code=413) if scope["path"].startswith("/api/")
                    else PlainTextResponse(text, status_code=413))
        response.headers["connection"] = "close"
        await response(scope, receive, send)
