# -*- test-case-name: tests.test_transports -*-
"""
Any stream protocol over WebSocket: the C{ws:} and C{wss:} listeners.

The endpoint strings are::

    ws:PORT[:interface=ADDR][:path=/mqtt][:backlog=N]
    wss:PORT:privateKey=KEY.pem[:certKey=CERT.pem][:caCerts=CA.pem]
        [:extraCertChain=CHAIN.pem][:interface=ADDR][:path=/mqtt][:backlog=N]

The endpoint wraps whatever protocol factory C{listen()} is given.  The
wrapped factory may declare, as plain attributes:

    - C{websocket_subprotocols}: the WebSocket subprotocols it speaks, e.g.
      C{["mqtt", "mqttv3.1"]}.  The first one the client offers that is in
      the list is accepted and echoed; a client offering none of them is
      refused (HTTP 400).  Empty or missing: every client is accepted, and
      the first subprotocol it offers, if any, is echoed.
    - C{websocket_default_path}: the request path served when the endpoint
      string has no C{path=} (default C{"/"}).  Other paths get HTTP 404.
    - C{max_frame_bytes}: the largest WebSocket frame and message accepted
      from a client; larger ones close the connection with code 1009.
    - C{max_frame_bytes_before_auth}: the same limit until the wrapped
      protocol's C{handshake_complete()} is true (checked at the start of
      each frame until then, never after).
    - C{handshake_timeout_s}: the TLS handshake (on C{wss:}) and the
      WebSocket upgrade must be done this many seconds after the TCP accept,
      else the connection is dropped (the wrapped protocol's own handshake
      deadline, counted from the same accept, follows).
    - C{closed_in_handshake(peer, reason, why)}: told of a connection
      dropped for one of these two limits (C{reason} is C{"timeout"} or
      C{"frame_too_large"}).

They are read once, when the listener starts.  The wrapped factory's
C{buildProtocol} is called when the TCP connection is accepted (returning
L{None} refuses it); the protocol is connected (C{makeConnection}) only once
the WebSocket handshake has succeeded, and only then will it get
C{connectionLost}.

WebSocket handshake, frame parsing, unmasking and control frames are done by
autobahn; this module adds what a stream protocol needs from its transport:
binary messages only (a text message closes the connection with code 1003),
no compression, frame payloads handed to the wrapped protocol as they arrive
(no per-message reassembly), the TCP addresses, producer registration and
pause/resume/stop forwarded to the TCP transport, C{ISSLTransport} on
C{wss:}, and a real L{Failure} in C{connectionLost}.  Outgoing data is sent
as one unmasked binary frame per C{write}; the two-to-ten byte frame header
is built here because autobahn's general C{sendMessage} costs more than ten
times as much per call, and every packet of every client goes through it.
"""

import struct

from autobahn.twisted.websocket import (
    WrappingWebSocketServerFactory,
    WrappingWebSocketServerProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    ISSLTransport,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
    ITCPTransport,
)
from twisted.internet.protocol import connectionDone
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from robustmq.network.tls import (
    TLS_OPTIONS,
    check_options,
    parse_backlog,
    parse_tls_options,
)

#: The largest HTTP upgrade request accepted before the handshake completes.
MAX_HANDSHAKE_BYTES = 32 * 1024

_CONNECTING = WebSocketProtocol.STATE_CONNECTING
_OPEN = WebSocketProtocol.STATE_OPEN

_CLOSE_NORMAL = WebSocketProtocol.CLOSE_STATUS_CODE_NORMAL
_CLOSE_UNSUPPORTED_DATA = WebSocketProtocol.CLOSE_STATUS_CODE_UNSUPPORTED_DATA

# RFC 6455 section 5.2: FIN + opcode 2 (binary), then the payload length in
# 7 bits, 7+16 bits or 7+64 bits.  Server frames are never masked.
_SHORT_HEADERS = tuple(bytes((0x82, n)) for n in range(126))
_pack_header16 = struct.Struct("!BBH").pack
_pack_header64 = struct.Struct("!BBQ").pack


def binary_frame_header(length):
    """
    The header of an unmasked, final, binary WebSocket frame.

    @param length: the payload length in bytes.
    @return: the 2, 4 or 10 header bytes.
    """
    if length < 126:
        return _SHORT_HEADERS[length]
    if length < 0x10000:
        return _pack_header16(0x82, 126, length)
    return _pack_header64(0x82, 127, length)


@implementer(ITCPTransport, IPushProducer, IConsumer)
class WebSocketTransport:
    """
    The transport of a protocol wrapped in WebSocket.  It behaves like the TCP
    transport underneath: each C{write} is one binary frame, the addresses and
    producer calls are those of the TCP connection.

    @ivar connected: true until the connection is lost.
    @ivar disconnecting: true once C{loseConnection} or C{abortConnection}
        was called or the connection was lost.
    @ivar subprotocol: the negotiated WebSocket subprotocol, or L{None}.
    """

    connected = True
    disconnecting = False

    def __init__(self, websocket, stream, subprotocol):
        """
        @param websocket: the L{WebSocketWrappingProtocol} of the connection.
        @param stream: the TCP (or TLS) transport under the WebSocket.
        @param subprotocol: the negotiated subprotocol, or L{None}.
        """
        self._websocket = websocket
        self._stream = stream
        self.subprotocol = subprotocol

    def write(self, data):
        """
        Send C{data} as one binary frame.  Like TCP, writing after the
        connection started closing does nothing.
        """
        if self._websocket.state != _OPEN:
            return
        length = len(data)
        if length < 126:
            if length:
                self._stream.write(_SHORT_HEADERS[length] + data)
        elif length < 0x10000:
            self._stream.write(_pack_header16(0x82, 126, length) + data)
        else:
            self._stream.writeSequence((_pack_header64(0x82, 127, length), data))

    def writeSequence(self, data):
        """
        Send the concatenation of C{data} as one binary frame.
        """
        self.write(b"".join(data))

    def loseConnection(self):
        """
        Close after the data written so far: WebSocket close handshake (code
        1000), then the TCP connection is closed.
        """
        if self.disconnecting:
            return
        self.disconnecting = True
        self._websocket.close_from_wrapped()

    def loseWriteConnection(self):
        """
        WebSocket has no half-close: the same as L{loseConnection}.
        """
        self.loseConnection()

    def abortConnection(self):
        """
        Close the TCP connection at once, discarding unsent data.
        """
        self.disconnecting = True
        self._stream.abortConnection()

    def getPeer(self):
        """
        @return: the address of the client's TCP connection.
        """
        return self._stream.getPeer()

    def getHost(self):
        """
        @return: the local address of the TCP connection.
        """
        return self._stream.getHost()

    def getTcpNoDelay(self):
        return self._stream.getTcpNoDelay()

    def setTcpNoDelay(self, enabled):
        self._stream.setTcpNoDelay(enabled)

    def getTcpKeepAlive(self):
        return self._stream.getTcpKeepAlive()

    def setTcpKeepAlive(self, enabled):
        self._stream.setTcpKeepAlive(enabled)

    def registerProducer(self, producer, streaming):
        """
        Register C{producer} with the TCP transport, which pauses it while
        its write buffer is full.
        """
        self._stream.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self._stream.unregisterProducer()

    def pauseProducing(self):
        """
        Stop reading from the client; frames already read are held back.
        """
        self._websocket.pause_reading()

    def resumeProducing(self):
        """
        Deliver the frames held back, then read from the client again.
        """
        self._websocket.resume_reading()

    def stopProducing(self):
        self._stream.stopProducing()


@implementer(ISSLTransport)
class SecureWebSocketTransport(WebSocketTransport):
    """
    A L{WebSocketTransport} over TLS (C{wss:}).
    """

    def getPeerCertificate(self):
        """
        @return: the client's certificate (an C{OpenSSL.crypto.X509}), or
            L{None} when it sent none.
        """
        return self._stream.getPeerCertificate()


class WebSocketWrappingProtocol(WrappingWebSocketServerProtocol):
    """
    Server side of one WebSocket connection carrying a stream protocol.

    @ivar _proto: the wrapped protocol.
    @ivar _wrapped_transport: its L{WebSocketTransport}, once the handshake
        is done.
    @ivar _held: frame payloads read while the wrapped protocol paused
        reading, or L{None} when it is not paused.
    @ivar _stream_reason: the failure the TCP connection was lost with.
    """

    # No "log = Logger()" here: autobahn logs through this attribute with its
    # own txaio logger, which drops its many per-connection debug messages;
    # a twisted.logger.Logger would pass them all to the log observers.

    _proto = None
    _wrapped_transport = None
    _held = None
    _stream_reason = None
    _handshake_timer = None

    def connectionMade(self):
        WrappingWebSocketServerProtocol.connectionMade(self)
        timeout = self.factory.handshake_timeout_s
        if timeout:
            self._handshake_timer = self.factory.reactor.callLater(
                timeout, self._handshake_expired)

    def _handshake_expired(self):
        self._handshake_timer = None
        if self.state != _CONNECTING:
            return
        self.factory.closed_in_handshake(
            self.transport.getPeer(), "timeout",
            "WebSocket upgrade not done {:g} s after the connection was accepted".format(
                self.factory.handshake_timeout_s))
        self.transport.abortConnection()

    def _cancel_handshake_timer(self):
        timer = self._handshake_timer
        self._handshake_timer = None
        if timer is not None and timer.active():
            timer.cancel()

    def _frame_begin_in_handshake(self, length):
        """
        C{onMessageFrameBegin} while the wrapped protocol is in its
        handshake, with the smaller frame and message limits; removed (back
        to the class's method and the full limits) once it is complete.
        """
        complete = getattr(self._proto, "handshake_complete", None)
        if complete is None or complete():
            del self.onMessageFrameBegin
            self.maxFramePayloadSize = self.factory.maxFramePayloadSize
            self.maxMessagePayloadSize = self.factory.maxMessagePayloadSize
            self.onMessageFrameBegin(length)
            return
        WrappingWebSocketServerProtocol.onMessageFrameBegin(self, length)
        if self.wasMaxFramePayloadSizeExceeded or self.wasMaxMessagePayloadSizeExceeded:
            self.factory.closed_in_handshake(
                self.transport.getPeer(), "frame_too_large",
                "WebSocket message of {} bytes or more over the limit of {} before"
                " authentication".format(
                    self.message_data_total_length, self.maxMessagePayloadSize))

    def dataReceived(self, data):
        self._dataReceived(data)
        if self.state == _CONNECTING and len(self.data) > MAX_HANDSHAKE_BYTES:
            self.failHandshake("Request Header Fields Too Large", 431)

    def onConnect(self, request):
        factory = self.factory
        if request.path != factory.websocket_path:
            raise ConnectionDeny(ConnectionDeny.NOT_FOUND, "Not Found")
        offered = request.protocols
        accepted = factory.websocket_subprotocols
        if not accepted:
            return offered[0] if offered else None
        for name in offered:
            if name in accepted:
                return name
        raise ConnectionDeny(
            ConnectionDeny.BAD_REQUEST,
            "No acceptable WebSocket subprotocol (accepted: {})".format(
                ", ".join(accepted)
            ),
        )

    def failHandshake(self, reason, code=400, responseHeaders=None):
        # A request for another path is answered 404 whatever else is wrong
        # with it (autobahn checks the upgrade headers first).
        path = getattr(self, "http_request_path", None)
        if path is not None and path != self.factory.websocket_path:
            reason, code, responseHeaders = "Not Found", 404, None
        WrappingWebSocketServerProtocol.failHandshake(
            self, reason, code, responseHeaders
        )

    def onOpen(self):
        self._cancel_handshake_timer()
        stream = self.transport
        if ISSLTransport.providedBy(stream):
            transport_class = SecureWebSocketTransport
        else:
            transport_class = WebSocketTransport
        transport = transport_class(self, stream, self.websocket_protocol_in_use)
        self._wrapped_transport = transport
        self._proto.makeConnection(transport)

    def onMessageBegin(self, isBinary):
        self.message_data_total_length = 0
        if not isBinary:
            self._fail_connection(
                _CLOSE_UNSUPPORTED_DATA, "only binary WebSocket messages are accepted"
            )

    def onMessageFrameData(self, payload):
        if payload and not self.failedByMe:
            held = self._held
            if held is not None:
                held.append(payload)
            elif not self._wrapped_transport.disconnecting:
                self._proto.dataReceived(payload)

    def onMessageFrameEnd(self):
        pass

    def onMessageEnd(self):
        pass

    def pause_reading(self):
        """
        Stop reading from the TCP connection and hold back the frames of
        data already read.
        """
        if self._held is None:
            self._held = []
            self.transport.pauseProducing()

    def resume_reading(self):
        """
        Deliver the frames held back, in order, then read again unless the
        wrapped protocol paused or closed meanwhile.
        """
        held = self._held
        if held is None:
            return
        self._held = None
        transport = self._wrapped_transport
        for index, payload in enumerate(held):
            if transport.disconnecting:
                return
            self._proto.dataReceived(payload)
            if self._held is not None:
                self._held[:0] = held[index + 1 :]
                return
        self.transport.resumeProducing()

    def close_from_wrapped(self):
        """
        Start the close handshake the wrapped protocol asked for.
        """
        if self._held is not None:
            # The client's close frame must be read for the handshake.
            self._held = None
            self.transport.resumeProducing()
        if self.state == _OPEN:
            self.sendCloseFrame(code=_CLOSE_NORMAL, isReply=False)

    def unregisterProducer(self):
        # autobahn calls this just before it closes the TCP connection.  The
        # producer the wrapped protocol registered stays registered, so the
        # TCP transport stops it when the connection is lost, as with TCP.
        pass

    def connectionLost(self, reason=connectionDone):
        self._cancel_handshake_timer()
        # The bound method of the handshake refers to this protocol.
        self.__dict__.pop("onMessageFrameBegin", None)
        self._stream_reason = reason
        WrappingWebSocketServerProtocol.connectionLost(self, reason)
        self._wrapped_connection_lost()

    def onClose(self, wasClean, code, reason):
        self._wrapped_connection_lost()

    def _wrapped_connection_lost(self):
        """
        Tell the wrapped protocol, once, that the connection is gone: with
        L{ConnectionDone} after a clean close handshake, L{ConnectionLost}
        when the WebSocket failed (protocol error, text message, too big),
        else with the failure of the TCP connection.
        """
        transport = self._wrapped_transport
        if transport is None or not transport.connected:
            return
        transport.connected = False
        transport.disconnecting = True
        self._held = None
        if self.failedByMe:
            reason = Failure(
                ConnectionLost(
                    "WebSocket connection failed"
                    f" (close code {self.localCloseCode})"
                )
            )
        elif self.wasClean:
            reason = Failure(ConnectionDone("WebSocket connection closed"))
        elif self._stream_reason is not None:
            reason = self._stream_reason
        else:
            reason = Failure(ConnectionLost(self.wasNotCleanReason))
        self._proto.connectionLost(reason)


def _positive_or_none(factory, name):
    value = getattr(factory, name, None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name} must be a positive number, not {value!r}")
    return value


def _subprotocols_of(factory):
    names = getattr(factory, "websocket_subprotocols", None) or ()
    if isinstance(names, str):
        raise TypeError(
            "websocket_subprotocols must be a list of strings, not a string"
        )
    names = tuple(names)
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"invalid WebSocket subprotocol name {name!r}")
    return names


def _path_of(factory, path):
    if path is None:
        path = getattr(factory, "websocket_default_path", None) or "/"
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"WebSocket path must start with '/': {path!r}")
    return path


class WebSocketWrappingFactory(WrappingWebSocketServerFactory):
    """
    Serve the protocols of another factory over WebSocket.

    @ivar websocket_path: the request path served.
    @ivar websocket_subprotocols: the subprotocols accepted (a tuple; empty
        means any).
    """

    protocol = WebSocketWrappingProtocol
    noisy = False

    def __init__(self, factory, reactor, path=None, secure=False):
        """
        @param factory: the factory of the protocol to carry; read for
            C{websocket_subprotocols}, C{websocket_default_path} and
            C{max_frame_bytes}.
        @param reactor: the reactor.
        @param path: the request path served; L{None} for the factory's
            C{websocket_default_path}, else C{"/"}.
        @param secure: whether the listener is TLS (C{wss:}); used for
            the scheme in the Origin check.
        """
        WrappingWebSocketServerFactory.__init__(
            self,
            factory,
            "wss://localhost" if secure else "ws://localhost",
            reactor=reactor,
            enableCompression=False,
        )
        self.websocket_path = _path_of(factory, path)
        self.websocket_subprotocols = _subprotocols_of(factory)
        self.protocols = list(self.websocket_subprotocols)
        self.server = None
        options = {"webStatus": False, "utf8validateIncoming": False}
        max_frame_bytes = getattr(factory, "max_frame_bytes", None)
        if max_frame_bytes is not None:
            max_frame_bytes = int(max_frame_bytes)
            if max_frame_bytes < 1:
                raise ValueError(
                    f"max_frame_bytes must be positive, not {max_frame_bytes}"
                )
            options["maxFramePayloadSize"] = max_frame_bytes
            options["maxMessagePayloadSize"] = max_frame_bytes
        self.max_frame_bytes_before_auth = _positive_or_none(
            factory, "max_frame_bytes_before_auth")
        self.handshake_timeout_s = _positive_or_none(factory, "handshake_timeout_s")
        if self.handshake_timeout_s is not None:
            # This deadline replaces autobahn's own opening handshake timeout.
            options["openHandshakeTimeout"] = 0
        self._closed_in_handshake = getattr(factory, "closed_in_handshake", None)
        self.setProtocolOptions(**options)

    def closed_in_handshake(self, peer, reason, why):
        """
        Tell the wrapped factory, if it wants to know, that a connection
        from C{peer} was dropped before its handshake completed.
        """
        if self._closed_in_handshake is not None:
            host = getattr(peer, "host", None)
            port = getattr(peer, "port", None)
            where = "{}:{}".format(host, port) if host is not None else str(peer)
            self._closed_in_handshake(where, reason, why)

    @property
    def wrapped_factory(self):
        """
        The factory of the carried protocol.
        """
        return self._factory

    def buildProtocol(self, addr):
        wrapped = self._factory.buildProtocol(addr)
        if wrapped is None:
            return None
        protocol = self.protocol()
        protocol.factory = self
        protocol._proto = wrapped
        limit = self.max_frame_bytes_before_auth
        if limit is not None and (
                not self.maxFramePayloadSize or limit < self.maxFramePayloadSize):
            # Read by autobahn in place of the factory's values.
            protocol.maxFramePayloadSize = limit
            protocol.maxMessagePayloadSize = limit
            protocol.onMessageFrameBegin = protocol._frame_begin_in_handshake
        return protocol

    def startFactory(self):
        self._factory.doStart()

    def stopFactory(self):
        self._factory.doStop()


@implementer(IStreamServerEndpoint)
class WebSocketServerEndpoint:
    """
    A stream server endpoint that serves any protocol factory over
    WebSocket on top of another endpoint.
    """

    def __init__(self, reactor, endpoint, path=None, secure=False):
        """
        @param reactor: the reactor.
        @param endpoint: the TCP or TLS L{IStreamServerEndpoint} underneath.
        @param path: see L{WebSocketWrappingFactory}.
        @param secure: whether C{endpoint} is TLS.
        """
        self._reactor = reactor
        self._endpoint = endpoint
        self._path = path
        self._secure = secure

    def listen(self, protocolFactory):
        """
        Listen with C{protocolFactory} wrapped in a
        L{WebSocketWrappingFactory}.

        @return: a L{Deferred} firing with the listening port.
        """
        factory = WebSocketWrappingFactory(
            protocolFactory, self._reactor, path=self._path, secure=self._secure
        )
        return self._endpoint.listen(factory)


_WS_OPTIONS = frozenset({"interface", "path", "backlog"})


def _parse_path(prefix, kwargs):
    path = kwargs.get("path")
    if path is not None and not path.startswith("/"):
        raise ValueError(f"{prefix}: path must start with '/': {path!r}")
    return path


@implementer(IPlugin, IStreamServerEndpointStringParser)
class WebSocketServerParser:
    """
    Parser of C{ws:} server endpoint strings.
    """

    prefix = "ws"

    def parseStreamServer(self, reactor, *args, **kwargs):
        """
        @return: a L{WebSocketServerEndpoint} over TCP.
        @raise ValueError: when the description is invalid.
        """
        port = check_options(self.prefix, args, kwargs, _WS_OPTIONS)
        backlog = parse_backlog(self.prefix, kwargs.get("backlog", "50"))
        path = _parse_path(self.prefix, kwargs)
        endpoint = TCP4ServerEndpoint(
            reactor, port, backlog=backlog, interface=kwargs.get("interface", "")
        )
        return WebSocketServerEndpoint(reactor, endpoint, path)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class SecureWebSocketServerParser:
    """
    Parser of C{wss:} server endpoint strings (the TLS options are those of
    L{robustmq.network.tls.TLSServerParser}).
    """

    prefix = "wss"

    def parseStreamServer(self, reactor, *args, **kwargs):
        """
        @return: a L{WebSocketServerEndpoint} over TLS.
        @raise ValueError: when the description is invalid.
        """
        port = check_options(self.prefix, args, kwargs, TLS_OPTIONS | _WS_OPTIONS)
        backlog = parse_backlog(self.prefix, kwargs.get("backlog", "50"))
        path = _parse_path(self.prefix, kwargs)
        options = parse_tls_options(self.prefix, kwargs)
        endpoint = SSL4ServerEndpoint(
            reactor,
            port,
            options,
            backlog=backlog,
            interface=kwargs.get("interface", ""),
        )
        return WebSocketServerEndpoint(reactor, endpoint, path, secure=True)
