# -*- test-case-name: tests.test_amqp_clients -*-
"""
The AMQP 0-9-1 service: its listeners, the shared broker state, the
resource watch that blocks publishers (connection.blocked) and the graceful
stop that flushes durable queues.
"""

import os

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from robustmq.amqp.broker import Broker
from robustmq.amqp.factory import AmqpFactory
from robustmq.network.service import ProtocolService

#: Seconds between two checks of memory and disk use.
WATCH_INTERVAL_S = 1.0


class ResourceWatch:
    """
    Blocks the publishing connections while the messages held in queues
    are over C{max_ready_bytes} or the data directory has less than
    C{disk_free_limit_bytes} free; unblocks them when it is over.
    """

    log = Logger()

    def __init__(self, broker, config, data_dir=None):
        self.broker = broker
        self.config = config
        self.data_dir = data_dir
        self.connections = set()
        self.alarm = None

    def connection_opened(self, conn):
        self.connections.add(conn)

    def publisher_started(self, conn):
        """
        C{conn} published its first message: blocked at once during an
        alarm. As in RabbitMQ, a connection that only consumes is never
        blocked, so consumers can drain the queues that raised the alarm.
        """
        if self.alarm:
            conn.set_blocked(True, self.alarm)

    def connection_lost(self, conn):
        self.connections.discard(conn)

    def ready_bytes(self):
        total = 0
        for vhost in self.broker.vhosts.values():
            for q in vhost.queues.values():
                total += q.ready_bytes
        return total

    def disk_free(self):
        if not self.data_dir:
            return None
        try:
            st = os.statvfs(self.data_dir)
        except (OSError, AttributeError):
            return None
        return st.f_bavail * st.f_frsize

    def check(self):
        alarm = None
        limit = self.config.max_ready_bytes
        if limit and self.ready_bytes() > limit:
            alarm = "low on memory"
        disk_limit = self.config.disk_free_limit_bytes
        if alarm is None and disk_limit:
            free = self.disk_free()
            if free is not None and free < disk_limit:
                alarm = "low on disk"
        if alarm != self.alarm:
            self.log.warn("amqp: publishers {what}{reason}",
                          what="blocked: " if alarm else "unblocked", reason=alarm or "")
            self.alarm = alarm
        for conn in list(self.connections):
            if alarm and conn.publisher:
                conn.set_blocked(True, alarm)
            elif not alarm and conn.blocked:
                conn.set_blocked(False)


class AmqpService(ProtocolService):
    """
    @ivar broker: the L{Broker} shared by every listener.
    """

    protocol_name = "amqp"
    factory_class = AmqpFactory

    def __init__(self, params):
        storage = getattr(params, "storage", None)
        self.broker = Broker(params.reactor, storage, getattr(params, "meta", None),
                             params.security.amqp_vhosts)
        self.watch = ResourceWatch(self.broker, params.config,
                                   getattr(storage, "data_dir", None))
        self._watch_loop = None
        ProtocolService.__init__(self, params)

    def build_factory(self, endpoint):
        return self.factory_class(self.params, endpoint, self.broker, self.watch)

    def startService(self):
        ProtocolService.startService(self)
        loop = self._watch_loop = LoopingCall(self.watch.check)
        loop.clock = self.reactor
        loop.start(WATCH_INTERVAL_S, now=False)

    def stopService(self):
        loop = self._watch_loop
        self._watch_loop = None
        if loop is not None and loop.running:
            loop.stop()
        return ProtocolService.stopService(self)

    def flush(self):
        """
        Write what durable queues still hold in memory for storage.
        """
        if not self.broker.loaded:
            return None
        return self.broker.close()
