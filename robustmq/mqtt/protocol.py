# -*- test-case-name: tests.test_mqtt_protocol -*-
"""
The MQTT connection: framing, the codec and the packet handlers of one
client (3.1, 3.1.1 or 5.0) on any transport.

Bad input, as the specifications want it: a malformed packet gets a v5
DISCONNECT 0x81 (or CONNACK 0x81 during connect) and the connection is
closed, a 3.x client is just closed; a protocol error (a second CONNECT, a
packet before CONNECT, a wrong QoS 2 flow) gets 0x82; a packet over the
maximum packet size 0x95.

Enhanced authentication (MQTT 5 AUTH): the broker's C{auth_methods} maps an
Authentication Method to a handler with one method::

    handler.auth(client_id, method, data, state) -> (reason_code, data, state)

called with C{state} L{None} for the CONNECT, then with what it returned
for each AUTH; reason code 0x00 accepts, 0x18 continues the exchange (the
data goes to the client in an AUTH packet), any code from 0x80 refuses.
"""

from collections import deque

from twisted.logger import Logger

from robustmq.mqtt.broker import (
    forwarded_properties, is_sys_topic, landing_topic,
)
from robustmq.mqtt.codec import (
    AUTH, CONNECT, DISCONNECT, MQTT_5, PINGREQ, PUBACK, PUBCOMP, PUBLISH,
    PUBREC, PUBREL, SUBSCRIBE, UNSUBSCRIBE, Auth, Connack, Disconnect,
    MqttError, PublishTemplate, Suback, Unsuback,
    UnsupportedProtocolVersion, decode_packet, is_valid_topic_filter,
    packet_length, pack_u16,
)
from robustmq.network.protocol import FramedProtocol

_PINGRESP = b"\xd0\x00"
_ACL_CACHE = 1000


def _is_utf8(payload):
    """
    Whether C{payload} is well-formed UTF-8 (Payload Format Indicator 1).
    """
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _peek_level(buf, start, end):
    """
    The protocol level of a CONNECT that may not decode, or L{None}.
    """
    try:
        pos = start + 1
        while buf[pos] & 0x80:
            pos += 1
        pos += 1
        name_length = (buf[pos] << 8) | buf[pos + 1]
        pos += 2 + name_length
        return buf[pos] if pos < end else None
    except IndexError:
        return None


class MqttProtocol(FramedProtocol):
    """
    One MQTT client connection.

    @ivar level: the protocol level (3, 4 or 5) once CONNECT is read.
    @ivar session: the L{robustmq.mqtt.broker.Session}, while connected.
    @ivar send_quota: how many QoS 1/2 messages may be in flight to the
        client.
    @ivar plain: QoS 0 messages can be written as the shared encoded bytes
        (no outgoing topic aliases, no maximum packet size to check).
    """

    log = Logger()

    level = 4
    session = None
    accepted = False
    plain = True
    send_quota = 32
    will = None
    normal_disconnect = False
    max_out_size = None
    alias_out_max = 0
    problem_info = True
    auth_method = None
    held_acks = 0
    alias_in = None
    alias_out = None
    username = None
    _rate = 0
    _acl_publish = None
    _throttled = None
    _drain_call = None
    _connect_level = None
    _abort_call = None
    _auth_state = None
    _pending_connect = None

    def connectionMade(self):
        FramedProtocol.connectionMade(self)
        factory = self.factory
        self.broker = factory.broker
        self.broker.start()
        self.pconfig = factory.protocol_config
        self.limit_frames(self.pconfig.max_packet_size)
        rate = self.pconfig.publish_rate_per_client
        if rate:
            self._rate = rate

    # -- framing -------------------------------------------------------------

    def frame_length(self, buf, offset):
        return packet_length(buf, offset)

    def frame_received(self, buf, start, end):
        if self._throttled is not None:
            self._throttled.append(bytes(buf[start:end]))
            return
        if (self._rate and buf[start] >> 4 == PUBLISH and self.accepted
                and not self._rate_token()):
            # Over its publish rate: this packet and every one after it
            # wait (in order) while reading from the client is paused.
            self._throttled = deque([bytes(buf[start:end])])
            self.pause_reading("rate")
            self._schedule_drain()
            return
        self.packet_received(buf, start, end)

    def _rate_token(self):
        return self.factory.params.rate_limiter.try_acquire(
            ("mqtt_publish", self.client_id), 1.0, self._rate,
            self.pconfig.publish_burst_per_client)

    def _schedule_drain(self):
        delay = self.factory.params.rate_limiter.delay_for(
            ("mqtt_publish", self.client_id), 1.0, self._rate,
            self.pconfig.publish_burst_per_client)
        self._drain_call = self.reactor.callLater(delay, self._drain)

    def _drain(self):
        self._drain_call = None
        waiting = self._throttled
        while waiting and not self.closing:
            frame = waiting[0]
            if frame[0] >> 4 == PUBLISH and not self._rate_token():
                self._schedule_drain()
                return
            waiting.popleft()
            try:
                self.packet_received(frame, 0, len(frame))
            except Exception as e:
                self.frame_error(e)
                return
        self._throttled = None
        self.resume_reading("rate")

    def packet_received(self, buf, start, end):
        """
        Decode and handle one packet.
        """
        kind = buf[start] >> 4
        if self.accepted:
            if kind == CONNECT:
                raise MqttError("second CONNECT [MQTT-3.1.0-2]", 0x82)
        else:
            if kind == CONNECT:
                if self._pending_connect is not None:
                    raise MqttError("second CONNECT [MQTT-3.1.0-2]", 0x82)
                self._connect_level = _peek_level(buf, start, end)
            elif kind != AUTH or self._pending_connect is None:
                raise MqttError("packet type %d before CONNECT "
                                "[MQTT-3.1.0-1]" % (kind,), 0x82)
        packet = decode_packet(buf, start, end, self.level)
        if kind == PUBLISH:
            self.handle_publish(packet)
        else:
            self._handlers[kind](self, packet)

    def frame_error(self, exc):
        if isinstance(exc, MqttError):
            self.protocol_violation(exc.reason_code, str(exc), exc)
        else:
            FramedProtocol.frame_error(self, exc)

    def frame_too_large(self, length, buf=None, offset=0):
        if self.accepted:
            when = ""
        else:
            when = " before CONNECT was accepted"
            if (self._connect_level is None and buf is not None
                    and buf[offset] >> 4 == CONNECT):
                # A CONNECT too large: MQTT 5 clients get CONNACK 0x95 when
                # the protocol level is already in.
                self._connect_level = _peek_level(buf, offset, len(buf))
        self.protocol_violation(
            0x95, "packet of %d bytes over the maximum of %d%s"
            % (length, self.max_frame_bytes, when))

    def handshake_complete(self):
        return self.accepted

    def protocol_violation(self, code, why, exc=None):
        """
        Tell the client what is wrong (MQTT 5) and close.
        """
        self.log.info(
            "mqtt {peer} {client_id}: closing: {why}", peer=self.peer,
            client_id=self.info.client_id if self.info else None, why=why)
        if self.closing:
            return
        if self.accepted:
            if self.level == MQTT_5:
                self.send(Disconnect(code).encode(MQTT_5))
        elif isinstance(exc, UnsupportedProtocolVersion):
            if exc.protocol_name in ("MQTT", "MQIsdp"):
                if exc.protocol_level == MQTT_5 or self._connect_level == 5:
                    self.send(Connack(False, 0x84).encode(MQTT_5))
                else:
                    self.send(b"\x20\x02\x00\x01")
        elif self._connect_level == MQTT_5 or self.level == MQTT_5:
            self.send(Connack(False, code).encode(MQTT_5))
        self.close_after_write()

    def close_after_write(self, timeout=10):
        """
        Close once what is written is sent (abort after C{timeout} s).
        """
        self.closing = True
        self.transport.loseConnection()
        if self._abort_call is None:
            self._abort_call = self.reactor.callLater(
                timeout, self.abort_connection, "close timed out")

    # -- CONNECT -------------------------------------------------------------

    def handle_connect(self, p):
        level = p.protocol_level
        if level != self.level:
            self.level = level
        props = p.properties
        method = props.get("authentication_method") if props else None
        if method is not None:
            handler = self.broker.auth_methods.get(method)
            if handler is None:
                return self.refuse(0x8C, 0x05, "unsupported authentication "
                                   "method %r" % (method,))
            self.auth_method = method
            self._pending_connect = p
            return self._auth_step(handler, props.get("authentication_data"))
        if p.username is not None or p.password is not None:
            if p.username is None:
                return self.refuse(0x86, 0x04, "bad user name or password")
            # The check runs off the event loop: the packets the client
            # sends after CONNECT wait (in order) for its result.
            self.hold_frames()
            d = self.factory.params.authenticator.authenticate(
                p.username, p.password, self.peer_host)
            d.addCallback(self._password_checked, p)
            d.addErrback(self._login_error)
            return
        elif not self.factory.params.authenticator.allow_anonymous:
            return self.refuse(0x87, 0x05, "anonymous clients not allowed")
        self.accept(p)

    def _password_checked(self, ok, p):
        if self.closing:
            return
        if not ok:
            self.drop_held_frames()
            return self.refuse(0x86, 0x04, "bad user name or password")
        self.accept(p)
        self.release_held_frames()

    def _login_error(self, failure):
        self.log.failure("mqtt {peer}: password check failed", failure, peer=self.peer)
        self.drop_held_frames()
        if not self.closing:
            self.refuse(0x80, 0x03, "server error")

    def _auth_step(self, handler, data):
        p = self._pending_connect
        code, out, self._auth_state = handler.auth(
            p.client_id, self.auth_method, data, self._auth_state)
        if code == 0x18:
            props = {"authentication_method": self.auth_method}
            if out is not None:
                props["authentication_data"] = out
            self.send(Auth(0x18, props).encode(MQTT_5))
            return
        if code:
            return self.refuse(code, 0x05, "enhanced authentication failed")
        self._auth_success = out
        self.accept(p)

    def refuse(self, code_v5, code_v3, why, props=None):
        self.log.info("mqtt {peer}: connection refused: {why}",
                      peer=self.peer, why=why)
        if self.level == MQTT_5:
            props = dict(props or {})
            if self.problem_info:
                props["reason_string"] = why
            self.send(Connack(False, code_v5, props).encode(MQTT_5))
        else:
            self.send(Connack(False, code_v3).encode(self.level))
        self.close_after_write()

    def accept(self, p):
        level = self.level
        config = self.pconfig
        broker = self.broker
        props = p.properties
        client_id = p.client_id
        assigned = None
        if level == MQTT_5 and props.get("request_problem_information") == 0:
            self.problem_info = False
        if config.server_reference:
            return self.refuse(
                0x9D if config.server_moved else 0x9C, 0x03,
                "use another server", self.server_reference())
        will = p.will
        if (level == MQTT_5 and will is not None and will.properties
                and will.properties.get("payload_format_indicator") == 1
                and not _is_utf8(will.payload)):
            return self.refuse(0x99, 0x05, "will payload is not UTF-8")
        if not client_id:
            if level != MQTT_5 and (level == 3 or not p.clean_start):
                return self.refuse(0x85, 0x02, "empty client identifier")
            client_id = assigned = broker.assign_client_id()
        if will is not None and not self._will_allowed(will, client_id,
                                                       p.username):
            self.factory.params.metrics.connection_rejected("mqtt", "will_denied")
            return self.refuse(0x87, 0x05, "client %r user %r may not publish"
                               " its will to %r" % (client_id, p.username,
                                                    will.topic))
        clean_start = p.clean_start
        if broker.owned_by_other(client_id, p.username):
            if self.factory.params.config.session_owner_check == "refuse":
                self.factory.params.metrics.connection_rejected(
                    "mqtt", "session_owner")
                return self.refuse(0x87, 0x05, "user %r may not take the"
                                   " session of client %r of another user"
                                   % (p.username, client_id))
            self.log.info(
                "mqtt {peer}: session of client {client_id!r} belongs to"
                " another user: a fresh session for user {user!r}",
                peer=self.peer, client_id=client_id, user=p.username)
            clean_start = True
        ack = {}
        if level == MQTT_5:
            expiry = props.get("session_expiry_interval", 0)
            if expiry > config.max_session_expiry_s:
                expiry = config.max_session_expiry_s
                ack["session_expiry_interval"] = expiry
            receive_maximum = props.get("receive_maximum", 65535)
            self.send_quota = min(receive_maximum, config.max_inflight)
            size = props.get("maximum_packet_size")
            if size is not None:
                self.max_out_size = size
            self.alias_out_max = props.get("topic_alias_maximum", 0)
            if self.alias_out_max:
                self.alias_out = {}
            self.plain = not self.alias_out_max and self.max_out_size is None
            if assigned is not None:
                ack["assigned_client_identifier"] = assigned
            ack["receive_maximum"] = min(config.receive_maximum, 65535)
            ack["topic_alias_maximum"] = min(config.topic_alias_maximum, 65535)
            if broker.max_qos < 2:
                ack["maximum_qos"] = broker.max_qos
            ack["retain_available"] = int(config.retain_available)
            ack["maximum_packet_size"] = self.max_frame_bytes_after_auth
            ack["wildcard_subscription_available"] = int(
                config.wildcard_subscription_available)
            ack["subscription_identifier_available"] = int(
                config.subscription_identifiers_available)
            ack["shared_subscription_available"] = int(
                config.shared_subscription_available)
            if config.server_keep_alive:
                ack["server_keep_alive"] = config.server_keep_alive
            if props.get("request_response_information") == 1:
                ack["response_information"] = "response/" + client_id
            if self.auth_method is not None:
                ack["authentication_method"] = self.auth_method
                if getattr(self, "_auth_success", None) is not None:
                    ack["authentication_data"] = self._auth_success
        else:
            expiry = 0 if p.clean_start else config.max_session_expiry_s
            self.send_quota = config.max_inflight
        self.send_quota = min(self.send_quota, 65535)
        keep_alive = config.server_keep_alive or p.keep_alive
        self.set_idle_timeout(keep_alive * 1.5 if keep_alive else 0)
        # (Attributes that keep their class default are not set: an idle
        # connection's instance dict stays small.)
        if p.will is not None:
            self.will = p.will
        self.client_id = client_id
        if p.username is not None:
            self.username = p.username
        self.info.client_id = client_id
        self.info.user = p.username
        if self._pending_connect is not None:
            self._pending_connect = None
        self.accepted = True
        session, present = broker.open_session(self, client_id, clean_start,
                                               expiry)
        self.session = session
        self.send(Connack(present, 0, ack).encode(level))
        if present:
            broker.resume(session)

    def _will_allowed(self, will, client_id, username):
        """
        Whether this client may publish its will: a will is a publish, so
        the ACL decides, and it never goes to a C{$SYS} topic.
        """
        topic = landing_topic(will.topic)
        if is_sys_topic(topic):
            allowed = False
        else:
            allowed = self.factory.params.authorizer.check(
                "publish", topic, username, client_id, self.peer_host)
        if not allowed:
            self.broker.acl_denied.labels("publish").inc()
        return allowed

    def taken_over(self, clean_start):
        """
        Another connection took this client id (reason 0x8E).
        """
        will, self.will = self.will, None
        self.log.info("mqtt {peer} {client_id}: session taken over",
                      peer=self.peer, client_id=self.client_id)
        if self.level == MQTT_5 and not self.closing:
            self.send(Disconnect(0x8E).encode(MQTT_5))
        self.close_after_write()
        if will is not None:
            delay = will.properties.get("will_delay_interval", 0) if (
                will.properties) else 0
            if clean_start or not delay:
                self.broker.publish(will.topic, will.payload, will.qos,
                                    will.retain,
                                    forwarded_properties(will.properties),
                                    self.client_id)

    # -- PUBLISH in ------------------------------------------------------------

    def handle_publish(self, p):
        topic = p.topic
        qos = p.qos
        props = p.properties
        level = self.level
        if props:
            alias = props.get("topic_alias")
            if alias is not None:
                if alias > self.pconfig.topic_alias_maximum:
                    raise MqttError("topic alias %d over the maximum" % alias,
                                    0x94)
                if self.alias_in is None:
                    self.alias_in = {}
                if topic:
                    self.alias_in[alias] = topic
                else:
                    topic = self.alias_in.get(alias)
                    if topic is None:
                        raise MqttError("unknown topic alias %d" % alias,
                                        0x82)
            if "subscription_identifier" in props:
                raise MqttError("subscription identifier in a PUBLISH from "
                                "a client [MQTT-3.3.4-6]", 0x82)
            if (props.get("payload_format_indicator") == 1
                    and not _is_utf8(p.payload)):
                if not qos:
                    raise MqttError("payload is not UTF-8", 0x99)
                self.send_ack(0x40 if qos == 1 else 0x50, p.packet_id, 0x99)
                return
            props = forwarded_properties(props)
        if qos > self.broker.max_qos:
            raise MqttError("QoS %d over the maximum" % qos, 0x9B)
        retain = p.retain
        if retain and not self.pconfig.retain_available:
            if level == MQTT_5:
                raise MqttError("retain not supported", 0x9A)
            retain = False
        cache = self._acl_publish
        allowed = cache.get(topic) if cache is not None else None
        if allowed is None:
            allowed = self.publish_allowed(topic)
        if not allowed:
            self.broker.drop_denied.inc()
            self.broker.acl_denied.labels("publish").inc()
            if qos == 1:
                self.send_ack(0x40, p.packet_id, 0x87)
            elif qos == 2:
                self.send_ack(0x50, p.packet_id, 0x87)
            return
        if qos == 2:
            awaiting = self.session.awaiting_rel
            if p.packet_id in awaiting:
                self.send_ack(0x50, p.packet_id, 0)
                return
            if len(awaiting) >= self.pconfig.receive_maximum:
                raise MqttError("receive maximum exceeded", 0x93)
        broker = self.broker
        journal = broker.journal
        events = journal.events
        count = broker.publish(topic, p.payload, qos, retain, props,
                               self.client_id, self.session)
        if not qos:
            return
        if qos == 1:
            if count or level != MQTT_5:
                ack = b"\x40\x02" + pack_u16(p.packet_id)
            else:
                ack = b"\x40\x03" + pack_u16(p.packet_id) + b"\x10"
        else:
            session = self.session
            jid = None
            if session.persistent and journal.enabled:
                session.journaled = True
                jid = journal.wait_rel(session, p.packet_id)
            session.awaiting_rel[p.packet_id] = jid
            if count or level != MQTT_5:
                ack = b"\x50\x02" + pack_u16(p.packet_id)
            else:
                ack = b"\x50\x03" + pack_u16(p.packet_id) + b"\x10"
        # Acknowledged means stored: the ack waits for the journal when
        # this message (or an earlier one of this client) went into it.
        if journal.events != events or self.held_acks:
            journal.hold(self, ack)
        else:
            self.send(ack)

    def publish_allowed(self, topic):
        """
        Whether this client may publish to C{topic} (the topic it lands on,
        for a delayed publish): the ACL decides, and C{$SYS} topics are the
        broker's own.
        """
        real = landing_topic(topic)
        if is_sys_topic(real):
            allowed = False
        else:
            allowed = self.factory.params.authorizer.check(
                "publish", real, self.username, self.client_id,
                self.peer_host)
        cache = self._acl_publish
        if cache is None:
            cache = self._acl_publish = {}
        elif len(cache) >= _ACL_CACHE:
            cache.clear()
        cache[topic] = allowed
        return allowed

    def send_ack(self, first, packet_id, code):
        if code and self.level == MQTT_5:
            self.send(bytes((first, 3)) + pack_u16(packet_id) + bytes((code,)))
        else:
            self.send(bytes((first, 2)) + pack_u16(packet_id))

    # -- PUBLISH out -----------------------------------------------------------

    def send_publish(self, msg, qos, retain, sub_ids, packet_id, dup=False):
        """
        Write one message to this client.

        @return: C{False} when it was dropped (expired, or over the client's
            maximum packet size).
        """
        broker = self.broker
        if self.level == MQTT_5:
            props = None
            key = None
            if sub_ids:
                props = dict(msg.properties) if msg.properties else {}
                props["subscription_identifier"] = list(sub_ids)
                key = sub_ids
            if msg.expiry_at is not None:
                now = self.reactor.seconds()
                left = msg.remaining(now)
                if not left:
                    broker.drop_expired.inc()
                    return False
                if now - msg.created >= 1:
                    if props is None:
                        props = dict(msg.properties)
                    props["message_expiry_interval"] = left
                    key = (sub_ids, left)
            if self.alias_out_max:
                return self._send_aliased(msg, qos, retain, props, packet_id,
                                          dup)
            template = msg.fanout.template(MQTT_5, qos, retain, props, key)
        else:
            template = msg.fanout.template(self.level, qos, retain)
        data = template.data
        if data is None:
            data = template.packet(packet_id, dup)
        elif self.output_paused and (
                self._paused_out + len(data) > self.outbound_limit):
            broker.drop_slow.inc()
            return False
        if self.max_out_size is not None and len(data) > self.max_out_size:
            broker.drop_too_large.inc()
            return False
        self.send(data)
        return True

    def _send_aliased(self, msg, qos, retain, props, packet_id, dup):
        topic = msg.topic
        props = dict(props if props is not None else (msg.properties or {}))
        alias = self.alias_out.get(topic)
        new_alias = None
        if alias is not None:
            props["topic_alias"] = alias
            name = ""
        else:
            name = topic
            if len(self.alias_out) < self.alias_out_max:
                new_alias = len(self.alias_out) + 1
                props["topic_alias"] = new_alias
        template = PublishTemplate(name, msg.payload, MQTT_5, qos, retain,
                                   props)
        data = template.data
        if data is None:
            data = template.packet(packet_id, dup)
        if self.max_out_size is not None and len(data) > self.max_out_size:
            self.broker.drop_too_large.inc()
            return False
        if new_alias is not None:
            self.alias_out[topic] = new_alias
        self.send(data)
        return True

    def send_pubrel(self, packet_id):
        self.send(b"\x62\x02" + pack_u16(packet_id))

    # -- acknowledgements ------------------------------------------------------

    def handle_puback(self, p):
        self.broker.acknowledged(self.session, p.packet_id)

    def handle_pubrec(self, p):
        failed = p.reason_code >= 0x80
        found = self.broker.received(self.session, p.packet_id, failed)
        if failed:
            return
        if found or self.level != MQTT_5:
            self.send_pubrel(p.packet_id)
        else:
            self.send_ack(0x62, p.packet_id, 0x92)

    def handle_pubrel(self, p):
        awaiting = self.session.awaiting_rel
        if p.packet_id in awaiting:
            jid = awaiting.pop(p.packet_id)
            if jid is not None:
                self.broker.journal.released(self.session, jid)
            self.send(b"\x70\x02" + pack_u16(p.packet_id))
        else:
            self.send_ack(0x70, p.packet_id, 0x92)

    def handle_pubcomp(self, p):
        self.broker.acknowledged(self.session, p.packet_id)

    # -- SUBSCRIBE / UNSUBSCRIBE ---------------------------------------------

    def handle_subscribe(self, p):
        config = self.pconfig
        level = self.level
        broker = self.broker
        sub_id = None
        if p.properties:
            ids = p.properties.get("subscription_identifier")
            if ids:
                if not config.subscription_identifiers_available:
                    raise MqttError("subscription identifiers not supported",
                                    0xA1)
                sub_id = ids[0]
        v5 = level == MQTT_5
        codes = []
        accepted = []
        authorizer = self.factory.params.authorizer
        for s in p.subscriptions:
            topic_filter = s.topic_filter
            real = topic_filter
            shared = topic_filter.startswith("$share/")
            if shared:
                real = topic_filter.split("/", 2)[2] if (
                    topic_filter.count("/") >= 2) else ""
            if not is_valid_topic_filter(topic_filter):
                codes.append(0x8F if v5 else 0x80)
            elif shared and not config.shared_subscription_available:
                codes.append(0x9E if v5 else 0x80)
            elif not config.wildcard_subscription_available and (
                    "+" in real or "#" in real):
                codes.append(0xA2 if v5 else 0x80)
            elif not authorizer.check("subscribe", real, self.username,
                                      self.client_id, self.peer_host):
                broker.acl_denied.labels("subscribe").inc()
                codes.append(0x87 if v5 else 0x80)
            else:
                qos = min(s.qos, broker.max_qos)
                codes.append(qos)
                accepted.append((s, qos))
        session = self.session
        added = [broker.add_subscription(
            session, s.topic_filter, qos, s.no_local, s.retain_as_published,
            s.retain_handling, sub_id) for s, qos in accepted]
        suback = Suback(p.packet_id, codes).encode(level)
        saved = broker.save_session(session) if added else None
        if saved is None:
            self.send(suback)
            for sub, existed in added:
                broker.retained_on_subscribe(sub, existed)
            return

        # A persistent session: SUBACK once the subscription is stored.
        def stored(result):
            if self.session is session and not self.closing:
                self.send(suback)
                for sub, existed in added:
                    broker.retained_on_subscribe(sub, existed)
            return None

        def failed(failure):
            self.log.failure("mqtt {client_id}: subscription not stored",
                             failure, client_id=self.client_id)
            if not self.closing:
                self.abort_connection("subscription not stored")

        saved.addCallbacks(stored, failed)

    def handle_unsubscribe(self, p):
        codes = []
        for topic_filter in p.topic_filters:
            found = self.broker.unsubscribe(self.session, topic_filter)
            codes.append(0 if found else 0x11)
        self.send(Unsuback(p.packet_id, codes).encode(self.level))

    # -- the rest ----------------------------------------------------------------

    def handle_pingreq(self, p):
        self.send(_PINGRESP)

    def handle_disconnect(self, p):
        code = p.reason_code
        props = p.properties
        if props and "session_expiry_interval" in props:
            expiry = props["session_expiry_interval"]
            if not self.session.expiry and expiry:
                raise MqttError("session expiry set on DISCONNECT after 0 "
                                "[MQTT-3.14.2-2]", 0x82)
            self.session.expiry = min(expiry,
                                      self.pconfig.max_session_expiry_s)
        self.normal_disconnect = code != 0x04
        self.closing = True
        self.transport.loseConnection()

    def handle_auth(self, p):
        method = p.properties.get("authentication_method") if (
            p.properties) else None
        if method is None or method != self.auth_method:
            raise MqttError("AUTH with another authentication method", 0x82)
        handler = self.broker.auth_methods[method]
        data = p.properties.get("authentication_data")
        if self._pending_connect is not None:
            if p.reason_code != 0x18:
                raise MqttError("AUTH reason 0x%02X during connect"
                                % p.reason_code, 0x82)
            return self._auth_step(handler, data)
        if p.reason_code not in (0x18, 0x19):
            raise MqttError("AUTH reason 0x%02X" % p.reason_code, 0x82)
        if p.reason_code == 0x19:
            self._auth_state = None
        code, out, self._auth_state = handler.auth(
            self.client_id, method, data, self._auth_state)
        props = {"authentication_method": method}
        if out is not None:
            props["authentication_data"] = out
        if code == 0x18:
            self.send(Auth(0x18, props).encode(MQTT_5))
        elif code == 0:
            self.send(Auth(0, props).encode(MQTT_5))
        else:
            self.protocol_violation(code, "re-authentication failed")

    def handle_unexpected(self, p):
        raise MqttError("packet type %d not sent by clients" % p.packet_type,
                        0x82)

    # -- flow control and closing -------------------------------------------

    def resumeProducing(self):
        FramedProtocol.resumeProducing(self)
        session = self.session
        if session is not None and session.queue:
            self.broker.pump(session)

    def idle_timeout(self):
        if self.accepted and self.level == MQTT_5:
            self.send(Disconnect(0x8D).encode(MQTT_5))
            self.log.info("mqtt {peer} {client_id}: keep-alive timeout",
                          peer=self.peer, client_id=self.client_id)
            self.close_after_write(2)
            return
        FramedProtocol.idle_timeout(self)

    def close_gracefully(self):
        """
        The broker stops: MQTT 5 clients get DISCONNECT 0x8B; sessions are
        kept.
        """
        if self.closing:
            return
        if self.accepted and self.level == MQTT_5:
            if self.pconfig.server_reference:
                self.send(Disconnect(
                    0x9D if self.pconfig.server_moved else 0x9C,
                    self.server_reference()).encode(MQTT_5))
            else:
                self.send(Disconnect(0x8B).encode(MQTT_5))
        self.close_after_write()

    def server_reference(self):
        """
        The Server Reference property of the configured other server.
        """
        return {"server_reference": self.pconfig.server_reference}

    def connection_closed(self, reason):
        call = self._abort_call
        if call is not None and call.active():
            call.cancel()
        self._abort_call = None
        call = self._drain_call
        if call is not None and call.active():
            call.cancel()
        self._drain_call = None
        self._throttled = None
        self.drop_held_frames()
        session = self.session
        if session is None:
            return
        self.session = None
        self.broker.close_session(session, self.will, self.normal_disconnect)
        self.will = None


def _handlers():
    table = [MqttProtocol.handle_unexpected] * 16
    table[CONNECT] = MqttProtocol.handle_connect
    table[PUBLISH] = MqttProtocol.handle_publish
    table[PUBACK] = MqttProtocol.handle_puback
    table[PUBREC] = MqttProtocol.handle_pubrec
    table[PUBREL] = MqttProtocol.handle_pubrel
    table[PUBCOMP] = MqttProtocol.handle_pubcomp
    table[SUBSCRIBE] = MqttProtocol.handle_subscribe
    table[UNSUBSCRIBE] = MqttProtocol.handle_unsubscribe
    table[PINGREQ] = MqttProtocol.handle_pingreq
    table[DISCONNECT] = MqttProtocol.handle_disconnect
    table[AUTH] = MqttProtocol.handle_auth
    return tuple(table)


MqttProtocol._handlers = _handlers()

__all__ = ["MqttProtocol"]
