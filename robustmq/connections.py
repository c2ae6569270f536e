# -*- test-case-name: tests.test_shared -*-
"""
The connection manager: every live connection of every protocol, the limits
on accepting new ones, and the traffic totals that metrics report.
"""

import itertools
import os

try:
    import resource
except ImportError:  # pragma: no cover (not POSIX)
    resource = None

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


def _fd_directory():
    for path in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(path):
            return path
    return None


def count_open_fds(directory=_fd_directory()):
    """
    The file descriptors this process has open, or L{None} when the system
    does not tell.
    """
    if directory is None:
        return None
    try:
        # listdir holds one descriptor of its own while it reads.
        return len(os.listdir(directory)) - 1
    except OSError:
        return None


def fd_limit():
    """
    The soft C{RLIMIT_NOFILE} of this process, or L{None} when unlimited
    or unknown.
    """
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return None
    return soft


def raise_fd_limit():
    """
    Raise the soft C{RLIMIT_NOFILE} of this process to its hard limit.

    @return: C{(soft, hard)} after the change; L{None} for unlimited or
        unknown.
    """
    if resource is None:
        return None, None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    infinity = resource.RLIM_INFINITY
    return (None if soft == infinity else soft), (None if hard == infinity else hard)


class DescriptorGuard:
    """
    Keeps new connections from taking the last file descriptors of the
    process, so storage never fails with EMFILE: a connection is admitted
    while C{open + reserve + spare()} stays below the soft
    C{RLIMIT_NOFILE}.

    Counting open descriptors lists C{/proc/self/fd}: it is done at most
    every C{interval_s} while far from the limit (admitted connections are
    counted in between), and at most every C{near_interval_s} when close.

    @param reserve: descriptors kept free (C{[node] fd_reserve}); 0 turns
        the check off.
    @param spare: a callable giving the descriptors storage may still open
        (its C{max_open_files} minus those open).
    @param count: a callable giving the descriptors open now (L{None} when
        unknown); L{count_open_fds} by default.
    @param limit: a callable giving the soft limit (L{None} when
        unlimited); L{fd_limit} by default.
    @ivar refused: connections refused since the start.
    """

    log = Logger()
    interval_s = 1.0
    near_interval_s = 0.05
    #: Below this estimated room, count at every admission (rate-bounded).
    margin = 64
    log_every_s = 60.0

    def __init__(self, reactor, reserve, spare=None, count=None, limit=None):
        self._reactor = reactor
        self.reserve = reserve
        self._spare = spare if spare is not None else (lambda: 0)
        self._count = count if count is not None else count_open_fds
        self._limit = limit if limit is not None else fd_limit
        self._checked = None
        self._room = 0
        self._open = None
        self._max = None
        self.refused = 0
        self._refused_since_log = 0
        self._logged = None

    def room(self):
        """
        Measure now: connections that may still be admitted (may be
        negative), or L{None} when there is no known limit.
        """
        self._checked = self._reactor.seconds()
        limit = self._limit()
        count = self._count() if limit is not None else None
        if limit is None or count is None:
            self._room = None
            return None
        self._open, self._max = count, limit
        self._room = limit - count - self.reserve - max(0, self._spare())
        return self._room

    def admit(self):
        """
        Whether one more connection may be accepted now.
        """
        if not self.reserve:
            return True
        now = self._reactor.seconds()
        last = self._checked
        if last is None or now - last >= self.interval_s or (
            self._room is not None and self._room <= self.margin
            and now - last >= self.near_interval_s
        ):
            self.room()
        room = self._room
        if room is None:
            return True
        if room > 0:
            self._room = room - 1
            return True
        self.refused += 1
        self._refused_since_log += 1
        if self._logged is None or now - self._logged >= self.log_every_s:
            self.log.warn(
                "refusing new connections: {open} file descriptors open of a limit of"
                " {limit}, {reserve} kept free plus {spare} for storage files;"
                " {count} refused since the last report",
                open=self._open, limit=self._max, reserve=self.reserve,
                spare=max(0, self._spare()), count=self._refused_since_log,
            )
            self._logged = now
            self._refused_since_log = 0
        return False


@implementer(IConnectionManager)
class ConnectionManager:
    """
    @param max_connections: limit over all protocols (0 = unlimited).
    @param rate_limiter: the shared L{robustmq.interfaces.IRateLimiter}.
    @param fd_guard: a L{DescriptorGuard}, or L{None} for no check of
        the process's file descriptors.
    """

    log = Logger()

    def __init__(self, reactor, rate_limiter, max_connections=0, fd_guard=None):
        self._reactor = reactor
        self.fd_guard = fd_guard
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
        if self.fd_guard is not None and not self.fd_guard.admit():
            return "file_descriptors"
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
