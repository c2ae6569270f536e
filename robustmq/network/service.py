# -*- test-case-name: tests.test_network -*-
"""
Listener services from endpoint strings, and the base service of a protocol:
its listeners, and a graceful stop that closes its live connections.
"""

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure


class ListenError(Exception):
    """
    A listener could not be bound.

    @ivar problems: one line per listener that failed.
    """

    def __init__(self, problems):
        Exception.__init__(self, "; ".join(problems))
        self.problems = problems


def describe_address(address):
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        name = getattr(address, "name", None)
        return str(name if name is not None else address)
    if ":" in host:
        host = "[{}]".format(host)
    return "{}:{}".format(host, port)


class GuardedFactory:
    """
    A server factory refusing new connections (closed right after accept)
    while the process is short of file descriptors, for listeners whose
    factory does not ask the connection manager (the admin HTTP site).

    @param factory: the factory wrapped; everything but C{buildProtocol}
        is its own.
    @param connections: the connection manager, whose C{fd_guard} decides.
    @param metrics: counts refusals as C{connections_rejected}.
    """

    def __init__(self, factory, connections, metrics, protocol_name):
        self.__dict__["_factory"] = factory
        self.__dict__["_connections"] = connections
        self.__dict__["_metrics"] = metrics
        self.__dict__["_protocol_name"] = protocol_name

    def buildProtocol(self, addr):
        guard = self._connections.fd_guard
        if guard is not None and not guard.admit():
            self._metrics.connection_rejected(self._protocol_name, "file_descriptors")
            return None
        return self._factory.buildProtocol(addr)

    def __getattr__(self, name):
        return getattr(self._factory, name)

    def __setattr__(self, name, value):
        setattr(self._factory, name, value)


class ListenerService(Service):
    """
    Listens on one endpoint string. Binding happens in
    C{privilegedStartService} and is synchronous for every endpoint kind the
    broker ships (tcp, ssl, mtls, unix, ws, wss), so a port already in use
    stops startup before the broker runs.

    @ivar key: the config key path of this listener, for error messages.
    """

    log = Logger()

    def __init__(self, protocol_name, endpoint, factory, reactor, node, key):
        self.protocol_name = protocol_name
        self.endpoint = endpoint
        self.factory = factory
        self.reactor = reactor
        self.node = node
        self.key = key
        self.port = None
        self.address = None
        self.error = None

    def privilegedStartService(self):
        Service.privilegedStartService(self)
        self.bind()

    def bind(self):
        if self.port is not None:
            return
        self.node.set_listener(self.protocol_name, self.endpoint, None, "starting")
        result = []
        try:
            d = serverFromString(self.reactor, self.endpoint).listen(self.factory)
        except Exception:
            d = Failure()
        if isinstance(d, Failure):
            result.append(d)
        else:
            d.addBoth(result.append)
        if not result:
            self.error = "{}: {}: did not bind at once".format(self.key, self.endpoint)
            self.node.set_listener(self.protocol_name, self.endpoint, None, "failed")
            raise ListenError([self.error])
        outcome = result[0]
        if isinstance(outcome, Failure):
            self.error = "{}: cannot listen on '{}': {}".format(
                self.key, self.endpoint, outcome.getErrorMessage()
            )
            self.node.set_listener(self.protocol_name, self.endpoint, None, "failed")
            raise ListenError([self.error])
        self.port = outcome
        self.address = describe_address(self.port.getHost())
        self.node.set_listener(self.protocol_name, self.endpoint, self.address, "listening")
        self.log.info(
            "{protocol} listening on {endpoint} at {address}",
            protocol=self.protocol_name, endpoint=self.endpoint, address=self.address,
        )

    def startService(self):
        Service.startService(self)
        self.bind()

    def stopService(self):
        Service.stopService(self)
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        self.node.set_listener(self.protocol_name, self.endpoint, self.address, "stopped")
        d = port.stopListening()
        return d if isinstance(d, Deferred) else succeed(None)


class ListeningService(MultiService):
    """
    A service owning some L{ListenerService}s: binds them all before the
    broker runs (reporting every listener that failed at once) and stops them
    together.
    """

    log = Logger()
    protocol_name = "base"

    def __init__(self, reactor, node):
        MultiService.__init__(self)
        self.reactor = reactor
        self.node = node
        self.listeners = []

    def add_listener(self, endpoint, factory, key):
        listener = ListenerService(
            self.protocol_name, endpoint, factory, self.reactor, self.node, key
        )
        listener.setServiceParent(self)
        self.listeners.append(listener)
        return listener

    def privilegedStartService(self):
        problems = []
        for listener in self.listeners:
            try:
                listener.bind()
            except ListenError as e:
                problems.extend(e.problems)
        if problems:
            raise ListenError(problems)
        MultiService.privilegedStartService(self)

    def stop_listening(self):
        """
        Stop every listener; fires with the first error, after all stopped.
        """
        self.running = 0
        d = gatherResults([l.stopService() for l in reversed(self.listeners)], consumeErrors=True)
        d.addErrback(lambda f: f.value.subFailure)
        return d

    def stopService(self):
        return self.stop_listening()


class ProtocolService(ListeningService):
    """
    The service of one protocol: one L{ListenerService} per endpoint string
    of C{params.config.network.listeners}, and a graceful stop.

    Subclasses set C{protocol_name} and C{factory_class}, and may override
    L{flush} (work to finish after the last connection is gone) and
    L{build_factory}.
    """

    factory_class = None
    config_key = None

    def __init__(self, params):
        ListeningService.__init__(self, params.reactor, params.node)
        self.params = params
        network = params.config.network
        key = self.config_key or "{}_runtime".format(self.protocol_name)
        for i, endpoint in enumerate(network.listeners):
            params.connections.set_listener_limit(
                endpoint, network.max_connections,
                network.connect_rate_per_ip, network.connect_burst_per_ip,
            )
            self.add_listener(
                endpoint, self.build_factory(endpoint),
                "{}.network.listeners[{}]".format(key, i),
            )

    def build_factory(self, endpoint):
        return self.factory_class(self.params, endpoint)

    def stopService(self):
        """
        Stop listening, close every live connection the protocol's way, wait
        for them (at most C{params.shutdown_grace_s}, then abort the rest),
        then L{flush}. Fires with the first error of any step.
        """
        errors = []
        d = self.stop_listening()
        d.addErrback(errors.append)
        d.addCallback(lambda _: self._close_connections())
        d.addCallback(lambda _: self.flush())
        d.addCallback(lambda _: errors[0] if errors else None)
        return d

    def _close_connections(self):
        connections = self.params.connections
        live = connections.connections(self.protocol_name)
        if live:
            self.log.info(
                "{protocol}: closing {n} connections", protocol=self.protocol_name, n=len(live)
            )
        for info in live:
            try:
                info.conn.close_gracefully()
            except Exception:
                self.log.failure("{protocol}: error while closing a connection",
                                 protocol=self.protocol_name)
                info.conn.abort_connection("close failed")
        drained = connections.when_drained(self.protocol_name)
        if drained.called:
            return drained
        timer = self.reactor.callLater(self.params.shutdown_grace_s, self._grace_over)

        def done(result):
            if timer.active():
                timer.cancel()
            return result

        return drained.addBoth(done)

    def _grace_over(self):
        left = self.params.connections.connections(self.protocol_name)
        if left:
            self.log.warn(
                "{protocol}: grace period over, aborting {n} connections",
                protocol=self.protocol_name, n=len(left),
            )
        for info in left:
            info.conn.abort_connection("grace period over")

    def flush(self):
        """
        Finish protocol work once the last connection is gone (save state).
        """
        return None
