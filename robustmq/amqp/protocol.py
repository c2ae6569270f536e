# -*- test-case-name: tests.test_amqp_protocol -*-
"""
The AMQP 0-9-1 connection: protocol header, handshake (start, SASL PLAIN and
AMQPLAIN, tune, open), heartbeats, channels, content assembly and the
error handling RabbitMQ clients expect.

Frames are parsed from an offset in the received bytes. basic.publish and
basic.ack, the methods of the hot path, are read in place; every other
method goes through the generic decoder of L{robustmq.amqp.codec}. The
content header of a published message is kept as received and sent on to
consumers unchanged.
"""

import struct

from twisted.internet.task import LoopingCall

from robustmq.amqp import codec
from robustmq.amqp.channel import Channel
from robustmq.network.protocol import FramedProtocol

_U32 = struct.Struct(">I")
_Q = struct.Struct(">Q")
_HEARTBEAT = codec.HEARTBEAT_FRAME

# connection states
HEADER, START, TUNE, OPEN_WAIT, OPEN, CLOSING = range(6)

_EXPECTED = {
    START: "connection.start_ok",
    TUNE: "connection.tune_ok",
    OPEN_WAIT: "connection.open",
}

_PUBLISH = 60 << 16 | 40
_ACK = 60 << 16 | 80

#: Seconds to wait for connection.close-ok before dropping the connection.
CLOSE_TIMEOUT_S = 3.0

CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "consumer_priorities": True,
    "direct_reply_to": False,
}


class _Content:
    """
    A message being assembled on a channel.
    """

    __slots__ = ("exchange", "routing_key", "mandatory", "header", "size", "parts", "got")

    def __init__(self, exchange, routing_key, mandatory):
        self.exchange = exchange
        self.routing_key = routing_key
        self.mandatory = mandatory
        self.header = None
        self.size = 0
        self.parts = None
        self.got = 0


class AmqpProtocol(FramedProtocol):
    """
    One AMQP client connection.

    @ivar vhost: the L{robustmq.amqp.broker.Vhost} opened, after
        connection.open.
    @ivar capabilities: what the client announced in connection.start-ok.
    @ivar frame_max: the negotiated frame-max.
    @ivar exclusive_queues: the exclusive queues this connection owns.
    """

    state = HEADER
    vhost = None
    grant = None

    def connectionMade(self):
        FramedProtocol.connectionMade(self)
        f = self.factory
        config = f.params.config
        self.broker = f.broker
        self.frame_max = min(config.frame_max, config.network.max_frame_bytes)
        self.channel_max = min(config.channel_max, 65535)
        self.heartbeat = config.heartbeat_s
        self.channels = {}
        self.closing_channels = set()
        self.contents = {}
        self.confirm_channels = {}
        self.exclusive_queues = {}
        self.capabilities = {}
        self.client_properties = {}
        self.user = None
        self.blocked = False
        self.publisher = False
        self._heartbeat_loop = None
        self._close_timer = None
        self._last_out = 0
        f.connection_made(self)

    # framing

    def frame_length(self, buf, offset):
        if self.state == HEADER:
            if len(buf) - offset < 8:
                return None
            return 8
        if len(buf) - offset < 7:
            return None
        size = _U32.unpack_from(buf, offset + 3)[0]
        if size > self.frame_max - 8:
            raise codec.FrameError("frame size %d exceeds frame_max %d"
                                   % (size + 8, self.frame_max))
        return size + 8

    def handshake_complete(self):
        return self.vhost is not None

    def frame_too_large(self, length, buf=None, offset=0):
        # Before connection.open (the only case: frame_length checks
        # frame_max first): connection.close 501, as for frame_max.
        self.frame_error(codec.FrameError(
            "frame size %d exceeds %d before connection.open" % (length, self.max_frame_bytes)))

    def dataReceived(self, data):
        FramedProtocol.dataReceived(self, data)
        if self.confirm_channels:
            for ch in list(self.confirm_channels.values()):
                ch.flush_confirms()

    def frame_received(self, buf, start, end):
        state = self.state
        if state == HEADER:
            self._protocol_header(bytes(buf[start:end]))
            return
        if buf[end - 1] != 0xCE:
            raise codec.FrameError("invalid frame end octet %d" % (buf[end - 1],))
        ftype = buf[start]
        number = buf[start + 1] << 8 | buf[start + 2]
        try:
            if state == OPEN:
                if ftype == 1:
                    self._method_frame(buf, start, end, number)
                elif ftype == 3:
                    self._body_frame(buf, start, end, number)
                elif ftype == 2:
                    self._header_frame(buf, start, end, number)
                elif ftype == 8:
                    if number:
                        raise codec.FrameError("heartbeat frame on channel %d" % (number,))
                else:
                    raise codec.FrameError("unknown frame type %d" % (ftype,))
            elif state == CLOSING:
                if ftype == 1 and number == 0:
                    method = codec.decode_method(bytes(buf[start + 7:end - 1]))
                    if isinstance(method, codec.ConnectionClose):
                        self.send_method(0, codec.ConnectionCloseOk())
                        self._drop()
                    elif isinstance(method, codec.ConnectionCloseOk):
                        self._drop()
            else:
                self._handshake_frame(buf, start, end, number, ftype)
        except codec.AmqpError as e:
            self.amqp_error(e, number)
        except Exception:
            self.log.failure("amqp {peer}: error while handling a frame", peer=self.peer)
            self.amqp_error(codec.InternalError("internal error"), 0)

    def frame_error(self, exc):
        if isinstance(exc, codec.AmqpError):
            self.log.info("amqp {peer}: closing: {error}", peer=self.peer, error=exc)
            if self.state not in (HEADER, CLOSING):
                self.send_method(0, codec.ConnectionClose(
                    exc.reply_code, exc.reply_text, exc.class_id, exc.method_id))
            self.state = CLOSING
            self.closing = True
            self.transport.loseConnection()
            return
        FramedProtocol.frame_error(self, exc)

    def amqp_error(self, error, number):
        """
        Report C{error}: soft errors on a channel close that channel, every
        other error closes the connection.
        """
        if error.soft and number:
            ch = self.channels.pop(number, None)
            self.contents.pop(number, None)
            self.confirm_channels.pop(number, None)
            if ch is not None:
                ch.close()
            self.closing_channels.add(number)
            self.send_method(number, codec.ChannelClose(
                error.reply_code, error.reply_text, error.class_id, error.method_id))
            return
        self.log.info("amqp {peer}: connection error: {error}", peer=self.peer, error=error)
        self.close_connection(error.reply_code, error.reply_text, error.class_id,
                              error.method_id)

    # output

    def send_method(self, number, method):
        self.send(codec.encode_method(number, method))

    def close_connection(self, code, text, class_id=0, method_id=0):
        """
        Send connection.close and wait (a little) for close-ok.
        """
        state = self.state
        if state == CLOSING:
            return
        self.state = CLOSING
        self._release()
        if state == HEADER:
            self._drop()
            return
        self.send_method(0, codec.ConnectionClose(code, text, class_id, method_id))
        self._close_timer = self.reactor.callLater(CLOSE_TIMEOUT_S, self._drop)

    def _drop(self):
        timer = self._close_timer
        self._close_timer = None
        if timer is not None and timer.active():
            timer.cancel()
        self.closing = True
        self.transport.loseConnection()

    def close_gracefully(self):
        if self.state == OPEN:
            self.close_connection(
                320, "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'")
        else:
            self._drop()

    # handshake

    def _protocol_header(self, header):
        if not codec.check_protocol_header(header):
            self.log.info("amqp {peer}: unsupported protocol header {header!r}",
                          peer=self.peer, header=header)
            self.send(codec.PROTOCOL_HEADER)
            self._drop()
            return
        self.state = START
        props = {
            "product": "RobustMQ",
            "version": getattr(self.factory.params.node, "version", ""),
            "platform": "Python/Twisted",
            "copyright": "RobustMQ contributors",
            "information": "Licensed under the Apache License 2.0",
            "cluster_name": "robustmq@{}".format(getattr(self.factory.params.node, "node_id", 1)),
            "capabilities": dict(CAPABILITIES),
        }
        self.send_method(0, codec.ConnectionStart(0, 9, props, b"PLAIN AMQPLAIN", b"en_US"))

    def _handshake_frame(self, buf, start, end, number, ftype):
        if ftype == 8:
            return
        state = self.state
        if ftype != 1 or number != 0:
            raise codec.CommandInvalid("expected '%s'" % (_EXPECTED[state],))
        method = codec.decode_method(bytes(buf[start + 7:end - 1]))
        if isinstance(method, codec.ConnectionClose):
            self.send_method(0, codec.ConnectionCloseOk())
            self._drop()
            return
        if state == START and isinstance(method, codec.ConnectionStartOk):
            self._start_ok(method)
        elif state == TUNE and isinstance(method, codec.ConnectionTuneOk):
            self._tune_ok(method)
        elif state == OPEN_WAIT and isinstance(method, codec.ConnectionOpen):
            self._open(method)
        else:
            raise codec.CommandInvalid("expected '%s'" % (_EXPECTED[state],),
                                       method.class_id, method.method_id)

    def _start_ok(self, m):
        props = m.client_properties or {}
        self.client_properties = props
        caps = props.get("capabilities")
        self.capabilities = caps if isinstance(caps, dict) else {}
        user = password = None
        mechanism = m.mechanism
        response = m.response or b""
        if mechanism == "PLAIN":
            parts = response.split(b"\x00")
            if len(parts) == 3:
                user, password = parts[1], parts[2]
        elif mechanism == "AMQPLAIN":
            try:
                table = codec.decode_table(_U32.pack(len(response)) + response)[0]
            except codec.AmqpError:
                table = {}
            user, password = table.get("LOGIN"), table.get("PASSWORD")
        else:
            raise codec.CommandInvalid("unknown authentication mechanism '%s'" % (mechanism,))
        if isinstance(user, bytes):
            user = user.decode("utf-8", "replace")
        if isinstance(password, str):
            password = password.encode("utf-8")
        if user is None:
            return self._login_checked(False, user, mechanism, props)
        # The password check runs off the event loop; frames received
        # meanwhile wait, in order.
        self.hold_frames()
        d = self.factory.check_login(user, password, self.peer_host)
        d.addCallback(self._login_checked, user, mechanism, props)
        d.addErrback(self._login_error)

    def _login_error(self, failure):
        self.log.failure("amqp {peer}: password check failed", failure, peer=self.peer)
        self.drop_held_frames()
        if not self.closing:
            self._drop()

    def _login_checked(self, ok, user, mechanism, props):
        if self.closing:
            self.drop_held_frames()
            return
        if not ok:
            self.drop_held_frames()
            self.log.info("amqp {peer}: login refused for user {user!r} ({mechanism})",
                          peer=self.peer, user=user, mechanism=mechanism)
            if self.capabilities.get("authentication_failure_close"):
                self.close_connection(
                    403, "ACCESS_REFUSED - Login was refused using authentication mechanism %s."
                    " For details see the broker logfile." % (mechanism,))
            else:
                self.state = CLOSING
                self._drop()
            return
        self.user = user
        self.info.user = user
        name = props.get("connection_name")
        if isinstance(name, (str, bytes)):
            self.info.client_id = name if isinstance(name, str) else name.decode("utf-8", "replace")
        self.state = TUNE
        self.send_method(0, codec.ConnectionTune(self.channel_max, self.frame_max, self.heartbeat))
        self.release_held_frames()

    def _tune_ok(self, m):
        if m.frame_max:
            if m.frame_max < codec.FRAME_MIN_SIZE:
                raise codec.NotAllowed("frame_max=%d < %d min size"
                                       % (m.frame_max, codec.FRAME_MIN_SIZE))
            if m.frame_max > self.frame_max:
                raise codec.NotAllowed("frame_max=%d > %d max size"
                                       % (m.frame_max, self.frame_max))
            self.frame_max = m.frame_max
        if m.channel_max:
            self.channel_max = min(self.channel_max, m.channel_max)
        self.heartbeat = m.heartbeat
        self.state = OPEN_WAIT

    def _open(self, m):
        vhost = self.broker.vhost(m.virtual_host)
        if vhost is None:
            raise codec.NotAllowed("vhost %s not found" % (m.virtual_host,))
        self.grant = self.factory.permissions.grant(self.user, vhost.name)
        self.vhost = vhost
        self.state = OPEN
        self.send_method(0, codec.ConnectionOpenOk(""))
        hb = self.heartbeat
        if hb:
            self.set_idle_timeout(hb * 2)
            self._last_out = self.info.bytes_out
            loop = self._heartbeat_loop = LoopingCall(self._send_heartbeat)
            loop.clock = self.reactor
            loop.start(hb / 2.0, now=False)
        else:
            self.set_idle_timeout(0)
        self.factory.connection_opened(self)

    def _send_heartbeat(self):
        if self.info.bytes_out == self._last_out and self.state == OPEN:
            self.send(_HEARTBEAT)
        self._last_out = self.info.bytes_out

    # frames of an open connection

    def _method_frame(self, buf, start, end, number):
        key = _U32.unpack_from(buf, start + 7)[0] if end - start >= 12 else 0
        if number:
            ch = self.channels.get(number)
            if ch is not None and number not in self.contents:
                if key == _PUBLISH and self._fast_publish(buf, start, end, number):
                    return
                if key == _ACK and end - start == 21:
                    tag, bits = _Q.unpack_from(buf, start + 11)[0], buf[start + 19]
                    if bits & ~1:
                        raise codec.AmqpSyntaxError("bad bits", 60, 80)
                    try:
                        ch.ack(tag, bits & 1)
                    except codec.AmqpError as e:
                        e.class_id, e.method_id = 60, 80
                        raise
                    return
        method = codec.decode_method(bytes(buf[start + 7:end - 1]))
        if not number:
            self._connection_method(method)
            return
        ch = self.channels.get(number)
        if ch is None:
            if number in self.closing_channels:
                # The server closed this channel and waits for close-ok;
                # other methods are dropped. A client channel.close that
                # crossed ours is answered, and the client's close-ok for
                # ours still ends the wait (as in RabbitMQ).
                if isinstance(method, codec.ChannelCloseOk):
                    self.closing_channels.discard(number)
                elif isinstance(method, codec.ChannelClose):
                    self.send_method(number, codec.ChannelCloseOk())
                elif isinstance(method, codec.ChannelOpen):
                    raise codec.ChannelError("second 'channel.open' seen", 20, 10)
                return
            if isinstance(method, codec.ChannelOpen):
                self._open_channel(number)
                return
            raise codec.ChannelError("expected 'channel.open'", method.class_id,
                                     method.method_id)
        if number in self.contents:
            raise codec.UnexpectedFrame(
                "expected content header for class 60, got non content header frame instead",
                method.class_id, method.method_id)
        if isinstance(method, codec.BasicPublish):
            self._start_publish(ch, number, method.exchange, method.routing_key,
                                method.mandatory, method.immediate)
        elif isinstance(method, codec.ChannelClose):
            self._close_channel(ch)
            self.send_method(number, codec.ChannelCloseOk())
        elif isinstance(method, codec.ChannelCloseOk):
            pass
        elif isinstance(method, codec.ChannelOpen):
            raise codec.ChannelError("second 'channel.open' seen", 20, 10)
        else:
            ch.handle(method)

    def _open_channel(self, number):
        if len(self.channels) >= self.channel_max:
            raise codec.NotAllowed(
                "number of channels opened (%d) has reached the negotiated channel_max (%d)"
                % (len(self.channels), self.channel_max))
        self.channels[number] = Channel(self, number)
        self.send_method(number, codec.ChannelOpenOk(b""))

    def _close_channel(self, ch):
        self.channels.pop(ch.number, None)
        self.contents.pop(ch.number, None)
        self.confirm_channels.pop(ch.number, None)
        ch.close()

    def _fast_publish(self, buf, start, end, number):
        """
        Read basic.publish in place; C{False} to leave odd frames to the
        generic decoder.
        """
        off = start + 13
        stop = end - 1
        if off >= stop:
            return False
        ex_end = off + 1 + buf[off]
        if ex_end >= stop:
            return False
        rk_end = ex_end + 1 + buf[ex_end]
        if rk_end + 1 != stop:
            return False
        bits = buf[rk_end]
        if bits & ~3:
            return False
        exchange = str(buf[off + 1:ex_end], "utf-8", "surrogateescape")
        routing_key = str(buf[ex_end + 1:rk_end], "utf-8", "surrogateescape")
        self._start_publish(self.channels[number], number, exchange, routing_key,
                            bits & 1, bits & 2)
        return True

    def _start_publish(self, ch, number, exchange, routing_key, mandatory, immediate):
        if immediate:
            raise codec.NotImplemented_("immediate=true", 60, 40)
        self.contents[number] = _Content(exchange, routing_key, mandatory)

    def _header_frame(self, buf, start, end, number):
        content = self.contents.get(number)
        if content is None or content.header is not None:
            if number in self.closing_channels:
                return
            raise codec.UnexpectedFrame("unexpected content header frame on channel %d"
                                        % (number,))
        if end - start < 22:
            raise codec.FrameError("content header of %d bytes" % (end - start - 8,))
        header = bytes(buf[start + 7:end - 1])
        class_id, weight, size = struct.unpack_from(">HHQ", header, 0)
        if class_id != 60 or weight:
            raise codec.UnexpectedFrame("bad content header (class %d, weight %d)"
                                        % (class_id, weight), class_id)
        flags = header[12] << 8 | header[13]
        if flags:
            codec.decode_properties(header, 12, len(header))
        elif len(header) != 14:
            raise codec.AmqpSyntaxError("%d bytes after the content properties"
                                        % (len(header) - 14,), 60, 40)
        max_size = self.factory.params.config.max_message_bytes
        if size > max_size:
            del self.contents[number]
            raise codec.PreconditionFailed(
                "message size %d is larger than configured max size %d" % (size, max_size),
                60, 40)
        content.header = header
        content.size = size
        if not size:
            del self.contents[number]
            self._publish(number, content, b"")

    def _body_frame(self, buf, start, end, number):
        content = self.contents.get(number)
        if content is None or content.header is None:
            if number in self.closing_channels:
                return
            raise codec.UnexpectedFrame("unexpected content body frame on channel %d"
                                        % (number,))
        if type(buf) is bytes:
            chunk = buf[start + 7:end - 1]
        else:
            chunk = bytes(memoryview(buf)[start + 7:end - 1])
        got = content.got + len(chunk)
        if got > content.size:
            raise codec.UnexpectedFrame("content body larger than its header announced")
        if got == content.size:
            del self.contents[number]
            if content.parts is not None:
                content.parts.append(chunk)
                chunk = b"".join(content.parts)
            self._publish(number, content, chunk)
            return
        content.got = got
        if content.parts is None:
            content.parts = [chunk]
        else:
            content.parts.append(chunk)

    def _publish(self, number, content, body):
        ch = self.channels.get(number)
        if ch is None:
            return
        if not self.publisher:
            self.publisher = True
            self.factory.publisher_started(self)
        ch.publish(content.exchange, content.routing_key, content.mandatory, content.header,
                   body)

    def _connection_method(self, method):
        if isinstance(method, codec.ConnectionClose):
            self.state = CLOSING
            self._release()
            self.send_method(0, codec.ConnectionCloseOk())
            self._drop()
        elif isinstance(method, codec.ConnectionCloseOk):
            self._drop()
        elif isinstance(method, codec.ConnectionUpdateSecret):
            self.send_method(0, codec.ConnectionUpdateSecretOk())
        elif isinstance(method, (codec.ConnectionBlocked, codec.ConnectionUnblocked)):
            pass
        else:
            raise codec.ChannelError("unexpected method in connection state running",
                                     method.class_id, method.method_id)

    # blocking publishers

    def set_blocked(self, blocked, reason=""):
        """
        Block (stop reading from) or unblock this connection, telling the
        client when it understands connection.blocked.
        """
        if blocked == self.blocked or self.state != OPEN:
            return
        self.blocked = blocked
        tell = self.capabilities.get("connection.blocked")
        if blocked:
            if tell:
                self.send_method(0, codec.ConnectionBlocked(reason))
            self.pause_reading("blocked")
        else:
            if tell:
                self.send_method(0, codec.ConnectionUnblocked())
            self.resume_reading("blocked")

    def idle_timeout(self):
        if self._read_pauses:
            # Not reading (blocked, or back-pressure): the client's
            # heartbeats wait in the socket, so its silence means nothing.
            self.set_idle_timeout(self.idle_timeout_s)
            return
        FramedProtocol.idle_timeout(self)

    # back-pressure

    def pauseProducing(self):
        FramedProtocol.pauseProducing(self)
        for ch in self.channels.values():
            ch.deliverable = False

    def resumeProducing(self):
        FramedProtocol.resumeProducing(self)
        for ch in list(self.channels.values()):
            ch.update_deliverable()

    # the end

    def _release(self):
        """
        Close every channel (requeueing what they did not acknowledge) and
        delete the exclusive queues.
        """
        loop = self._heartbeat_loop
        self._heartbeat_loop = None
        if loop is not None and loop.running:
            loop.stop()
        channels = list(self.channels.values())
        self.channels.clear()
        self.contents.clear()
        self.confirm_channels.clear()
        for ch in channels:
            try:
                ch.close()
            except Exception:
                self.log.failure("amqp {peer}: error while closing a channel", peer=self.peer)
        queues = list(self.exclusive_queues.values())
        self.exclusive_queues.clear()
        for q in queues:
            try:
                self.broker.delete_queue(q, notify=False)
            except Exception:
                self.log.failure("amqp {peer}: error while deleting a queue", peer=self.peer)

    def connection_closed(self, reason):
        timer = self._close_timer
        self._close_timer = None
        if timer is not None and timer.active():
            timer.cancel()
        self._release()
        self.factory.connection_lost(self)
