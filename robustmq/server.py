# -*- test-case-name: tests.test_server -*-
"""
L{BrokerServer}: the root of the broker's service tree, and the only place
where the shared objects are created.

Embedding::

    from robustmq.config import load_config
    from robustmq.server import BrokerServer

    broker = BrokerServer(load_config("conf/robustmq.toml"), reactor=reactor)
    broker.setServiceParent(my_multi_service)
"""

import os

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from robustmq.admin.params import AdminParams
from robustmq.admin.service import AdminService
from robustmq.amqp.params import AmqpParams
from robustmq.amqp.service import AmqpService
from robustmq.connections import ConnectionManager, DescriptorGuard, raise_fd_limit
from robustmq.kafka.params import KafkaParams
from robustmq.kafka.service import KafkaService
from robustmq.metrics import Metrics, ReactorLagService
from robustmq.mqtt.params import MqttParams
from robustmq.mqtt.service import MqttService
from robustmq.network.service import ListenError
from robustmq.node import NodeCache
from robustmq.ratelimit import RateLimiter
from robustmq.security import Authenticator, AuthenticatorService, Authorizer
from robustmq.shutdown import Shutdown
from robustmq.storage.service import StorageService


class BrokerServer(MultiService):
    """
    The broker: shared objects, then one child service per protocol.

    Children are started in order (storage, admin, protocols) and stopped in
    reverse: first every protocol together (each stops listening, closes its
    connections gracefully and waits for them within
    C{[node] shutdown_grace_s}), then the admin listeners, then storage is
    flushed and closed. The first error of any child reaches the caller of
    C{stopService}.

    @ivar status: C{"starting"}, C{"ok"} or C{"stopping"} (what C{/health} says).
    @ivar ready: a Deferred that fires when the broker serves clients.
    """

    log = Logger()

    def __init__(self, config, reactor=None, stop_reactor_on_request=False):
        MultiService.__init__(self)
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self.stop_reactor_on_request = stop_reactor_on_request
        self.status = "starting"
        self.ready = Deferred()
        self.protocols = []
        self.shared_services = []

        # The shared objects: created here and nowhere else.
        node = config.node
        self.data_dir = os.path.abspath(node.data_dir)
        self.rate_limiter = RateLimiter(reactor)
        self.node = NodeCache(node.node_id, reactor.seconds())
        self.connections = ConnectionManager(reactor, self.rate_limiter, node.max_connections)
        self.connections.accepting = False
        self.metrics = Metrics(self.connections, self.node)
        self.authenticator = Authenticator.from_config(config.security, reactor, self.metrics)
        self.authorizer = Authorizer.from_config(config.security)
        self.shutdown = Shutdown()
        self.storage_service = StorageService(config.storage, self.data_dir, reactor)
        self.storage = self.storage_service.storage
        self.offsets = self.storage_service.offsets
        self.meta = self.storage_service.meta
        max_open_files = config.storage.max_open_files
        self.connections.fd_guard = DescriptorGuard(
            reactor, node.fd_reserve,
            spare=lambda: max_open_files - self.storage.open_files(),
        )

        self.add_shared(self.storage_service)
        self.add_shared(AuthenticatorService(self.authenticator))
        self.add_shared(ReactorLagService(reactor, self.metrics))
        self.admin = AdminService(AdminParams(
            reactor, config.admin, self.connections, self.node, self.metrics,
            self.shutdown, lambda: self.status, self.authenticator, config.security,
        ))
        self.admin.setServiceParent(self)
        self.build_protocols()
        self.shutdown.when_requested().addCallback(self._shutdown_requested)

    def build_protocols(self):
        """
        One line per protocol: its service, given its Params.
        """
        grace = self.config.node.shutdown_grace_s
        self.add_protocol(MqttService(MqttParams(
            self.reactor, self.config.mqtt_runtime, grace, self.connections,
            self.rate_limiter, self.node, self.metrics, self.authenticator,
            self.authorizer, self.storage, self.meta, self.shutdown,
        )))
        self.add_protocol(KafkaService(KafkaParams(
            self.reactor, self.config.kafka_runtime, grace, self.connections,
            self.rate_limiter, self.node, self.metrics, self.authenticator,
            self.storage, self.offsets, self.meta, self.shutdown, self.authorizer,
        )))
        self.add_protocol(AmqpService(AmqpParams(
            self.reactor, self.config.amqp_runtime, self.config.security, grace,
            self.connections,
            self.rate_limiter, self.node, self.metrics, self.authenticator,
            self.authorizer, self.storage, self.meta, self.shutdown,
        )))

    def add_shared(self, service):
        service.setServiceParent(self)
        self.shared_services.append(service)

    def add_protocol(self, service):
        service.setServiceParent(self)
        self.protocols.append(service)

    # starting

    def privilegedStartService(self):
        """
        Take the data directory (L{StorageError} when another process holds
        it), then bind every listener of every protocol before anything
        runs; when any fails, close those bound and raise one
        L{ListenError} naming all.
        """
        self.check_fd_limit()
        for service in self.shared_services:
            service.privilegedStartService()
        problems = []
        for service in [self.admin] + self.protocols:
            try:
                service.privilegedStartService()
            except ListenError as e:
                problems.extend(e.problems)
        if problems:
            for service in [self.admin] + self.protocols:
                service.stop_listening()
            self.status = "failed"
            self.storage_service.unlock()
            raise ListenError(problems)

    def check_fd_limit(self):
        """
        Raise the soft limit of open files to the hard one, and warn when
        it leaves little room for connections next to storage's files.
        """
        soft, hard = raise_fd_limit()
        if soft is None:
            return
        wanted = self.config.storage.max_open_files + self.config.node.fd_reserve
        if self.config.node.fd_reserve and soft < wanted + 1024:
            self.log.warn(
                "the process may open {soft} files (RLIMIT_NOFILE): storage.max_open_files"
                " ({files}) and node.fd_reserve ({reserve}) leave {left} for connections",
                soft=soft, files=self.config.storage.max_open_files,
                reserve=self.config.node.fd_reserve, left=max(0, soft - wanted),
            )

    def startService(self):
        MultiService.startService(self)
        d = self.storage_service.opened
        d.addCallback(self._opened)
        d.addErrback(self._open_failed)

    def _opened(self, _):
        if self.status != "starting":
            return
        self.status = "ok"
        self.connections.accepting = True
        self.log.info(
            "robustmq {version} node {node_id} ready, data in {data_dir}",
            version=self.node.version, node_id=self.node.node_id, data_dir=self.data_dir,
        )
        self.ready.callback(self)

    def _open_failed(self, failure):
        self.log.failure("storage could not be opened", failure)
        if not self.ready.called:
            self.ready.errback(failure)
        self.shutdown.request("storage could not be opened: {}".format(failure.getErrorMessage()))

    def _shutdown_requested(self, reason):
        if self.stop_reactor_on_request and self.reactor.running:
            self.reactor.stop()
        elif self.running:
            self.stopService()

    # stopping

    def stopService(self):
        """
        Protocols (all together), then admin, then storage. Bounded by the
        grace period plus a margin for flushing storage.
        """
        if getattr(self, "_stopping", None) is not None:
            return self._stopping
        self.status = "stopping"
        self.connections.accepting = False
        self.running = 0
        errors = []

        def collect(result):
            if isinstance(result, Failure):
                errors.append(result)
            return None

        def stop_all(services):
            ds = [maybeDeferred(s.stopService).addBoth(collect) for s in reversed(services)]
            return gatherResults(ds)

        d = stop_all(self.protocols)
        d.addCallback(lambda _: stop_all([self.admin]))
        d.addCallback(lambda _: stop_all(self.shared_services))

        def finished(_):
            self.log.info("robustmq stopped")
            return errors[0] if errors else None

        d.addCallback(finished)
        self._stopping = d
        return d
