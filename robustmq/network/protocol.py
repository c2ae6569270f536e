# -*- test-case-name: tests.test_network -*-
"""
The base of every client connection: bounded framing parsed from an offset,
registration in the connection manager, idle timeout, handshake deadline and
back-pressure.

A protocol subclasses L{FramedProtocol} and implements L{frame_length} and
L{frame_received}; its factory subclasses L{BrokerFactory}.

Before authentication: until L{FramedProtocol.handshake_complete} is true,
frames are limited to C{network.max_frame_bytes_before_auth}, and a
connection still in its handshake C{network.handshake_timeout_s} after the
TCP accept is closed. The handshake is never checked per frame: the larger
limit is taken the first time a frame over the small one arrives with the
handshake complete, and the deadlines are one heap and one timer per
listener.
"""

import heapq
from collections import deque

from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer


class FrameError(Exception):
    """
    The bytes received cannot be framed: the connection is closed.
    """


@implementer(IPushProducer)
class FramedProtocol(Protocol):
    """
    One client connection.

    Subclasses implement:
      - C{frame_length(buf, offset)}: the total length of the frame starting
        at C{offset}, or L{None} while its header is incomplete; raise
        L{FrameError} (or a protocol error) when it is malformed.
      - C{frame_received(buf, start, end)}: one complete frame. C{buf} is
        never changed after it has held a frame, so a memoryview of it may
        be kept instead of a copy (it keeps the whole buffer alive).
      - C{handshake_complete()}: whether the client has done its protocol
        handshake (authenticated); the base counts the first frame received.
    and may override C{frame_error(exc)}, C{frame_too_large(length, buf,
    offset)}, C{idle_timeout()}, C{handshake_timeout()},
    C{outbound_overflow()}, C{close_gracefully()} and
    C{connection_closed(reason)}.

    @ivar info: the L{robustmq.connections.ConnectionInfo} of this connection.
    @ivar output_paused: the client does not read fast enough; the transport
        buffer is full. Writes still work, but count toward
        C{outbound_buffer_bytes}.
    @ivar max_frame_bytes: the largest frame accepted now: the smaller limit
        of C{max_frame_bytes_before_auth} until the handshake is complete.
    @ivar max_frame_bytes_after_auth: the largest frame accepted once the
        handshake is complete.
    @ivar arrived_at: when the connection was accepted (set by the
        factory; the WebSocket upgrade comes before L{connectionMade}).
    """

    log = Logger()
    info = None
    closing = False
    output_paused = False
    arrived_at = None

    def connectionMade(self):
        f = self.factory
        self.reactor = f.reactor
        network = f.network
        self.max_frame_bytes_after_auth = network.max_frame_bytes
        self.max_frame_bytes = min(network.max_frame_bytes,
                                   network.max_frame_bytes_before_auth)
        self.outbound_limit = network.outbound_buffer_bytes
        self._buf = None
        self._paused_out = 0
        self._read_pauses = set()
        peer = self.transport.getPeer()
        host = getattr(peer, "host", None) or str(peer)
        port = getattr(peer, "port", None)
        self.peer_host = host
        self.peer = "{}:{}".format(host, port) if port is not None else host
        self.info = f.connections.register(
            self, f.protocol_name, f.listener, self.peer, host,
            ISSLTransport.providedBy(self.transport),
        )
        self.transport.registerProducer(self, True)
        self.set_idle_timeout(network.idle_timeout_s)
        arrived = self.arrived_at if self.arrived_at is not None else self.reactor.seconds()
        f.watch_handshake(self.info.id, arrived + network.handshake_timeout_s)

    # framing

    def dataReceived(self, data):
        info = self.info
        info.bytes_in += len(data)
        self._last_in = self.reactor.seconds()
        if self.closing:
            return
        buf = self._buf
        if buf:
            buf += data
        else:
            buf = data
        end = len(buf)
        offset = 0
        frames = 0
        max_frame = self.max_frame_bytes
        try:
            while offset < end:
                length = self.frame_length(buf, offset)
                if length is None:
                    break
                if length > max_frame:
                    info.messages_in += frames
                    frames = 0
                    max_frame = self._frame_limit()
                    if length > max_frame:
                        self._too_large(length, buf, offset)
                        return
                stop = offset + length
                if stop > end:
                    break
                frames += 1
                self.frame_received(buf, offset, stop)
                offset = stop
                if self.closing:
                    break
        except Exception as e:
            info.messages_in += frames
            self.frame_error(e)
            return
        info.messages_in += frames
        if end - offset > max_frame and end - offset > self._frame_limit():
            # No frame may be that long, complete or not.
            self._too_large(end - offset, buf, offset)
            return
        if offset == end:
            self._buf = None
        elif buf is data:
            self._buf = bytearray(memoryview(data)[offset:])
        elif offset:
            # Frames handed out may still be viewed: leave buf as it is.
            self._buf = buf[offset:]
        else:
            self._buf = buf

    def frame_length(self, buf, offset):
        raise NotImplementedError()

    def frame_received(self, buf, start, end):
        raise NotImplementedError()

    def frame_error(self, exc):
        """
        The input is malformed. Logs and drops the connection; protocols
        override to send their error first.
        """
        if isinstance(exc, FrameError):
            self.log.warn(
                "{protocol} {peer}: closing on malformed input: {error}",
                protocol=self.factory.protocol_name, peer=self.peer, error=exc,
            )
        else:
            self.log.failure(
                "{protocol} {peer}: closing after an unexpected error",
                protocol=self.factory.protocol_name, peer=self.peer,
            )
        self.abort_connection("malformed input")

    def frame_too_large(self, length, buf=None, offset=0):
        """
        A frame over L{max_frame_bytes} starts at C{buf[offset:]}: logs and
        drops the connection; protocols override to send their error first.
        """
        self.log.warn(
            "{protocol} {peer}: closing: frame of {length} bytes over the limit of"
            " {limit}{when}",
            protocol=self.factory.protocol_name, peer=self.peer, length=length,
            limit=self.max_frame_bytes,
            when=" before authentication" if self.in_handshake() else "",
        )
        self.abort_connection("frame too large")

    def _too_large(self, length, buf, offset):
        if self.in_handshake():
            self.factory.closed_in_handshake(self.peer, "frame_too_large")
        self.frame_too_large(length, buf, offset)

    def _frame_limit(self):
        """
        The frame limit, raised to L{max_frame_bytes_after_auth} once the
        handshake is complete. Called only when a frame is over the limit.
        """
        if self.max_frame_bytes < self.max_frame_bytes_after_auth and self.handshake_complete():
            self.max_frame_bytes = self.max_frame_bytes_after_auth
        return self.max_frame_bytes

    def limit_frames(self, limit):
        """
        Lower the largest frame accepted, before and after authentication,
        to C{limit} (e.g. a protocol's own maximum packet size).
        """
        self.max_frame_bytes_after_auth = min(self.max_frame_bytes_after_auth, limit)
        self.max_frame_bytes = min(self.max_frame_bytes, limit)

    # handshake

    def handshake_complete(self):
        """
        Whether the client has completed its protocol handshake: protocols
        override (MQTT: CONNECT accepted; AMQP: connection.open done; Kafka:
        a request received and SASL done when required). The base: a frame
        was received. Never called per frame.
        """
        return self.info is not None and self.info.messages_in > 0

    def in_handshake(self):
        """
        Whether the connection is still held to the frame limit before
        authentication.
        """
        return self.max_frame_bytes < self.max_frame_bytes_after_auth and (
            not self.handshake_complete())

    def handshake_deadline(self):
        """
        The deadline of the handshake has come (called by the factory):
        close the connection unless the handshake is complete.
        """
        if self.handshake_complete():
            return
        self.factory.closed_in_handshake(
            self.peer, "timeout",
            "handshake not complete {:g} s after the connection was accepted".format(
                self.factory.network.handshake_timeout_s))
        self.handshake_timeout()

    def handshake_timeout(self):
        """
        The client did not complete its handshake in time (logged and
        counted already): drop the connection.
        """
        self.abort_connection("handshake timeout")

    # output

    def send(self, data):
        """
        Write one frame (bytes) to the client.
        """
        info = self.info
        info.bytes_out += len(data)
        info.messages_out += 1
        if self.output_paused:
            self._paused_out += len(data)
            if self._paused_out > self.outbound_limit:
                self.outbound_overflow()
                return
        self.transport.write(data)

    def send_sequence(self, chunks, frames=1):
        """
        Write C{frames} frames given as a list of byte strings.
        """
        size = 0
        for c in chunks:
            size += len(c)
        info = self.info
        info.bytes_out += size
        info.messages_out += frames
        if self.output_paused:
            self._paused_out += size
            if self._paused_out > self.outbound_limit:
                self.outbound_overflow()
                return
        self.transport.writeSequence(chunks)

    def outbound_overflow(self):
        """
        More than C{outbound_buffer_bytes} waits for a client that does not
        read. Drops the connection; protocols may override to drop messages.
        """
        self.log.warn(
            "{protocol} {peer}: closing: over {limit} bytes wait for a client that does not read",
            protocol=self.factory.protocol_name, peer=self.peer, limit=self.outbound_limit,
        )
        self.abort_connection("outbound buffer full")

    # back-pressure: we are the producer registered with our own transport

    def pauseProducing(self):
        self.output_paused = True
        self.pause_reading("output")

    def resumeProducing(self):
        self.output_paused = False
        self._paused_out = 0
        self.resume_reading("output")

    def stopProducing(self):
        pass

    def pause_reading(self, reason):
        """
        Stop reading from the client until L{resume_reading} with the same reason.
        """
        if not self._read_pauses:
            self.transport.pauseProducing()
        self._read_pauses.add(reason)

    def resume_reading(self, reason):
        if reason in self._read_pauses:
            self._read_pauses.discard(reason)
            if not self._read_pauses and not self.closing:
                self.transport.resumeProducing()

    # frames held while a login is checked

    _login_frames = None

    def hold_frames(self):
        """
        Keep the frames received from now on, in order, and stop reading,
        until L{release_held_frames} or L{drop_held_frames}: while a password
        is checked off the reactor thread, what the client sent after its
        login waits. C{frame_received} is shadowed on this connection only,
        so this costs nothing per frame otherwise.
        """
        if self._login_frames is None:
            self._login_frames = deque()
            self.frame_received = self._hold_frame
            self.pause_reading("login")

    def _hold_frame(self, buf, start, end):
        self._login_frames.append(bytes(buf[start:end]))

    def drop_held_frames(self):
        """
        Forget the held frames (the login failed, or the connection is gone).
        """
        if self._login_frames is not None:
            self._login_frames = None
            # del, not self.__dict__.pop(): touching __dict__ gives the
            # instance a real dict, which makes every later attribute
            # lookup on this connection slower (CPython 3.11+).
            del self.frame_received

    def release_held_frames(self):
        """
        Handle the held frames, in order, and read again; a frame that
        starts another check holds the rest again.
        """
        held = self._login_frames
        self.drop_held_frames()
        self.resume_reading("login")
        while held and not self.closing:
            frame = held.popleft()
            try:
                self.frame_received(frame, 0, len(frame))
            except Exception as e:
                self.frame_error(e)
                return
            if self._login_frames is not None:
                self._login_frames.extend(held)
                return

    # idle timeout

    def set_idle_timeout(self, seconds):
        """
        Close the connection when nothing is received for C{seconds}
        (0 = never). Checked by one timer per connection, never reset per read.
        """
        self.idle_timeout_s = seconds
        self._last_in = self.reactor.seconds()
        timer = getattr(self, "_idle_timer", None)
        if timer is not None and timer.active():
            timer.cancel()
        self._idle_timer = None
        if seconds and seconds > 0:
            self._idle_timer = self.reactor.callLater(seconds, self._check_idle)

    def _check_idle(self):
        self._idle_timer = None
        if self.closing or self.info is None:
            return
        now = self.reactor.seconds()
        due = self._last_in + self.idle_timeout_s
        if now >= due:
            self.idle_timeout()
        else:
            self._idle_timer = self.reactor.callLater(due - now, self._check_idle)

    def idle_timeout(self):
        self.log.info(
            "{protocol} {peer}: closing: nothing received for {seconds} s",
            protocol=self.factory.protocol_name, peer=self.peer, seconds=self.idle_timeout_s,
        )
        self.abort_connection("idle")

    # closing

    def close_gracefully(self):
        """
        Say goodbye the protocol's way and close. The base only closes once
        the output buffer is written.
        """
        self.closing = True
        # A TLS transport only starts its shutdown once no producer is
        # registered, so stop being one first.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def abort_connection(self, reason):
        """
        Drop the connection now, whatever is left to write.
        """
        self.closing = True
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self.closing = True
        timer = getattr(self, "_idle_timer", None)
        if timer is not None and timer.active():
            timer.cancel()
        self._idle_timer = None
        self._buf = None
        info = self.info
        if info is not None:
            self.factory.unwatch_handshake(info.id)
            try:
                self.connection_closed(reason)
            finally:
                self.factory.connections.unregister(info)

    def connection_closed(self, reason):
        """
        Protocol clean-up after the connection is gone.
        """


class BrokerFactory(Factory):
    """
    Builds the connections of one listener of one protocol.

    @ivar params: the protocol's Params.
    @ivar listener: the endpoint string of the listener.
    @ivar websocket_subprotocols: what a C{ws:}/C{wss:} listener negotiates.
    @ivar websocket_default_path: the WebSocket path when C{path=} is not given.
    @ivar max_frame_bytes_before_auth: the frame limit of the handshake, which
        also bounds WebSocket messages until then.
    @ivar handshake_timeout_s: the handshake deadline, which also covers the
        TLS handshake and the WebSocket upgrade.

    The deadlines of the connections are kept in one heap per factory with
    one timer, rather than a timer per connection: a connection costs a heap
    entry until its deadline, and nothing once it is gone.
    """

    log = Logger()
    noisy = False
    protocol = FramedProtocol
    protocol_name = "base"
    websocket_subprotocols = ()
    websocket_default_path = "/"

    def __init__(self, params, listener):
        self.params = params
        self.listener = listener
        self.reactor = params.reactor
        self.network = params.config.network
        self.connections = params.connections
        self.metrics = params.metrics
        self.max_frame_bytes = self.network.max_frame_bytes
        self.max_frame_bytes_before_auth = min(
            self.max_frame_bytes, self.network.max_frame_bytes_before_auth)
        self.handshake_timeout_s = self.network.handshake_timeout_s
        self._deadlines = []
        self._watching = set()
        self._sweep_call = None
        self._handshake_closes = self.metrics.counter(
            "handshake_closes",
            "Connections closed before their handshake completed, by reason"
            " (timeout, frame_too_large)",
            ("protocol", "reason"),
        )

    def watch_handshake(self, conn_id, deadline):
        """
        Call C{handshake_deadline()} of connection C{conn_id} at
        C{deadline} (reactor time) unless it is gone by then.
        """
        heapq.heappush(self._deadlines, (deadline, conn_id))
        self._watching.add(conn_id)
        call = self._sweep_call
        delay = max(0.0, deadline - self.reactor.seconds())
        if call is None:
            self._sweep_call = self.reactor.callLater(delay, self._sweep)
        elif deadline < call.getTime():
            call.reset(delay)

    def unwatch_handshake(self, conn_id):
        """
        Connection C{conn_id} is gone. When no watched connection is left,
        the heap is emptied and the timer cancelled.
        """
        watching = self._watching
        if conn_id not in watching:
            return
        watching.discard(conn_id)
        if not watching:
            self._stop_sweep()

    def _stop_sweep(self):
        self._deadlines = []
        call = self._sweep_call
        self._sweep_call = None
        if call is not None and call.active():
            call.cancel()

    def _sweep(self):
        self._sweep_call = None
        now = self.reactor.seconds()
        heap = self._deadlines
        watching = self._watching
        while heap and heap[0][0] <= now:
            conn_id = heapq.heappop(heap)[1]
            if conn_id in watching:
                watching.discard(conn_id)
                info = self.connections.get(conn_id)
                if info is not None and info.conn is not None:
                    try:
                        info.conn.handshake_deadline()
                    except Exception:
                        self.log.failure(
                            "{protocol}: error at the handshake deadline of {peer}",
                            protocol=self.protocol_name, peer=info.peer)
        if not watching:
            self._stop_sweep()
        elif self._deadlines:
            self._sweep_call = self.reactor.callLater(
                max(0.0, self._deadlines[0][0] - self.reactor.seconds()), self._sweep)

    def closed_in_handshake(self, peer, reason, why=None):
        """
        Count a connection closed before its handshake completed, and log
        C{why} when given (once per connection, never per byte).

        @param reason: C{"timeout"} or C{"frame_too_large"}.
        """
        self._handshake_closes.labels(self.protocol_name, reason).inc()
        if why is not None:
            self.log.info(
                "{protocol} {peer}: closing before the handshake completed: {why}",
                protocol=self.protocol_name, peer=peer, why=why,
            )

    def buildProtocol(self, addr):
        host = getattr(addr, "host", None) or str(addr)
        refused = self.connections.admit(self.protocol_name, self.listener, host)
        if refused is not None:
            self.metrics.connection_rejected(self.protocol_name, refused)
            if refused == "file_descriptors":
                # Logged by the guard, once a minute.
                return None
            self.log.info(
                "{protocol} {listener}: refused connection from {host}: {reason}",
                protocol=self.protocol_name, listener=self.listener, host=host, reason=refused,
            )
            return None
        p = self.protocol()
        p.factory = self
        p.arrived_at = self.reactor.seconds()
        return p
