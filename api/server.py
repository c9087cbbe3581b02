"""How `recommender serve` runs the app: uvicorn, with a deadline on request headers.

uvicorn bounds the idle time between requests (keep-alive) but not the time a client
takes to send a request's line and headers: 300 connections trickling a byte at a time
were held for 40 s. This protocol closes a connection whose request head is not
complete within `header_timeout_seconds` of its first byte (or of the connection).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

# Page views and the CMS's writes run in threads of one process, taking turns at the
# interpreter lock. Handed over every millisecond instead of Python's 5, views made while
# a bulk import's text is analysed waited less: p99 162 and 174 ms against 212 and 261
# (eval/bench_bulk.py, eval/results/bulk/switch.md), the lists' CPU time unchanged.
SWITCH_INTERVAL_S = 0.001


class HeaderDeadline(H11Protocol):
    header_timeout = 10.0  # set per server by `protocol`
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:  # an asyncio transport
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # still waiting for a whole request head
            self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def protocol(header_timeout: float) -> type[HeaderDeadline]:
    """The protocol class for uvicorn's `http=`, with this server's header deadline."""
    return type("HeaderDeadlineH11", (HeaderDeadline,), {"header_timeout": header_timeout})
