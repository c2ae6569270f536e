# -*- test-case-name: tests.test_shared -*-
"""
The one shared hook through which any service asks for the whole broker to stop.
"""

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from robustmq.interfaces import IShutdown


@implementer(IShutdown)
class Shutdown:
    """
    The first request wins; its reason is given to every waiter. What a
    request does is decided by the owner (L{robustmq.server.BrokerServer}),
    which waits on L{when_requested}.
    """

    log = Logger()

    def __init__(self):
        self.requested = False
        self.reason = None
        self._waiters = []

    def request(self, reason):
        if self.requested:
            return
        self.requested = True
        self.reason = reason
        self.log.warn("broker stop requested: {reason}", reason=reason)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(reason)

    def when_requested(self):
        d = Deferred()
        if self.requested:
            d.callback(self.reason)
        else:
            self._waiters.append(d)
        return d
