"""A fault-injecting HTTP proxy on 127.0.0.1 between the library and SeaweedFS.

On a configurable fraction of requests it answers 500 InternalError or 503 SlowDown
without forwarding, resets the connection, delays the request, or forwards it and
then drops the response (the write happened, the client never hears of it: the case
that makes a retried conditional PUT meet its own write). The Host header is passed
through untouched, so SigV4 signatures still verify upstream.

Two answers of real S3 that SeaweedFS never gives can be switched on:
``conflict_fraction`` answers that share of conditional writes (PUT or DELETE with
If-Match/If-None-Match), and the first of each kind (claim, renewal, result, other),
with 409 ConditionalRequestConflict, unapplied, as S3 does when conditional writes
overlap; ``missing_as_403`` turns every 404 for a missing
key into 403 AccessDenied, as S3 does for a caller whose ListBucket grant does not
apply to object requests (LIST requests are answered as usual).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections import Counter

import aiohttp
from aiohttp import web

KINDS = ("error500", "slowdown503", "reset", "delay", "lost_response")
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "expect", "te"}
_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
    "<Message>injected by the test proxy</Message></Error>"
)


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        fraction: float,
        *,
        seed: int = 0,
        kinds: tuple[str, ...] = KINDS,
        port: int = 0,
        conflict_fraction: float = 0.0,
        missing_as_403: bool = False,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.fraction = fraction
        self.conflict_fraction = conflict_fraction
        self.missing_as_403 = missing_as_403
        # 409s by what they hit: "claim", "renewal", "result", "other".
        self.conflicts: Counter[str] = Counter()
        self.kinds = kinds
        self.rng = random.Random(seed)
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.url = ""

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("fault proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._session.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    @property
    def faults(self) -> int:
        return sum(self.injected.values())

    def _serve(self) -> None:
        # An injected reset is the point, not an error worth a traceback.
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self._port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as resp:
            payload = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
            return web.Response(status=resp.status, headers=out, body=payload)

    def _conflict(self, request: web.Request) -> web.Response | None:
        headers = request.headers
        conditional = request.method in ("PUT", "DELETE") and (
            "If-Match" in headers or "If-None-Match" in headers
        )
        if not conditional:
            return None
        path = request.path
        if "/claims/" in path:
            target = "renewal" if "If-Match" in headers else "claim"
        else:
            target = "result" if "/results/" in path else "other"
        # The first write of each kind always meets one, whatever order the workers'
        # requests come in; after that, the seeded share.
        first = self.conflicts[target] == 0
        if not first and self.rng.random() >= self.conflict_fraction:
            return None
        self.conflicts[target] += 1
        self.injected["conflict409"] += 1
        return web.Response(status=409, text=_ERROR.format(code="ConditionalRequestConflict"))

    async def _pass(self, request: web.Request, body: bytes) -> web.Response:
        resp = await self._forward(request, body)
        if (
            self.missing_as_403
            and request.method in ("GET", "HEAD")
            and resp.status == 404
            and "list-type" not in request.query
            and b"NoSuchBucket" not in (resp.body or b"")  # type: ignore[operator]
        ):
            self.injected["missing403"] += 1
            text = "" if request.method == "HEAD" else _ERROR.format(code="AccessDenied")
            return web.Response(status=403, text=text)
        return resp

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests += 1
        if self.conflict_fraction and (conflict := self._conflict(request)) is not None:
            return conflict
        kind = self.rng.choice(self.kinds) if self.rng.random() < self.fraction else None
        if kind is None:
            return await self._pass(request, body)
        self.injected[kind] += 1
        if kind == "error500":
            return web.Response(status=500, text=_ERROR.format(code="InternalError"))
        if kind == "slowdown503":
            return web.Response(status=503, text=_ERROR.format(code="SlowDown"))
        if kind == "delay":
            await asyncio.sleep(self.rng.uniform(0.05, 0.5))
            return await self._pass(request, body)
        if kind == "lost_response":
            await self._forward(request, body)
        assert request.transport is not None
        request.transport.abort()  # reset: the client sees a dropped connection
        raise ConnectionResetError("injected")
