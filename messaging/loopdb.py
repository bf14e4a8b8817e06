"""PostgreSQL connections held by the relay's event loop, for the hot path's two statements (the
group commit of known conversations and the acknowledgements).

Everything else the relay asks of the database runs through Django on its database threads.
These two statements are each one autocommitted statement, so they need nothing of Django's
transaction handling; run on the loop they skip the hand-off to a database thread and back,
which at low rates, where a batch holds one envelope, was the largest part of the latency
(measured: ThreadPoolExecutor.submit alone a tenth of the event loop, waking a database thread
on the process's one core; docs/performance.md). A statement that fails here is handed to the
database threads' path, which answers exactly as before."""

from __future__ import annotations

from typing import Any

import psycopg
from django.db import connections
from psycopg import waiting


class LoopConnection(psycopg.AsyncConnection):  # type: ignore[type-arg]
    """Waits for its socket without a time-out: psycopg's default wakes every 0.1 s (for Ctrl-C,
    which daphne handles) through asyncio.wait_for, a task and a timer for each wait of each
    statement."""

    async def wait(self, gen: Any, interval: float | None = None) -> Any:
        return await waiting.wait_async(gen, self.pgconn.socket)


class LoopDatabase:
    """A few psycopg AsyncConnections (autocommit, Django's connection settings and adapters),
    one per statement in flight, reused; bound to one event loop (relay._same_loop resets)."""

    def __init__(self) -> None:
        self.idle: list[Any] = []
        self._vendor: str | None = None

    @property
    def enabled(self) -> bool:
        if self._vendor is None:
            self._vendor = connections["default"].vendor
        return self._vendor == "postgresql"

    def close(self) -> None:
        """Close the idle connections (no statement may be in flight: tests, a loop's end)."""
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.pgconn.finish()
        self._vendor = None

    async def _connect(self) -> Any:
        params = connections["default"].get_connection_params()
        params.pop("cursor_factory", None)  # Django's is synchronous and binds client-side
        params.setdefault("application_name", "enigmo-relay-loop")  # as pg_stat_activity shows it
        conn = await LoopConnection.connect(**params, autocommit=True)
        conn.enigmo_cursors = {}
        return conn

    async def fetch(self, sql: str, params: Any, *, prepare: bool | None = None) -> list[tuple[Any, ...]]:
        """Run one statement in its own transaction; → its rows ([] if it returns none).
        Errors are psycopg's."""
        conn = self.idle.pop() if self.idle else await self._connect()
        try:
            # One server-side-binding cursor per statement and connection, kept: psycopg then
            # reuses its adapters (see services._bound_cursor).
            cursor = conn.enigmo_cursors.get(sql)
            if cursor is None:
                cursor = conn.enigmo_cursors[sql] = psycopg.AsyncCursor(conn)
            await cursor.execute(sql, params, prepare=prepare)
            rows = await cursor.fetchall() if cursor.description else []
        except psycopg.Error:
            if not conn.closed and not conn.broken:  # the statement failed, not the connection
                self.idle.append(conn)
            raise
        except BaseException:  # cancelled mid-statement: its state is unknown
            conn.pgconn.finish()
            raise
        self.idle.append(conn)
        return rows


LOOP_DB = LoopDatabase()
