"""``tiled serve``, with a DuckDB connection of its own for every request.

tiled 0.2.20 serves its DuckDB tables through one connection (a sqlalchemy ``StaticPool``) that
all its worker threads share.  Two runs appended at once then race on that connection's
transaction ("No active transaction, cannot commit", a 500 to both writers), and soon the
server dies (SIGSEGV in libc; measured: 6 threads appending to 6 tables killed it within 2 s,
and it killed the session's server once in a full test run).  DuckDB supports many connections
to one database, one per thread, so here every ``connect()`` clones a fresh one (``NullPool``).
The rest is tiled's own command line: ``python -m xas_bluesky.apps.tiled_serve serve catalog ...``.
"""

from __future__ import annotations

import functools
import sys

import sqlalchemy.pool
from tiled import storage

_shared_pool = storage.SQLStorage._connection_pool.func


def _connection_pool(self: storage.SQLStorage) -> sqlalchemy.pool.Pool:
    if self.dialect == "duckdb":
        return sqlalchemy.pool.NullPool(self._adbc_connection.adbc_clone)
    return _shared_pool(self)


def patch() -> None:
    """Give every DuckDB ``connect()`` of tiled's SQL storage its own connection."""
    prop = functools.cached_property(_connection_pool)
    prop.__set_name__(storage.SQLStorage, "_connection_pool")
    storage.SQLStorage._connection_pool = prop


def main() -> int:
    from tiled.commandline.main import main as tiled_main

    patch()
    sys.argv[0] = "tiled"
    return tiled_main() or 0


if __name__ == "__main__":
    sys.exit(main())
