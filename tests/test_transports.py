# -*- test-case-name: tests.test_transports -*-
"""
Tests for the transports of L{robustmq.network}: C{tcp:}, C{mtls:}, C{ws:} and
C{wss:} listeners made with C{serverFromString}, driven by real clients
(C{openssl s_client}, autobahn's Twisted WebSocket client, plain TCP), plus
unit tests of the WebSocket wrapper on a L{StringTransport}.
"""

import os
import shutil
import socket
import struct

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import (
    SSL4ClientEndpoint,
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
    connectProtocol,
    serverFromString,
)
from twisted.internet.error import (
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ProcessExitedAlready,
)
from twisted.internet.interfaces import (
    IPushProducer,
    ISSLTransport,
    IStreamServerEndpointStringParser,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.plugin import IPlugin, getPlugins
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from robustmq.network.tls import TLSServerParser
from robustmq.network.websocket import (
    MAX_HANDSHAKE_BYTES,
    SecureWebSocketServerParser,
    WebSocketServerEndpoint,
    WebSocketServerParser,
    WebSocketWrappingFactory,
    binary_frame_header,
)
from tests.certs import make_test_pki

OPENSSL = shutil.which("openssl")

#: Upper bound of any single wait in these tests, in seconds.
WAIT = 10


def _wait(d, seconds=WAIT):
    return d.addTimeout(seconds, reactor)


# --- the served protocols ---------------------------------------------------


class EchoProtocol(Protocol):
    """
    Echo every byte; close after a line C{bye}.  Records what the tests
    inspect.
    """

    def connectionMade(self):
        self.received = b""
        self.reason = None
        self.peer_certificate = None
        self.lost = defer.Deferred()
        self.factory.made.put(self)

    def dataReceived(self, data):
        if not self.received and ISSLTransport.providedBy(self.transport):
            self.peer_certificate = self.transport.getPeerCertificate()
        self.received += data
        self.transport.write(data)
        if self.received.endswith(b"bye\n"):
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.reason = reason
        self.lost.callback(None)


@implementer(IPushProducer)
class FloodProtocol(EchoProtocol):
    """
    Write C{factory.flood_bytes} bytes as a streaming producer registered
    with the transport, recording when the transport pauses and resumes it.
    """

    chunk = b"x" * 65536

    def connectionMade(self):
        EchoProtocol.connectionMade(self)
        self.sent = 0
        self.is_paused = False
        self.events = []
        self.paused = defer.Deferred()
        self.resumed = defer.Deferred()
        self.transport.registerProducer(self, True)
        self.produce()

    def produce(self):
        total = self.factory.flood_bytes
        while not self.is_paused and self.sent < total:
            self.transport.write(self.chunk)
            self.sent += len(self.chunk)
        if self.sent >= total and not self.is_paused:
            self.transport.unregisterProducer()

    def pauseProducing(self):
        self.is_paused = True
        self.events.append("pause")
        if not self.paused.called:
            self.paused.callback(self.sent)

    def resumeProducing(self):
        self.is_paused = False
        self.events.append("resume")
        if not self.resumed.called:
            self.resumed.callback(self.sent)
        self.produce()

    def stopProducing(self):
        self.events.append("stop")


class EchoFactory(Factory):
    """
    Builds L{EchoProtocol}s; C{made} yields each one once connected.  Keyword
    arguments become attributes (C{websocket_subprotocols}, ...).
    """

    protocol = EchoProtocol

    def __init__(self, **attributes):
        self.made = defer.DeferredQueue()
        for name, value in attributes.items():
            setattr(self, name, value)


# --- clients -----------------------------------------------------------------


class WSClient(WebSocketClientProtocol):
    """
    An autobahn WebSocket client recording what the tests check.
    """

    def __init__(self):
        WebSocketClientProtocol.__init__(self)
        self.subprotocol = None
        self.opened = defer.Deferred()
        self.closed = defer.Deferred()
        self.messages = defer.DeferredQueue()

    def onConnect(self, response):
        self.subprotocol = response.protocol

    def onOpen(self):
        self.opened.callback(True)

    def onMessage(self, payload, isBinary):
        self.messages.put((payload, isBinary))

    def onClose(self, wasClean, code, reason):
        if not self.closed.called:
            self.closed.callback((wasClean, code, reason))
        if not self.opened.called:
            self.opened.callback(False)

    @defer.inlineCallbacks
    def receive_bytes(self, count):
        """
        Collect binary messages until C{count} bytes arrived.
        """
        data = b""
        while len(data) < count:
            payload, is_binary = yield _wait(self.messages.get())
            if not is_binary:
                raise AssertionError("text message from the server")
            data += payload
        return data


class RawClient(Protocol):
    """
    Send bytes, collect everything until the server closes.
    """

    def __init__(self, request):
        self.request = request
        self.chunks = []
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        self.chunks.append(data)

    def connectionLost(self, reason):
        self.done.callback(b"".join(self.chunks))


class ProcessCollector(ProcessProtocol):
    """
    Feed a child process its standard input, collect its output.
    """

    def __init__(self, stdin):
        self.stdin = stdin
        self.out = []
        self.err = []
        self.timed_out = False
        self.ended = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data):
        self.out.append(data)

    def errReceived(self, data):
        self.err.append(data)

    def processEnded(self, reason):
        self.ended.callback(
            (b"".join(self.out), b"".join(self.err), reason.value.exitCode)
        )

    def kill(self):
        self.timed_out = True
        try:
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass


def upgrade_request(path, protocols=(), upgrade=True):
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"]
    if upgrade:
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ]
    if protocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def client_frame(payload, opcode=2, fin=True, mask=b"\x11\x22\x33\x44"):
    """
    A masked client-to-server frame (RFC 6455 section 5.2).
    """
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        header = bytes((first, 0x80 | length))
    elif length < 0x10000:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def parse_server_frames(data):
    """
    Split unmasked server frames: a list of (opcode, payload), and the
    bytes left over.
    """
    frames = []
    offset = 0
    while len(data) - offset >= 2:
        first, second = data[offset], data[offset + 1]
        if second & 0x80:
            raise AssertionError("server frame is masked")
        length = second & 0x7F
        start = offset + 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, start)
            start += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, start)
            start += 8
        if len(data) < start + length:
            break
        frames.append((first & 0x0F, data[start : start + length]))
        offset = start + length
    return frames, data[offset:]


# --- shared test machinery ---------------------------------------------------


class ListenerTestCase(TestCase):
    """
    Listen with C{serverFromString}, connect clients; everything is closed
    and awaited in the cleanup so the reactor is left clean.
    """

    timeout = 60

    def setUp(self):
        self.pki = make_test_pki(os.path.abspath(self.mktemp()))
        self._clients = []
        self._server_lost = []
        self._ports = []
        self.server_protocols = []
        self.addCleanup(self._close_everything)

    @defer.inlineCallbacks
    def _close_everything(self):
        for client in self._clients:
            if client.transport is not None and client.transport.connected:
                client.transport.abortConnection()
        yield _wait(
            defer.gatherResults([c.closed for c in self._clients], consumeErrors=True)
        )
        for protocol in self.server_protocols:
            if protocol.transport is not None and protocol.transport.connected:
                protocol.transport.abortConnection()
        yield _wait(defer.gatherResults(self._server_lost, consumeErrors=True))
        for port in self._ports:
            yield port.stopListening()

    def _track(self, port):
        """
        Record every connection the listening port accepts, so the cleanup
        can wait until it is gone.
        """
        factory = port.factory
        build = factory.buildProtocol

        def buildProtocol(addr):
            protocol = build(addr)
            if protocol is not None:
                lost = defer.Deferred()
                connection_lost = protocol.connectionLost

                def tracked_connection_lost(reason):
                    try:
                        connection_lost(reason)
                    finally:
                        lost.callback(None)

                protocol.connectionLost = tracked_connection_lost
                self._server_lost.append(lost)
                self.server_protocols.append(protocol)
            return protocol

        self.patch(factory, "buildProtocol", buildProtocol)

    @defer.inlineCallbacks
    def listen(self, description, factory):
        port = yield serverFromString(reactor, description).listen(factory)
        self._ports.append(port)
        self._track(port)
        return port

    def tls_options(self):
        pki = self.pki
        return f"privateKey={pki.server_key}:certKey={pki.server_cert}"

    def client_tls(self, certificate=None):
        pki = self.pki
        with open(pki.ca_cert, "rb") as f:
            trust = Certificate.loadPEM(f.read())
        kwargs = {}
        if certificate is not None:
            cert_file, key_file = certificate
            with open(cert_file, "rb") as c, open(key_file, "rb") as k:
                kwargs["clientCertificate"] = PrivateCertificate.loadPEM(
                    c.read() + b"\n" + k.read()
                )
        return optionsForClientTLS("localhost", trustRoot=trust, **kwargs)

    @defer.inlineCallbacks
    def ws_connect(
        self, port, path="/", protocols=(), secure=False, certificate=None
    ):
        """
        Connect an autobahn client; wait until the handshake succeeded or
        failed (see C{client.opened}).
        """
        scheme = "wss" if secure else "ws"
        factory = WebSocketClientFactory(
            f"{scheme}://127.0.0.1:{port.getHost().port}{path}",
            protocols=list(protocols),
            reactor=reactor,
        )
        factory.protocol = WSClient
        if secure:
            endpoint = SSL4ClientEndpoint(
                reactor, "127.0.0.1", port.getHost().port, self.client_tls(certificate)
            )
        else:
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        client = yield _wait(endpoint.connect(factory))
        self._clients.append(client)
        yield _wait(client.opened)
        return client

    @defer.inlineCallbacks
    def raw_exchange(self, port, request):
        client = RawClient(request)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        yield _wait(connectProtocol(endpoint, client))
        response = yield _wait(client.done)
        return response

    def run_process(self, argv, stdin, timeout=WAIT):
        """
        Run a child process; fires with (stdout, stderr, exit code).
        """
        collector = ProcessCollector(stdin)
        reactor.spawnProcess(collector, argv[0], argv, env=dict(os.environ))
        killer = reactor.callLater(timeout, collector.kill)

        def ended(result):
            if killer.active():
                killer.cancel()
            self.assertFalse(collector.timed_out, f"{argv[0]} timed out")
            return result

        return collector.ended.addCallback(ended)

    def find_reader(self, peer):
        """
        The selectable of the server connection with C{peer}, if the reactor
        is reading from it.
        """
        found = []
        for reader in reactor.getReaders():
            get_peer = getattr(reader, "getPeer", None)
            if get_peer is not None:
                try:
                    if get_peer() == peer:
                        found.append(reader)
                except Exception:
                    # Wakers and the like have no peer.
                    pass
        return found


# --- endpoint-string parsers -------------------------------------------------


class EndpointParserTests(ListenerTestCase):
    """
    The C{ws:}, C{wss:} and C{mtls:} endpoint-string plugins.
    """

    def test_plugins_registered(self):
        """
        The plugin module exposes one parser per prefix, and Twisted finds
        them.
        """
        from twisted.plugins import robustmq_endpoints

        expected = {
            "ws": (robustmq_endpoints.ws_endpoint_parser, WebSocketServerParser),
            "wss": (
                robustmq_endpoints.wss_endpoint_parser,
                SecureWebSocketServerParser,
            ),
            "mtls": (robustmq_endpoints.mtls_endpoint_parser, TLSServerParser),
        }
        found = {
            p.prefix: p
            for p in getPlugins(IStreamServerEndpointStringParser)
            if p.prefix in expected
        }
        self.assertEqual(set(found), set(expected))
        for prefix, (instance, cls) in expected.items():
            self.assertIsInstance(instance, cls)
            self.assertIsInstance(found[prefix], cls)
            verifyObject(IStreamServerEndpointStringParser, instance)
            self.assertTrue(IPlugin.providedBy(instance))

    def test_endpoint_types(self):
        """
        C{serverFromString} builds our endpoints.
        """
        ws = serverFromString(reactor, "ws:0:interface=127.0.0.1")
        wss = serverFromString(reactor, f"wss:0:{self.tls_options()}")
        mtls = serverFromString(reactor, f"mtls:0:{self.tls_options()}")
        self.assertIsInstance(ws, WebSocketServerEndpoint)
        self.assertIsInstance(wss, WebSocketServerEndpoint)
        self.assertIsInstance(mtls, SSL4ServerEndpoint)

    def assert_rejected(self, description, *fragments):
        error = self.assertRaises(ValueError, serverFromString, reactor, description)
        for fragment in fragments:
            self.assertIn(fragment, str(error))

    def test_bad_ws_arguments(self):
        """
        Bad C{ws:} descriptions raise L{ValueError} saying what is wrong.
        """
        self.assert_rejected("ws", "ws:", "missing port")
        self.assert_rejected("ws:http", "invalid port 'http'")
        self.assert_rejected("ws:70000", "out of range")
        self.assert_rejected("ws:0:1", "unexpected positional")
        self.assert_rejected("ws:0:bogus=1", "unknown option", "bogus")
        self.assert_rejected("ws:0:path=mqtt", "path must start with '/'")
        self.assert_rejected("ws:0:backlog=none", "invalid backlog")
        self.assert_rejected("ws:0:backlog=0", "backlog must be at least 1")
        self.assert_rejected(
            f"ws:0:{self.tls_options()}", "unknown option", "privateKey"
        )

    def test_bad_tls_arguments(self):
        """
        Bad C{wss:} and C{mtls:} descriptions raise L{ValueError} naming the
        problem, before anything is bound.
        """
        pki = self.pki
        for prefix in ("wss", "mtls"):
            self.assert_rejected(f"{prefix}:0", f"{prefix}:", "privateKey")
            self.assert_rejected(
                f"{prefix}:0:privateKey=/nonexistent/key.pem",
                "cannot read",
                "/nonexistent/key.pem",
            )
            self.assert_rejected(
                f"{prefix}:0:{self.tls_options()}:caCerts=/nonexistent/ca.pem",
                "cannot read caCerts",
            )
            self.assert_rejected(
                f"{prefix}:0:{self.tls_options()}:caCerts={pki.server_key}",
                "contains no PEM certificate",
            )
            self.assert_rejected(
                f"{prefix}:0:{self.tls_options()}:extraCertChain={pki.client_key}",
                "extraCertChain",
            )
            self.assert_rejected(
                f"{prefix}:0:privateKey={pki.client_key}:certKey={pki.server_cert}",
                "cannot",
            )
            self.assert_rejected(
                f"{prefix}:0:{self.tls_options()}:verify=yes",
                "unknown option",
                "verify",
            )
        self.assert_rejected(
            f"mtls:0:{self.tls_options()}:path=/mqtt", "unknown option", "path"
        )
        self.assert_rejected(
            f"wss:0:{self.tls_options()}:path=mqtt", "path must start with '/'"
        )

    def test_bad_factory_attributes(self):
        """
        A wrapped factory with invalid WebSocket attributes is refused.
        """
        self.assertRaises(
            TypeError,
            WebSocketWrappingFactory,
            EchoFactory(websocket_subprotocols="mqtt"),
            reactor,
        )
        self.assertRaises(
            ValueError,
            WebSocketWrappingFactory,
            EchoFactory(websocket_default_path="mqtt"),
            reactor,
        )
        self.assertRaises(
            ValueError,
            WebSocketWrappingFactory,
            EchoFactory(max_frame_bytes=0),
            reactor,
        )

    @defer.inlineCallbacks
    def test_interface_honoured(self):
        """
        C{interface=} selects the address bound, on every kind.
        """
        descriptions = [
            "ws:0:interface=127.0.0.1",
            "ws:0:interface=127.0.0.1:backlog=5:path=/mqtt",
            f"wss:0:interface=127.0.0.1:{self.tls_options()}",
            f"mtls:0:interface=127.0.0.1:{self.tls_options()}",
        ]
        for description in descriptions:
            port = yield self.listen(description, EchoFactory())
            self.assertEqual(port.getHost().host, "127.0.0.1", description)

    @defer.inlineCallbacks
    def test_interface_ipv6(self):
        """
        An IPv6 interface (colons escaped) is honoured too.
        """
        if not socket.has_ipv6:
            raise SkipTest("no IPv6")
        probe = socket.socket(socket.AF_INET6)
        try:
            probe.bind(("::1", 0))
        except OSError:
            raise SkipTest("no IPv6 loopback")
        finally:
            probe.close()
        port = yield self.listen("ws:0:interface=\\:\\:1", EchoFactory())
        self.assertEqual(port.getHost().host, "::1")


# --- plain TCP ---------------------------------------------------------------


class TCPTransportTests(ListenerTestCase):
    """
    The echo protocol over plain C{tcp:}, the reference the other transports
    are compared with.
    """

    @defer.inlineCallbacks
    def test_echo(self):
        factory = EchoFactory()
        port = yield self.listen("tcp:0:interface=127.0.0.1", factory)
        response = yield self.raw_exchange(port, b"hello\nbye\n")
        self.assertEqual(response, b"hello\nbye\n")
        server = yield _wait(factory.made.get())
        yield _wait(server.lost)
        self.assertTrue(server.reason.check(ConnectionDone))
        self.assertFalse(ISSLTransport.providedBy(server.transport))


# --- TLS (mtls:) with openssl s_client ---------------------------------------


class TLSTransportTests(ListenerTestCase):
    """
    C{mtls:} listeners driven by C{openssl s_client}.
    """

    if OPENSSL is None:
        skip = "the openssl command is not installed"

    def s_client(self, port, certificate=None, extra=()):
        pki = self.pki
        argv = [
            OPENSSL,
            "s_client",
            "-connect",
            f"127.0.0.1:{port.getHost().port}",
            "-CAfile",
            pki.ca_cert,
            "-verify_return_error",
            "-verify_ip",
            "127.0.0.1",
            "-quiet",
        ]
        if certificate is not None:
            argv += ["-cert", certificate[0], "-key", certificate[1]]
        argv += list(extra)
        return self.run_process(argv, b"hello tls\nbye\n")

    @defer.inlineCallbacks
    def test_echo_without_client_verification(self):
        """
        Without C{caCerts}, C{mtls:} is plain TLS: no client certificate
        needed.
        """
        factory = EchoFactory()
        port = yield self.listen(
            f"mtls:0:interface=127.0.0.1:{self.tls_options()}", factory
        )
        out, err, code = yield self.s_client(port)
        self.assertEqual((out, code), (b"hello tls\nbye\n", 0), err)
        server = yield _wait(factory.made.get())
        yield _wait(server.lost)
        self.assertTrue(ISSLTransport.providedBy(server.transport))
        self.assertIsNone(server.peer_certificate)

    @defer.inlineCallbacks
    def test_client_certificate_accepted(self):
        """
        With C{caCerts}, a client certificate from that authority is
        accepted and visible to the protocol.
        """
        pki = self.pki
        factory = EchoFactory()
        port = yield self.listen(
            f"mtls:0:interface=127.0.0.1:{self.tls_options()}:caCerts={pki.ca_cert}",
            factory,
        )
        out, err, code = yield self.s_client(
            port, (pki.client_cert, pki.client_key)
        )
        self.assertEqual((out, code), (b"hello tls\nbye\n", 0), err)
        server = yield _wait(factory.made.get())
        yield _wait(server.lost)
        subject = server.peer_certificate.get_subject()
        self.assertEqual(subject.commonName, "test-client")

    @defer.inlineCallbacks
    def assert_refused(self, certificate, alert, extra=()):
        pki = self.pki
        factory = EchoFactory()
        port = yield self.listen(
            f"mtls:0:interface=127.0.0.1:{self.tls_options()}:caCerts={pki.ca_cert}",
            factory,
        )
        out, err, code = yield self.s_client(port, certificate, extra)
        self.assertEqual(out, b"")
        self.assertNotEqual(code, 0)
        self.assertIn(alert, err)
        server = yield _wait(factory.made.get())
        yield _wait(server.lost)
        self.assertEqual(server.received, b"")
        self.assertFalse(server.reason.check(ConnectionDone))

    def test_missing_client_certificate_refused(self):
        """
        With C{caCerts}, a client without a certificate fails the handshake.
        """
        return self.assert_refused(None, b"certificate required")

    def test_missing_client_certificate_refused_tls12(self):
        """
        The same with TLS 1.2, where the failure is inside the handshake.
        """
        return self.assert_refused(None, b"handshake failure", ["-tls1_2"])

    def test_untrusted_client_certificate_refused(self):
        """
        A client certificate from another authority fails the handshake.
        """
        pki = self.pki
        return self.assert_refused(
            (pki.other_client_cert, pki.other_client_key), b"unknown ca"
        )


# --- WebSocket (ws:) ---------------------------------------------------------


class WebSocketTransportTests(ListenerTestCase):
    """
    C{ws:} listeners driven by autobahn's Twisted WebSocket client.
    """

    secure = False

    def description(self, extra=""):
        if self.secure:
            return f"wss:0:interface=127.0.0.1:{self.tls_options()}{extra}"
        return f"ws:0:interface=127.0.0.1{extra}"

    def mqtt_factory(self, **attributes):
        attributes.setdefault("websocket_subprotocols", ["mqtt", "mqttv3.1"])
        attributes.setdefault("websocket_default_path", "/mqtt")
        return EchoFactory(**attributes)

    def connect(self, port, path="/mqtt", protocols=("mqtt",), **kwargs):
        return self.ws_connect(port, path, protocols, secure=self.secure, **kwargs)

    @defer.inlineCallbacks
    def test_binary_echo(self):
        """
        Binary messages reach the wrapped protocol as a byte stream and its
        writes come back as binary messages, large ones included.
        """
        factory = self.mqtt_factory()
        port = yield self.listen(self.description(), factory)
        client = yield self.connect(port)
        self.assertTrue(client.opened.result)
        server = yield _wait(factory.made.get())
        for size in (1, 125, 126, 65535, 65536, 200000):
            payload = os.urandom(size)
            client.sendMessage(payload, isBinary=True)
            echoed = yield client.receive_bytes(size)
            self.assertEqual(echoed, payload)
        # Several messages in a row form one stream.
        for piece in (b"\x10\x0c", b"\x00\x04MQ", b"TT\x04\x02\x00<\x00\x00"):
            client.sendMessage(piece, isBinary=True)
        echoed = yield client.receive_bytes(14)
        self.assertEqual(echoed, b"\x10\x0c\x00\x04MQTT\x04\x02\x00<\x00\x00")
        self.assertTrue(server.received.endswith(echoed))

    @defer.inlineCallbacks
    def test_subprotocol_echoed(self):
        """
        The subprotocol echoed is the first one the client offered that the
        factory accepts; the wrapped protocol sees it on its transport.
        """
        factory = self.mqtt_factory()
        port = yield self.listen(self.description(), factory)
        for offered, expected in [
            (["mqttv3.1"], "mqttv3.1"),
            (["mqtt"], "mqtt"),
            (["foo", "mqttv3.1", "mqtt"], "mqttv3.1"),
        ]:
            client = yield self.connect(port, protocols=offered)
            self.assertTrue(client.opened.result)
            self.assertEqual(client.subprotocol, expected)
            server = yield _wait(factory.made.get())
            self.assertEqual(server.transport.subprotocol, expected)

    @defer.inlineCallbacks
    def test_subprotocol_refused(self):
        """
        A client offering none of the declared subprotocols is refused with
        HTTP 400 and the wrapped protocol never sees a connection.
        """
        factory = self.mqtt_factory()
        port = yield self.listen(self.description(), factory)
        for offered in (["foo"], []):
            client = yield self.connect(port, protocols=offered)
            self.assertFalse(client.opened.result)
        if not self.secure:
            response = yield self.raw_exchange(
                port, upgrade_request("/mqtt", ["wamp"])
            )
            self.assertTrue(response.startswith(b"HTTP/1.1 400 "), response)
        self.assertEqual(factory.made.pending, [])

    @defer.inlineCallbacks
    def test_no_subprotocols_declared(self):
        """
        Without C{websocket_subprotocols} every client is accepted and the
        first subprotocol offered, if any, is echoed.
        """
        factory = EchoFactory()
        port = yield self.listen(self.description(), factory)
        client = yield self.connect(port, path="/", protocols=["a", "b"])
        self.assertEqual((client.opened.result, client.subprotocol), (True, "a"))
        client = yield self.connect(port, path="/", protocols=[])
        self.assertEqual((client.opened.result, client.subprotocol), (True, None))

    @defer.inlineCallbacks
    def test_text_message_refused(self):
        """
        A text message closes the connection with code 1003; the wrapped
        protocol gets neither the text nor a clean close.
        """
        factory = self.mqtt_factory()
        port = yield self.listen(self.description(), factory)
        client = yield self.connect(port)
        server = yield _wait(factory.made.get())
        client.sendMessage(b"text", isBinary=False)
        was_clean, code, reason = yield _wait(client.closed)
        self.assertEqual(code, 1003)
        self.assertTrue(was_clean)
        yield _wait(server.lost)
        self.assertEqual(server.received, b"")
        self.assertTrue(server.reason.check(ConnectionLost))

    @defer.inlineCallbacks
    def test_max_frame_bytes(self):
        """
        The factory's C{max_frame_bytes} bounds incoming messages: one byte
        more closes the connection with code 1009.
        """
        factory = self.mqtt_factory(max_frame_bytes=1024)
        port = yield self.listen(self.description(), factory)
        client = yield self.connect(port)
        server = yield _wait(factory.made.get())
        client.sendMessage(b"a" * 1024, isBinary=True)
        echoed = yield client.receive_bytes(1024)
        self.assertEqual(echoed, b"a" * 1024)
        client.sendMessage(b"b" * 1025, isBinary=True)
        was_clean, code, reason = yield _wait(client.closed)
        self.assertEqual(code, 1009)
        yield _wait(server.lost)
        self.assertEqual(server.received, b"a" * 1024)
        self.assertTrue(server.reason.check(ConnectionLost))

    @defer.inlineCallbacks
    def test_paths(self):
        """
        The factory's C{websocket_default_path} is served; other paths get
        HTTP 404 (with or without upgrade headers); an explicit C{path=}
        wins; without either the path is C{/}.
        """
        port = yield self.listen(self.description(), self.mqtt_factory())
        client = yield self.connect(port, path="/mqtt")
        self.assertTrue(client.opened.result)
        client = yield self.connect(port, path="/other")
        self.assertFalse(client.opened.result)
        self.assertIn("404", client.closed.result[2])

        explicit = yield self.listen(
            self.description(":path=/ws"), self.mqtt_factory()
        )
        client = yield self.connect(explicit, path="/ws")
        self.assertTrue(client.opened.result)
        client = yield self.connect(explicit, path="/mqtt")
        self.assertFalse(client.opened.result)

        root = yield self.listen(self.description(), EchoFactory())
        client = yield self.connect(root, path="/")
        self.assertTrue(client.opened.result)

        if not self.secure:
            for request in (
                upgrade_request("/other", ["mqtt"]),
                upgrade_request("/other", upgrade=False),
            ):
                response = yield self.raw_exchange(port, request)
                self.assertTrue(response.startswith(b"HTTP/1.1 404 "), response)
            response = yield self.raw_exchange(
                port, upgrade_request("/mqtt", upgrade=False)
            )
            self.assertTrue(response.startswith(b"HTTP/1.1 426 "), response)

    @defer.inlineCallbacks
    def test_transport_like_tcp(self):
        """
        The wrapped protocol's transport reports the real TCP addresses and
        provides C{ISSLTransport} exactly on C{wss:}.
        """
        factory = self.mqtt_factory()
        port = yield self.listen(self.description(), factory)
        client = yield self.connect(port)
        server = yield _wait(factory.made.get())
        transport = server.transport
        client_address = client.transport.getHost()
        self.assertEqual(
            transport.getPeer(),
            IPv4Address("TCP", "127.0.0.1", client_address.port),
        )
        self.assertEqual(transport.getHost(), port.getHost())
        self.assertEqual(ISSLTransport.providedBy(transport), self.secure)
        verifyObject(ITCPTransport, transport)
        verifyObject(IPushProducer, transport)
        if self.secure:
            verifyObject(ISSLTransport, transport)
            self.assertIsNone(transport.getPeerCertificate())
        transport.setTcpNoDelay(True)
        self.assertTrue(transport.getTcpNoDelay())

    @defer.inlineCallbacks
    def test_lose_connection(self):
        """
        C{loseConnection} sends what was written, then a close handshake
        with code 1000; the wrapped protocol gets L{ConnectionDone}, and
        writes after it are dropped.
        """
        factory = self.mqtt_factory()
        port = yield self.listen(self.description(), factory)
        client = yield self.connect(port)
        server = yield _wait(factory.made.get())
        client.sendMessage(b"last words bye\n", isBinary=True)
        echoed = yield client.receive_bytes(15)
        self.assertEqual(echoed, b"last words bye\n")
        server.transport.write(b"after close")
        was_clean, code, reason = yield _wait(client.closed)
        self.assertEqual((was_clean, code), (True, 1000))
        self.assertEqual(client.messages.pending, [])
        yield _wait(server.lost)
        self.assertTrue(server.reason.check(ConnectionDone))
        self.assertTrue(server.transport.disconnecting)
        self.assertFalse(server.transport.connected)

    @defer.inlineCallbacks
    def test_client_closes(self):
        """
        A close handshake started by the client gives L{ConnectionDone}.
        """
        factory = self.mqtt_factory()
        port = yield self.listen(self.description(), factory)
        client = yield self.connect(port)
        server = yield _wait(factory.made.get())
        client.sendClose(1000)
        yield _wait(server.lost)
        self.assertTrue(server.reason.check(ConnectionDone))
        was_clean, code, reason = yield _wait(client.closed)
        self.assertTrue(was_clean)

    @defer.inlineCallbacks
    def test_client_drops(self):
        """
        A client that drops the TCP connection without a close handshake
        gives the wrapped protocol the TCP connection's own failure.
        """
        factory = self.mqtt_factory()
        port = yield self.listen(self.description(), factory)
        client = yield self.connect(port)
        server = yield _wait(factory.made.get())
        client.transport.abortConnection()
        yield _wait(server.lost)
        self.assertIsInstance(server.reason, Failure)
        self.assertTrue(server.reason.check(ConnectionDone, ConnectionLost))

    @defer.inlineCallbacks
    def test_abort_connection(self):
        """
        C{abortConnection} drops the TCP connection at once: the wrapped
        protocol gets what the transport underneath gives (over TCP
        L{ConnectionAborted}, over TLS L{ConnectionLost}), the client an
        unclean close.
        """
        factory = self.mqtt_factory()
        port = yield self.listen(self.description(), factory)
        client = yield self.connect(port)
        server = yield _wait(factory.made.get())
        server.transport.abortConnection()
        yield _wait(server.lost)
        expected = ConnectionLost if self.secure else ConnectionAborted
        self.assertTrue(server.reason.check(expected), server.reason)
        was_clean, code, reason = yield _wait(client.closed)
        self.assertFalse(was_clean)

    @defer.inlineCallbacks
    def test_producer_paused_by_full_buffer(self):
        """
        A streaming producer registered on the wrapped transport is paused
        by the TCP transport when its write buffer is full and resumed when
        the client reads again.
        """
        factory = self.mqtt_factory(flood_bytes=4 * 1024 * 1024)
        factory.protocol = FloodProtocol
        port = yield self.listen(self.description(), factory)
        client = yield self.connect(port)
        client.transport.pauseProducing()
        server = yield _wait(factory.made.get())
        sent_when_paused = yield _wait(server.paused)
        self.assertLess(sent_when_paused, factory.flood_bytes)
        client.transport.resumeProducing()
        yield _wait(server.resumed)
        data = yield client.receive_bytes(factory.flood_bytes)
        self.assertEqual(len(data), factory.flood_bytes)
        self.assertEqual(server.sent, factory.flood_bytes)
        # The producer was paused and resumed in turn, never stopped.
        events = server.events
        self.assertEqual(events[0], "pause")
        self.assertEqual(events, ["pause", "resume"] * (len(events) // 2))

    @defer.inlineCallbacks
    def test_pause_reading(self):
        """
        C{pauseProducing} on the wrapped transport stops the reactor reading
        the client's TCP connection; C{resumeProducing} starts it again and
        delivers what the client sent meanwhile.
        """
        factory = self.mqtt_factory()
        port = yield self.listen(self.description(), factory)
        client = yield self.connect(port)
        server = yield _wait(factory.made.get())
        peer = server.transport.getPeer()
        self.assertEqual(len(self.find_reader(peer)), 1)
        server.transport.pauseProducing()
        self.assertEqual(self.find_reader(peer), [])
        client.sendMessage(b"while paused", isBinary=True)
        server.transport.resumeProducing()
        self.assertEqual(len(self.find_reader(peer)), 1)
        echoed = yield client.receive_bytes(12)
        self.assertEqual(echoed, b"while paused")

    @defer.inlineCallbacks
    def test_stop_producing(self):
        """
        C{stopProducing} on the wrapped transport closes the connection.
        """
        factory = self.mqtt_factory()
        port = yield self.listen(self.description(), factory)
        client = yield self.connect(port)
        server = yield _wait(factory.made.get())
        server.transport.stopProducing()
        yield _wait(server.lost)
        self.assertIsInstance(server.reason, Failure)
        yield _wait(client.closed)


class SecureWebSocketTransportTests(WebSocketTransportTests):
    """
    The same over C{wss:}, plus client-certificate verification.
    """

    secure = True

    @defer.inlineCallbacks
    def test_client_certificate_verified(self):
        """
        With C{caCerts}, a client certificate from that authority is needed;
        the wrapped protocol can read it.
        """
        pki = self.pki
        factory = self.mqtt_factory()
        port = yield self.listen(self.description(f":caCerts={pki.ca_cert}"), factory)
        client = yield self.connect(
            port, certificate=(pki.client_cert, pki.client_key)
        )
        self.assertTrue(client.opened.result)
        server = yield _wait(factory.made.get())
        subject = server.transport.getPeerCertificate().get_subject()
        self.assertEqual(subject.commonName, "test-client")

        client = yield self.connect(port)
        self.assertFalse(client.opened.result)
        client = yield self.connect(
            port, certificate=(pki.other_client_cert, pki.other_client_key)
        )
        self.assertFalse(client.opened.result)
        self.assertEqual(factory.made.pending, [])


# --- the WebSocket wrapper on a StringTransport -------------------------------


class Recorder(Protocol):
    """
    Record data; optionally pause reading after each delivery.
    """

    pause_after_data = False

    def connectionMade(self):
        self.data = []
        self.reasons = []

    def dataReceived(self, data):
        self.data.append(data)
        if self.pause_after_data:
            self.transport.pauseProducing()

    def connectionLost(self, reason):
        self.reasons.append(reason)


class WebSocketWrapperUnitTests(SynchronousTestCase):
    """
    L{WebSocketWrappingFactory} on a L{StringTransport}: byte-exact framing,
    held frames while paused, bounded handshake.
    """

    def build(self, **attributes):
        inner = Factory.forProtocol(Recorder)
        for name, value in attributes.items():
            setattr(inner, name, value)
        factory = WebSocketWrappingFactory(inner, MemoryReactorClock())
        # No timers: nothing may be left on the global reactor.
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def open(self, **attributes):
        protocol, transport = self.build(**attributes)
        protocol.dataReceived(upgrade_request("/"))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "))
        transport.clear()
        return protocol, transport, protocol._proto

    def test_frames_coalesced_and_split(self):
        """
        Frames arriving together or one byte at a time reach the wrapped
        protocol as the same bytes, fragmented messages included.
        """
        wire = (
            client_frame(b"abc")
            + client_frame(b"d" * 300)
            + client_frame(b"ef", fin=False)
            + client_frame(b"", opcode=0, fin=False)
            + client_frame(b"gh", opcode=0)
            + client_frame(b"", opcode=9)
            + client_frame(b"i" * 70000)
        )
        expected = b"abc" + b"d" * 300 + b"efgh" + b"i" * 70000
        protocol, transport, inner = self.open()
        protocol.dataReceived(wire)
        self.assertEqual(b"".join(inner.data), expected)
        protocol, transport, inner = self.open()
        for i in range(len(wire)):
            protocol.dataReceived(wire[i : i + 1])
        self.assertEqual(b"".join(inner.data), expected)
        # The ping was answered with a pong.
        frames, rest = parse_server_frames(transport.value())
        self.assertEqual(frames, [(10, b"")])

    def test_write_framing(self):
        """
        Each write is one unmasked binary frame with the shortest length
        encoding; empty writes send nothing.
        """
        protocol, transport, inner = self.open()
        sizes = [0, 1, 125, 126, 65535, 65536, 70000]
        for size in sizes:
            inner.transport.write(b"z" * size)
        inner.transport.writeSequence([b"ab", b"cd"])
        frames, rest = parse_server_frames(transport.value())
        self.assertEqual(rest, b"")
        self.assertEqual(
            frames, [(2, b"z" * size) for size in sizes if size] + [(2, b"abcd")]
        )
        self.assertEqual(binary_frame_header(125), b"\x82\x7d")
        self.assertEqual(binary_frame_header(126), b"\x82\x7e\x00\x7e")
        self.assertEqual(
            binary_frame_header(65536), b"\x82\x7f" + struct.pack("!Q", 65536)
        )

    def test_pause_holds_frames(self):
        """
        Frames already read when the wrapped protocol pauses are held back
        and delivered in order on resume; the TCP transport is paused
        meanwhile.
        """
        protocol, transport, inner = self.open()
        inner.pause_after_data = True
        protocol.dataReceived(
            client_frame(b"1") + client_frame(b"2") + client_frame(b"3")
        )
        self.assertEqual(inner.data, [b"1"])
        self.assertEqual(transport.producerState, "paused")
        inner.transport.resumeProducing()
        self.assertEqual(inner.data, [b"1", b"2"])
        self.assertEqual(transport.producerState, "paused")
        inner.pause_after_data = False
        inner.transport.resumeProducing()
        self.assertEqual(inner.data, [b"1", b"2", b"3"])
        self.assertEqual(transport.producerState, "producing")
        protocol.dataReceived(client_frame(b"4"))
        self.assertEqual(inner.data, [b"1", b"2", b"3", b"4"])

    def test_lose_connection_while_paused(self):
        """
        C{loseConnection} while paused drops the held frames and reads again
        (the client's close frame must be read); later data is dropped.
        """
        protocol, transport, inner = self.open()
        inner.pause_after_data = True
        protocol.dataReceived(client_frame(b"1") + client_frame(b"2"))
        inner.transport.loseConnection()
        self.assertEqual(transport.producerState, "producing")
        frames, rest = parse_server_frames(transport.value())
        self.assertEqual(frames, [(8, struct.pack("!H", 1000))])
        inner.transport.write(b"dropped")
        protocol.dataReceived(client_frame(b"late"))
        self.assertEqual(inner.data, [b"1"])
        self.assertEqual(parse_server_frames(transport.value())[0], frames)
        protocol.dataReceived(client_frame(struct.pack("!H", 1000), opcode=8))
        protocol.connectionLost(Failure(ConnectionAborted()))
        self.assertEqual(len(inner.reasons), 1)
        self.assertTrue(inner.reasons[0].check(ConnectionDone))

    def test_connection_lost_once(self):
        """
        An unclean TCP loss reaches the wrapped protocol once, as is.
        """
        protocol, transport, inner = self.open()
        reason = Failure(ConnectionLost("reset"))
        protocol.connectionLost(reason)
        self.assertEqual(inner.reasons, [reason])

    def test_no_connection_before_handshake(self):
        """
        The wrapped protocol is connected only once the handshake succeeds.
        """
        protocol, transport = self.build()
        inner = protocol._proto
        protocol.dataReceived(upgrade_request("/")[:-2])
        self.assertIsNone(inner.transport)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(hasattr(inner, "reasons"))

    def test_compression_off(self):
        """
        A client offering permessage-deflate gets no extension.
        """
        protocol, transport = self.build()
        request = upgrade_request("/").replace(
            b"\r\n\r\n",
            b"\r\nSec-WebSocket-Extensions: permessage-deflate;"
            b" client_max_window_bits\r\n\r\n",
        )
        protocol.dataReceived(request)
        response = transport.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 101 "), response)
        self.assertNotIn(b"sec-websocket-extensions", response.lower())
        self.assertNotIn(b"server:", response.lower())

    def test_handshake_bounded(self):
        """
        An upgrade request larger than L{MAX_HANDSHAKE_BYTES} is refused
        with HTTP 431 without waiting for its end.
        """
        protocol, transport = self.build()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nX-Filler: ")
        for _ in range(MAX_HANDSHAKE_BYTES // 1024 + 1):
            protocol.dataReceived(b"a" * 1024)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 "))
        self.assertTrue(transport.disconnecting)

    def test_refused_connection(self):
        """
        When the wrapped factory refuses a connection, so does the wrapper.
        """

        class Refusing(Factory):
            def buildProtocol(self, addr):
                return None

        factory = WebSocketWrappingFactory(Refusing(), MemoryReactorClock())
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))

    def test_factory_start_stop_forwarded(self):
        """
        Starting and stopping the wrapper starts and stops the wrapped
        factory.
        """
        inner = Factory.forProtocol(Recorder)
        factory = WebSocketWrappingFactory(inner, MemoryReactorClock())
        factory.doStart()
        self.assertEqual(inner.numPorts, 1)
        factory.doStop()
        self.assertEqual(inner.numPorts, 0)

    @settings(max_examples=150, deadline=None)
    @given(
        payloads=st.lists(st.binary(max_size=300), max_size=8),
        cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
    )
    def test_fuzz_stream_integrity(self, payloads, cuts):
        """
        Any binary messages, cut anywhere into TCP reads, arrive as the same
        byte stream.
        """
        wire = b"".join(client_frame(p) for p in payloads)
        protocol, transport, inner = self.open()
        start = 0
        for cut in sorted(c % (len(wire) + 1) for c in cuts) + [len(wire)]:
            protocol.dataReceived(wire[start:cut])
            start = max(start, cut)
        self.assertEqual(b"".join(inner.data), b"".join(payloads))

    @settings(max_examples=200, deadline=None)
    @given(garbage=st.binary(max_size=400), max_frame=st.integers(1, 512))
    def test_fuzz_garbage(self, garbage, max_frame):
        """
        Arbitrary bytes after the handshake never raise; the wrapped
        protocol only ever sees bytes within the frame limit, and closes
        are reported once.
        """
        protocol, transport, inner = self.open(max_frame_bytes=max_frame)
        protocol.dataReceived(garbage)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertLessEqual(len(inner.reasons), 1)
        for chunk in inner.data:
            self.assertLessEqual(len(chunk), max_frame)

    @settings(max_examples=100, deadline=None)
    @given(request=st.binary(max_size=600))
    def test_fuzz_handshake(self, request):
        """
        Arbitrary bytes as a handshake never raise nor connect the wrapped
        protocol unless they are a valid upgrade request.
        """
        protocol, transport = self.build()
        protocol.dataReceived(request)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(protocol._proto.transport)
