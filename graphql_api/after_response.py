"""Background work found due during an HTTP request waits until its response has been sent
(``webhooks.deferral``): a cache's refresh-ahead reload no longer runs beside the request's own store work."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from webhooks import deferral


class AfterResponse:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # a websocket lives for long: its work starts at once
            await self.app(scope, receive, send)
            return
        with deferral.deferring():
            await self.app(scope, receive, send)
