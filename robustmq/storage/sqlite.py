# -*- test-case-name: tests.test_storage -*-
"""
The C{sqlite} driver: shards as rows of one SQLite database
(C{<data_dir>/storage/sqlite/shards.sqlite3}), for small keyed state.

Each batch is one row C{(shard, base, next, max_ts, size, data)} holding the
same batch bytes the other drivers store. The list of batches (offsets,
sizes, timestamps, not the bytes) is kept in memory; the batches of the
current reactor turn wait in memory too until their transaction commits,
and their appends' Deferreds fire after that COMMIT.
"""

import os
import sqlite3

from twisted.internet.defer import fail, succeed

from robustmq.storage.driver import Driver, now_ms
from robustmq.storage.errors import ShardExists, StorageError
from robustmq.storage.indexed import IndexedShard
from robustmq.storage.sqlwriter import SqliteWriter, synchronous_for

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS shards ("
    " id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, log_start INTEGER NOT NULL,"
    " retention_bytes INTEGER, retention_ms INTEGER)",
    "CREATE TABLE IF NOT EXISTS batches ("
    " shard INTEGER NOT NULL, base INTEGER NOT NULL, next INTEGER NOT NULL,"
    " max_ts INTEGER NOT NULL, size INTEGER NOT NULL, data BLOB NOT NULL,"
    " PRIMARY KEY (shard, base))",
)


class SqliteShard(IndexedShard):
    """
    An L{IndexedShard} whose bytes are in the database, or in C{pending}
    (base offset to bytes) until committed.
    """

    def __init__(self, shard_id, name, log_start=0, retention_bytes=None, retention_ms=None):
        IndexedShard.__init__(self, name, log_start, log_start, retention_bytes, retention_ms)
        self.id = shard_id
        self.pending = {}


def _load(conn):
    for statement in _SCHEMA:
        conn.execute(statement)
    shards = []
    for row in conn.execute(
        "SELECT id, name, log_start, retention_bytes, retention_ms FROM shards ORDER BY id"
    ).fetchall():
        shard = SqliteShard(*row)
        for base, nxt, max_ts, size in conn.execute(
            "SELECT base, next, max_ts, size FROM batches WHERE shard = ? ORDER BY base",
            (shard.id,),
        ):
            shard.add(base, nxt, size, max_ts)
        if shard.next_offset < shard.log_start:
            shard.next_offset = shard.log_start
        shards.append(shard)
    return shards


def _insert_shard(conn, shard_id, name, retention_bytes, retention_ms):
    conn.execute(
        "INSERT INTO shards (id, name, log_start, retention_bytes, retention_ms)"
        " VALUES (?, ?, 0, ?, ?)",
        (shard_id, name, retention_bytes, retention_ms),
    )


def _set_retention(conn, shard_id, retention_bytes, retention_ms):
    conn.execute(
        "UPDATE shards SET retention_bytes = ?, retention_ms = ? WHERE id = ?",
        (retention_bytes, retention_ms, shard_id),
    )


def _delete_shard(conn, shard_id):
    conn.execute("DELETE FROM batches WHERE shard = ?", (shard_id,))
    conn.execute("DELETE FROM shards WHERE id = ?", (shard_id,))


def _insert_batches(conn, rows):
    conn.executemany(
        "INSERT INTO batches (shard, base, next, max_ts, size, data) VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )


def _truncate(conn, shard_id, offset):
    conn.execute("DELETE FROM batches WHERE shard = ? AND next <= ?", (shard_id, offset))
    conn.execute("UPDATE shards SET log_start = ? WHERE id = ?", (offset, shard_id))


class SqliteDriver(Driver):
    """
    Shards in one SQLite database.
    """

    name = "sqlite"

    def __init__(self, config, data_dir, reactor, pool):
        Driver.__init__(self, config, data_dir, reactor, pool)
        self.directory = os.path.join(data_dir, "storage", "sqlite")
        self.path = os.path.join(self.directory, "shards.sqlite3")
        self.writer = SqliteWriter(
            reactor, self.path, synchronous_for(config.fsync_policy), pool, "sqlite-storage"
        )
        self._reader = None
        self._next_id = 1

    def open(self):
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as e:
            return fail(StorageError.from_os_error("create " + self.directory, e))
        return self.writer.open(_load).addCallback(self._loaded)

    def _loaded(self, shards):
        for shard in shards:
            self.shards[shard.name] = shard
            self._next_id = max(self._next_id, shard.id + 1)
        self._reader = sqlite3.connect(self.path, isolation_level=None)
        self._reader.execute("PRAGMA query_only = 1")
        self.opened = True
        self.log.info("sqlite storage opened: {count} shards", count=len(shards))

    def close(self):
        if self.closing:
            return succeed(None)
        self.closing = True
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        d = self.writer.close()

        def closed(result):
            self.opened = False
            self.shards.clear()
            return result

        return d.addBoth(closed)

    # shards

    def create(self, name, retention_bytes=None, retention_ms=None):
        if name in self.shards:
            raise ShardExists("shard {!r} exists".format(name))
        if not self.opened or self.closing:
            raise StorageError("the sqlite storage driver is not open")
        shard = SqliteShard(self._next_id, name, 0, retention_bytes, retention_ms)
        self._next_id += 1
        self.shards[name] = shard
        d = self.writer.submit(_insert_shard, shard.id, name, retention_bytes, retention_ms)
        d.addErrback(self._failed, shard).addErrback(lambda _: None)

    def delete(self, name):
        try:
            shard = self.get(name)
            del self.shards[name]
            return self.writer.submit(_delete_shard, shard.id)
        except Exception:
            return fail()

    def _failed(self, failure, shard):
        shard.failed = failure.getErrorMessage()
        self.log.critical(
            "storage: shard {shard!r} is now read-only: {why}", shard=shard.name, why=shard.failed
        )
        return failure

    # appends

    def _store(self, shard, data, batches, patched):
        rows = []
        if len(batches) == 1 and isinstance(data, bytes):
            _, base, nxt, size, max_ts = batches[0]
            shard.pending[base] = data
            shard.add(base, nxt, size, max_ts)
            rows.append((shard.id, base, nxt, max_ts, size, data))
        else:
            view = memoryview(data)
            for pos, base, nxt, size, max_ts in batches:
                blob = bytes(view[pos:pos + size])
                shard.pending[base] = blob
                shard.add(base, nxt, size, max_ts)
                rows.append((shard.id, base, nxt, max_ts, size, blob))
        d = self.writer.submit(_insert_batches, rows)

        def committed(result):
            pending = shard.pending
            for row in rows:
                pending.pop(row[1], None)
            return result

        return d.addCallbacks(committed, self._failed, errbackArgs=(shard,))

    # reads

    def _fetch(self, shard, bases):
        """
        The bytes of the batches with these base offsets (consecutive).
        """
        pending = shard.pending
        committed = [b for b in bases if b not in pending]
        out = []
        if committed:
            rows = self._reader.execute(
                "SELECT base, data FROM batches WHERE shard = ? AND base >= ? AND base <= ?"
                " ORDER BY base",
                (shard.id, committed[0], committed[-1]),
            ).fetchall()
            found = dict(rows)
            for base in committed:
                data = found.get(base)
                if data is None:
                    raise StorageError(
                        "shard {!r}: the batch at offset {} is missing".format(shard.name, base)
                    )
                out.append(data)
        out.extend(pending[b] for b in bases if b in pending)
        return out

    def read(self, name, offset, max_bytes):
        shard = self.get(name)
        i, j = shard.select(offset, max_bytes)
        if i == j:
            return []
        return self._fetch(shard, list(shard.bases[i:j]))

    def offset_for_timestamp(self, name, timestamp_ms):
        shard = self.get(name)
        for i in shard.first_with_timestamp(timestamp_ms):
            batch = self._fetch(shard, [shard.bases[i]])[0]
            found = self.first_at_or_after(batch, timestamp_ms, shard.log_start)
            if found is not None:
                return found
        return None

    def size_bytes(self, name):
        return self.get(name).total_bytes

    # deleting

    def truncate_before(self, name, offset):
        try:
            shard = self.get(name)
            if not shard.truncation_needed(offset):
                return succeed(None)
        except Exception:
            return fail()
        return self._truncate(shard, offset)

    def _truncate(self, shard, offset):
        shard.drop_before(offset)
        return self.writer.submit(_truncate, shard.id, shard.log_start).addCallback(
            lambda _: None
        )

    def apply_retention(self, now=None):
        now = now_ms(self.reactor) if now is None else now
        for shard in list(self.shards.values()):
            self.retain(shard, now)

    def retain(self, shard, now):
        rb, rm = self.retention_of(shard)
        cut = shard.retention_offset(rb, rm, now)
        if cut is not None:
            self._truncate(shard, cut).addErrback(
                lambda f: self.log.failure("storage: sqlite retention failed", f)
            )

    def _save_settings(self, shard):
        return self.writer.submit(
            _set_retention, shard.id, shard.retention_bytes, shard.retention_ms
        ).addCallback(lambda _: None)
