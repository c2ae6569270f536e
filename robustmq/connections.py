# -*- test-case-name: tests.test_shared -*-
"""
The connection manager: every live connection of every protocol, the limits
on accepting new ones, and the traffic totals that metrics report.
"""

import itertools

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from robustmq.interfaces import IConnectionInfo, IConnectionManager


@implementer(IConnectionInfo)
class ConnectionInfo:
    """
    One live connection. Protocols bump the counters directly: they are plain
    integer attributes so the hot paths pay nothing more.
    """

    __slots__ = (
        "id", "protocol", "listener", "peer", "peer_host", "tls", "user",
        "client_id", "connected_at", "bytes_in", "bytes_out", "messages_in",
        "messages_out", "conn",
    )

    def __init__(self, conn_id, protocol, listener, peer, peer_host, tls, connected_at, conn):
        self.id = conn_id
        self.protocol = protocol
        self.listener = listener
        self.peer = peer
        self.peer_host = peer_host
        self.tls = tls
        self.user = None
        self.client_id = None
        self.connected_at = connected_at
        self.bytes_in = 0
        self.bytes_out = 0
        self.messages_in = 0
        self.messages_out = 0
        self.conn = conn

    def as_dict(self):
        return {
            "id": self.id,
            "protocol": self.protocol,
            "listener": self.listener,
            "peer": self.peer,
            "tls": self.tls,
            "user": self.user,
            "client_id": self.client_id,
            "connected_at": self.connected_at,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
        }


@implementer(IConnectionManager)
class ConnectionManager:
    """
    @param max_connections: limit over all protocols (0 = unlimited).
    @param rate_limiter: the shared L{robustmq.interfaces.IRateLimiter}.
    """

    log = Logger()

    def __init__(self, reactor, rate_limiter, max_connections=0):
        self._reactor = reactor
        self._rate_limiter = rate_limiter
        self.max_connections = max_connections
        self._ids = itertools.count(1)
        self._conns = {}
        self._per_listener = {}
        self._per_protocol = {}
        self._listener_limits = {}
        self._totals = {}
        self._drain_waiters = []
        self.accepting = True

    def set_listener_limit(self, listener, max_connections, connect_rate=0.0, connect_burst=1):
        self._listener_limits[listener] = (max_connections, float(connect_rate), float(connect_burst))

    def admit(self, protocol_name, listener, peer_host):
        if not self.accepting:
            return "not_accepting"
        if self.max_connections and len(self._conns) >= self.max_connections:
            return "max_connections"
        limit, rate, burst = self._listener_limits.get(listener, (0, 0.0, 1.0))
        if limit and self._per_listener.get(listener, 0) >= limit:
            return "listener_max_connections"
        if rate > 0 and not self._rate_limiter.try_acquire(
            ("connect", listener, peer_host), 1.0, rate, burst
        ):
            return "connect_rate"
        return None

    def register(self, conn, protocol_name, listener, peer, peer_host, tls):
        info = ConnectionInfo(
            next(self._ids), protocol_name, listener, peer, peer_host, tls,
            self._reactor.seconds(), conn,
        )
        self._conns[info.id] = info
        self._per_listener[listener] = self._per_listener.get(listener, 0) + 1
        self._per_protocol[protocol_name] = self._per_protocol.get(protocol_name, 0) + 1
        self._totals.setdefault(protocol_name, [0, 0, 0, 0])
        return info

    def unregister(self, info):
        if self._conns.pop(info.id, None) is None:
            return
        self._per_listener[info.listener] -= 1
        self._per_protocol[info.protocol] -= 1
        t = self._totals[info.protocol]
        t[0] += info.bytes_in
        t[1] += info.bytes_out
        t[2] += info.messages_in
        t[3] += info.messages_out
        info.conn = None
        if self._drain_waiters:
            self._check_drained()

    def _check_drained(self):
        still = []
        for protocol_name, d in self._drain_waiters:
            if self.count(protocol_name) == 0:
                d.callback(None)
            else:
                still.append((protocol_name, d))
        self._drain_waiters = still

    def when_drained(self, protocol_name=None):
        d = Deferred()
        self._drain_waiters.append((protocol_name, d))
        self._check_drained()
        return d

    def get(self, conn_id):
        return self._conns.get(conn_id)

    def connections(self, protocol_name=None):
        return [
            c for c in self._conns.values()
            if protocol_name is None or c.protocol == protocol_name
        ]

    def count(self, protocol_name=None, listener=None):
        if listener is not None:
            return self._per_listener.get(listener, 0)
        if protocol_name is not None:
            return self._per_protocol.get(protocol_name, 0)
        return len(self._conns)

    def close(self, conn_id, reason="closed by admin"):
        info = self._conns.get(conn_id)
        if info is None:
            return False
        self.log.info(
            "closing {protocol} connection {id} from {peer}: {reason}",
            protocol=info.protocol, id=info.id, peer=info.peer, reason=reason,
        )
        info.conn.close_gracefully()
        return True

    def totals(self):
        out = {p: list(t) for p, t in self._totals.items()}
        for c in self._conns.values():
            t = out[c.protocol]
            t[0] += c.bytes_in
            t[1] += c.bytes_out
            t[2] += c.messages_in
            t[3] += c.messages_out
        return out
