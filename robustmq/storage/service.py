# -*- test-case-name: tests.test_storage_service -*-
"""
L{StorageService}: opens the storage engine, the committed offsets and the
metadata store when the broker starts, and closes them last when it stops.
"""

import fcntl
import os

from twisted.application.service import Service
from twisted.internet.defer import Deferred, FirstError, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from robustmq.meta.store import MetaStore
from robustmq.storage.errors import StorageError
from robustmq.storage.manager import StorageDriverManager
from robustmq.storage.offsets import OffsetManager


def _first_error(failure):
    if failure.check(FirstError):
        return failure.value.subFailure
    return failure


class StorageService(Service):
    """
    Owner of the shared L{StorageDriverManager}, L{OffsetManager} and
    L{MetaStore}.

    @ivar storage: the L{StorageDriverManager}.
    @ivar offsets: the L{OffsetManager}.
    @ivar meta: the L{MetaStore}.
    @ivar opened: a Deferred that fires once all three are open (or fails
        with the first error); one consumer only.
    """

    log = Logger()

    def __init__(self, config, data_dir, reactor):
        self.data_dir = data_dir
        self.reactor = reactor
        self.storage = StorageDriverManager(
            config, data_dir, reactor,
            retention_check_s=config.retention_check_interval_ms / 1000.0,
        )
        self.offsets = OffsetManager(config, data_dir, reactor)
        self.meta = MetaStore(config, data_dir, reactor)
        self.opened = Deferred()
        self._opening = None
        self._lock_fd = None

    def lock(self):
        """
        Take the data directory for this process alone (an exclusive
        C{flock} on C{data_dir/.lock}), so two brokers never share one.

        @raise StorageError: another process holds it, or it cannot be
            created.
        """
        if self._lock_fd is not None:
            return
        path = os.path.join(self.data_dir, ".lock")
        try:
            os.makedirs(self.data_dir, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StorageError.from_os_error("lock " + self.data_dir, e)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StorageError(
                "data_dir {} is in use by another process".format(self.data_dir)
            )
        os.ftruncate(fd, 0)
        os.write(fd, b"%d\n" % os.getpid())
        self._lock_fd = fd

    def unlock(self):
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def privilegedStartService(self):
        Service.privilegedStartService(self)
        self.lock()

    def startService(self):
        Service.startService(self)
        try:
            os.makedirs(self.data_dir, exist_ok=True)
        except OSError as e:
            self._opening = succeed(None)
            self.opened.errback(StorageError.from_os_error("create " + self.data_dir, e))
            return
        d = gatherResults(
            [self.meta.open(), self.offsets.open(), self.storage.open()], consumeErrors=True
        )
        d.addErrback(_first_error)
        self._opening = Deferred()

        def done(result):
            self._opening.callback(None)
            if isinstance(result, Failure):
                self.opened.errback(result)
            else:
                self.opened.callback(None)

        d.addBoth(done)

    def stopService(self):
        """
        Close all three (after the opening, if it is still going on).

        @return: a Deferred firing when everything is flushed and closed,
            with the first error if any.
        """
        Service.stopService(self)
        if self._opening is None:
            self.unlock()
            return succeed(None)

        def close(_):
            return gatherResults(
                [self.storage.close(), self.offsets.close(), self.meta.close()],
                consumeErrors=True,
            ).addErrback(_first_error)

        d = self._opening.addCallback(close)

        def unlock(result):
            self.unlock()
            return None if not isinstance(result, Failure) else result

        return d.addBoth(unlock)
