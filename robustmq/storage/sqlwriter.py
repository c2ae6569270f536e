# -*- test-case-name: tests.test_storage_offsets -*-
"""
One SQLite database written from one thread, with the writes of a reactor
turn grouped into one transaction.

Used by the C{sqlite} storage driver, the L{OffsetManager
<robustmq.storage.offsets.OffsetManager>} and the L{MetaStore
<robustmq.meta.store.MetaStore>}: callers keep what they need in memory and
submit their changes here; each change's Deferred fires once its
transaction is committed.
"""

import os
import sqlite3

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from robustmq.storage.errors import StorageError


def synchronous_for(fsync_policy):
    """
    The SQLite C{synchronous} setting of a storage fsync policy: C{FULL}
    (every commit reaches the disk) for C{every_batch}, else C{NORMAL}
    (in WAL mode a commit survives a killed process, not a power loss).
    """
    return "FULL" if fsync_policy == "every_batch" else "NORMAL"


def _transaction(conn, ops):
    """
    Run the C{(op, args, waiter)} of C{ops} in one transaction.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        results = [op(conn, *args) for op, args, _ in ops]
        conn.execute("COMMIT")
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise
    return results


class SqliteWriter:
    """
    The writer of one SQLite database file.

    Jobs run one at a time, in order, on the pool's threads; the connection
    is only ever used by the job that runs.

    @ivar path: the database file.
    """

    log = Logger()

    def __init__(self, reactor, path, synchronous="FULL", pool=None, name="sqlite"):
        self.reactor = reactor
        self.path = path
        self.synchronous = synchronous
        self.name = name
        self._own_pool = pool is None
        self.pool = pool if pool is not None else ThreadPool(1, 1, name="robustmq-" + name)
        self._conn = None
        self._ops = []
        self._queue = []
        self._busy = False
        self._flush_call = None
        self._shutdown_trigger = None
        self.opened = False
        self.closed = False

    # the job queue

    def _job(self, f, *args):
        """
        Run C{f(connection, *args)} after every job queued before it.
        """
        d = Deferred()
        self._queue.append((f, args, d))
        if not self._busy:
            self._next()
        return d

    def _next(self):
        if not self._queue:
            self._busy = False
            return
        self._busy = True
        f, args, d = self._queue.pop(0)
        job = deferToThreadPool(self.reactor, self.pool, self._call, f, args)

        def done(result):
            self._next()
            d.callback(result) if not isinstance(result, Failure) else d.errback(result)

        job.addBoth(done)

    def _call(self, f, args):
        return f(self._conn, *args)

    # opening and closing

    def open(self, setup):
        """
        Open the database and run C{setup(connection)} (create tables, load
        what the caller keeps in memory).

        The directory of the file is created if needed.

        @return: a Deferred firing with what C{setup} returns.
        """
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            return fail(StorageError.from_os_error("create " + directory, e))
        self.opened = True
        if self._own_pool:
            self.pool.start()
            self._shutdown_trigger = self.reactor.addSystemEventTrigger(
                "during", "shutdown", self._stop_pool
            )

        def connect(_conn):
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous={}".format(self.synchronous))
                conn.execute("BEGIN IMMEDIATE")
                result = setup(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            return result

        d = self._job(connect)
        d.addErrback(self._wrap_error, "open " + self.path)
        return d

    def _stop_pool(self):
        if self._own_pool and self.pool.started:
            self.pool.stop()

    def close(self):
        """
        Commit what is pending, close the database and stop the thread.
        """
        if self.closed:
            return succeed(None)
        self.closed = True
        if not self.opened:
            return succeed(None)
        if self._flush_call is not None:
            self._flush_call.cancel()
            self._flush_call = None
        self._flush()

        def disconnect(conn):
            if conn is not None:
                conn.close()
            self._conn = None

        d = self._job(disconnect)

        def stop(result):
            if self._shutdown_trigger is not None:
                self.reactor.removeSystemEventTrigger(self._shutdown_trigger)
                self._shutdown_trigger = None
            self._stop_pool()
            return result

        d.addBoth(stop)
        d.addErrback(self._wrap_error, "close " + self.path)
        return d

    # writes

    def submit(self, op, *args):
        """
        Run C{op(connection, *args)} in the transaction of this reactor
        turn.

        @return: a Deferred firing with what C{op} returned, after COMMIT;
            or failing with L{StorageError} when the transaction failed.
        """
        if self.closed:
            raise StorageError("{} is closed".format(self.path))
        d = Deferred()
        self._ops.append((op, args, d))
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self._flush)
        return d

    def run(self, f, *args):
        """
        Run C{f(connection, *args)} alone, in order with the transactions
        (for reads and maintenance).
        """
        return self._job(f, *args).addErrback(self._wrap_error, self.path)

    def _flush(self):
        self._flush_call = None
        if not self._ops:
            return
        ops = self._ops
        self._ops = []
        d = self._job(_transaction, ops)

        def committed(results):
            for (_, _, waiter), result in zip(ops, results):
                waiter.callback(result)

        def failed(failure):
            error = self._as_storage_error(failure, "write to " + self.path)
            self.log.error(
                "{path}: a transaction of {count} changes failed: {error}",
                path=self.path, count=len(ops), error=error,
            )
            for _, _, waiter in ops:
                waiter.errback(error)

        d.addCallbacks(committed, failed)

    @staticmethod
    def _as_storage_error(failure, what):
        e = failure.value
        if isinstance(e, StorageError):
            return e
        if isinstance(e, OSError):
            return StorageError.from_os_error(what, e)
        return StorageError("{}: {}".format(what, e))

    def _wrap_error(self, failure, what):
        raise self._as_storage_error(failure, what)
