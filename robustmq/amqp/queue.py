# -*- test-case-name: tests.test_amqp_broker -*-
"""
AMQP messages, queues and consumers.

A L{Message} is what a publisher sent: the raw content header (passed
through to consumers unchanged) and the body. Every queue it is routed to
holds an L{Entry} of its own for it (redelivered flag, storage offset,
expiry). A L{Queue} hands ready entries to its consumers round-robin, as
far as their prefetch windows allow, and applies its arguments: message
TTL, expiry, length limits with their overflow behaviour, dead-lettering
and priorities.
"""

import struct
from collections import deque

from twisted.logger import Logger

from robustmq.amqp import codec

_FRAME_HEAD = struct.Struct(">BHI")
_END = b"\xce"

#: Content property flags that make a message need its properties decoded:
#: headers, delivery-mode, priority, expiration.
_INTERESTING_FLAGS = 0x2000 | 0x1000 | 0x0800 | 0x0100

# What Queue.publish answers.
ACCEPTED = 0
PENDING = 1
REJECTED = 2


class Message:
    """
    One published message, shared by every queue it is routed to.

    @ivar exchange: the exchange it was published to.
    @ivar routing_key: its routing key.
    @ivar header: the content header frame payload as received.
    @ivar body: the body.
    @ivar ex_rk: the exchange and routing key as two AMQP short strings, as
        basic.deliver carries them (encoded once for all deliveries).
    @ivar persistent: delivery-mode 2.
    @ivar priority: the priority property, or L{None}.
    @ivar expiration: the expiration property in milliseconds, or L{None}.
    """

    __slots__ = (
        "exchange", "routing_key", "header", "body", "ex_rk", "_props",
        "persistent", "priority", "expiration", "_cache_ch", "_cache",
        "frame_max",
    )

    def __init__(self, exchange, routing_key, header, body, props=None):
        self.exchange = exchange
        self.routing_key = routing_key
        self.header = header
        self.body = body
        self.ex_rk = None
        self._props = props
        self.persistent = False
        self.priority = None
        self.expiration = None
        self._cache_ch = -1
        self._cache = None
        if props is None and (header[12] << 8 | header[13]) & _INTERESTING_FLAGS:
            props = self.properties
        if props is not None:
            self.persistent = props.delivery_mode == 2
            self.priority = props.priority
            if props.expiration is not None:
                self.expiration = parse_expiration(props.expiration)

    @property
    def properties(self):
        """
        The decoded content properties (decoded once).
        """
        props = self._props
        if props is None:
            props = codec.decode_properties(self.header, 12, len(self.header))
            self._props = props
        return props

    def headers(self):
        """
        The C{headers} property (a dict, maybe empty).
        """
        if (self.header[12] << 8 | self.header[13]) & 0x2000:
            return self.properties.headers or {}
        return {}

    def encoded_names(self):
        ex_rk = self.ex_rk
        if ex_rk is None:
            ex_rk = self.ex_rk = _shortstr(self.exchange) + _shortstr(self.routing_key)
        return ex_rk

    def content(self, channel, frame_max):
        """
        The content header and body frames of this message on C{channel}:
        built once and reused while deliveries go to the same channel number.
        """
        if self._cache_ch == channel and self.frame_max == frame_max:
            return self._cache
        header = self.header
        parts = [_FRAME_HEAD.pack(2, channel, len(header)), header, _END]
        body = self.body
        size = len(body)
        if size:
            chunk = frame_max - 8
            if size <= chunk:
                parts.append(_FRAME_HEAD.pack(3, channel, size))
                parts.append(body)
                parts.append(_END)
            else:
                view = memoryview(body)
                for start in range(0, size, chunk):
                    piece = view[start:start + chunk]
                    parts.append(_FRAME_HEAD.pack(3, channel, len(piece)))
                    parts.append(piece)
                    parts.append(_END)
        content = b"".join(parts)
        self._cache_ch = channel
        self.frame_max = frame_max
        self._cache = content
        return content


def _shortstr(text):
    raw = text.encode("utf-8", "surrogateescape")
    return bytes((len(raw),)) + raw


def parse_expiration(value):
    """
    The expiration property as milliseconds.

    @raise codec.PreconditionFailed: when it is not a non-negative integer.
    """
    try:
        ms = int(value, 10)
    except (TypeError, ValueError):
        ms = -1
    if ms < 0 or not value.isdigit():
        raise codec.PreconditionFailed("invalid expiration '%s' for message" % (value,))
    return ms


class Entry:
    """
    One message in one queue.

    @ivar offset: its offset in the queue's storage shard once stored.
    @ivar expires_at: seconds (reactor time) when it expires, or L{None}.
    @ivar gone: acknowledged, dropped or dead-lettered.
    @ivar store_pending: waits in the queue's log to be written.
    """

    __slots__ = ("msg", "redelivered", "offset", "expires_at", "gone", "store_pending", "size",
                 "seq")

    def __init__(self, msg, expires_at=None, seq=0):
        self.msg = msg
        self.seq = seq
        self.redelivered = False
        self.offset = None
        self.expires_at = expires_at
        self.gone = False
        self.store_pending = False
        self.size = len(msg.body)


def _seq_of(entry):
    return entry.seq


def _merge_front(ready, entries):
    """
    Put C{entries} (in queue order) back at the head of the C{deque}
    C{ready}, each at its original place as far as possible: before the
    ready entries published after it.
    """
    if not entries:
        return
    if ready and ready[0].seq < entries[-1].seq:
        last = entries[-1].seq
        older = []
        while ready and ready[0].seq < last:
            older.append(ready.popleft())
        entries = sorted(entries + older, key=_seq_of)
    ready.extendleft(reversed(entries))


class PriorityReady:
    """
    The ready entries of a priority queue: one FIFO per priority level, the
    highest served first. Offers the part of the C{deque} API queues use.
    """

    def __init__(self, max_priority):
        self.max_priority = max_priority
        self.levels = [deque() for _ in range(max_priority + 1)]
        self.count = 0

    def _index(self, entry):
        p = entry.msg.priority or 0
        return p if p <= self.max_priority else self.max_priority

    def _level(self, entry):
        return self.levels[self._index(entry)]

    def append(self, entry):
        self._level(entry).append(entry)
        self.count += 1

    def appendleft(self, entry):
        self._level(entry).appendleft(entry)
        self.count += 1

    def requeue(self, entries):
        """
        Put C{entries} (in queue order) back, each at its original place
        among the entries of its priority.
        """
        by_level = {}
        for entry in entries:
            by_level.setdefault(self._index(entry), []).append(entry)
        for index, some in by_level.items():
            _merge_front(self.levels[index], some)
        self.count += len(entries)

    def popleft(self):
        for level in reversed(self.levels):
            if level:
                self.count -= 1
                return level.popleft()
        raise IndexError("pop from an empty queue")

    def pop(self):
        for level in self.levels:
            if level:
                self.count -= 1
                return level.pop()
        raise IndexError("pop from an empty queue")

    def __getitem__(self, index):
        if index != 0:
            raise IndexError(index)
        for level in reversed(self.levels):
            if level:
                return level[0]
        raise IndexError("empty queue")

    def __len__(self):
        return self.count

    def __bool__(self):
        return self.count > 0

    def __iter__(self):
        for level in reversed(self.levels):
            yield from level

    def clear(self):
        for level in self.levels:
            level.clear()
        self.count = 0


class Consumer:
    """
    A basic.consume subscription.

    @ivar limit: prefetch count of this consumer (0: none).
    @ivar unacked: deliveries not yet acknowledged.
    @ivar priority: its C{x-priority}: consumers of a higher priority are
        served first while they have room.
    """

    __slots__ = ("channel", "tag", "tag_bytes", "queue", "no_ack", "exclusive", "limit",
                 "unacked", "arguments", "cancelled", "priority")

    def __init__(self, channel, tag, queue, no_ack, exclusive, limit, arguments, priority=0):
        self.channel = channel
        self.tag = tag
        self.tag_bytes = _shortstr(tag)
        self.queue = queue
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.limit = 0 if no_ack else limit
        self.unacked = 0
        self.arguments = arguments
        self.cancelled = False
        self.priority = priority


def _int_argument(queue, arguments, name, minimum=0):
    value = arguments.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise codec.PreconditionFailed(
            "invalid arg '%s' for queue '%s' in vhost '%s': %r"
            % (name, queue.name, queue.vhost.name, value))
    return value


def _str_argument(queue, arguments, name, choices=None):
    value = arguments.get(name)
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    if not isinstance(value, str) or (choices is not None and value not in choices):
        raise codec.PreconditionFailed(
            "invalid arg '%s' for queue '%s' in vhost '%s': %r"
            % (name, queue.name, queue.vhost.name, value))
    return value


class Queue:
    """
    A queue of one virtual host.

    @ivar ready: entries waiting for a consumer (a C{deque}, or a
        L{PriorityReady} with C{x-max-priority}).
    @ivar ready_bytes: body bytes of the ready entries.
    @ivar unacked: entries delivered and not yet acknowledged.
    @ivar owner: the connection of an exclusive queue, else L{None}.
    @ivar log: the L{robustmq.amqp.store.QueueLog} of a durable queue.
    """

    log = Logger()
    is_queue = True

    def __init__(self, broker, vhost, name, durable=False, exclusive=False, auto_delete=False,
                 arguments=None, owner=None):
        self.broker = broker
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.exclusive = exclusive
        self.auto_delete = auto_delete
        self.arguments = arguments or {}
        self.owner = owner
        self.consumers = []
        self.groups = []
        self._rr = []
        self.unacked = 0
        self.ready_bytes = 0
        self.seq = 0
        self.had_consumers = False
        self.deleted = False
        self.store = None
        self._dispatching = False
        self._ttl_timer = None
        self._ttl_due = None
        self._expiry_timer = None
        self.bindings = set()
        self._parse_arguments()

    def __repr__(self):
        return "<Queue {!r} in {!r}>".format(self.name, self.vhost.name)

    def _parse_arguments(self):
        args = self.arguments
        self.ttl_ms = _int_argument(self, args, "x-message-ttl")
        self.expires_ms = _int_argument(self, args, "x-expires", 1)
        self.max_length = _int_argument(self, args, "x-max-length")
        self.max_length_bytes = _int_argument(self, args, "x-max-length-bytes")
        self.overflow = _str_argument(
            self, args, "x-overflow", ("drop-head", "reject-publish", "reject-publish-dlx")
        ) or "drop-head"
        self.dlx = _str_argument(self, args, "x-dead-letter-exchange")
        self.dlrk = _str_argument(self, args, "x-dead-letter-routing-key")
        if self.dlrk is not None and self.dlx is None:
            raise codec.PreconditionFailed(
                "invalid arg 'x-dead-letter-routing-key' for queue '%s' in vhost '%s':"
                " x-dead-letter-exchange is not set" % (self.name, self.vhost.name))
        max_priority = _int_argument(self, args, "x-max-priority")
        if max_priority is not None and max_priority > 255:
            raise codec.PreconditionFailed(
                "invalid arg 'x-max-priority' for queue '%s' in vhost '%s': %d"
                % (self.name, self.vhost.name, max_priority))
        self.max_priority = max_priority
        self.ready = deque() if not max_priority else PriorityReady(max_priority)
        self.limited = self.max_length is not None or self.max_length_bytes is not None

    @property
    def message_count(self):
        return len(self.ready)

    # publishing

    def publish(self, msg, now, channel=None, seq=0):
        """
        Enqueue C{msg}.

        @param channel: with C{seq}, the publishing channel in confirm mode
            and the publish's confirm sequence number on it: told when a
            stored message is on disk. (The entry's own C{seq} is the
            queue's order, a different counter.)
        @return: L{ACCEPTED}, L{PENDING} (a confirm waits for storage) or
            L{REJECTED} (overflow C{reject-publish}).
        """
        if self.limited and self._full_for(msg):
            if self.overflow == "drop-head":
                pass
            else:
                if self.overflow == "reject-publish-dlx" and self.dlx is not None:
                    self.broker.dead_letter(self, Entry(msg), "maxlen", now)
                return REJECTED
        ttl = self.ttl_ms
        exp = msg.expiration
        if exp is not None and (ttl is None or exp < ttl):
            ttl = exp
        order = self.seq = self.seq + 1
        entry = Entry(msg, None if ttl is None else now + ttl / 1000.0, order)
        status = ACCEPTED
        store = self.store
        if store is not None and msg.persistent:
            store.add(entry, channel, seq)
            if channel is not None:
                status = PENDING
        self.ready.append(entry)
        self.ready_bytes += entry.size
        if self.consumers:
            self.dispatch()
        if ttl is not None:
            self.expire(now)
        if self.limited:
            self._drop_head(now)
        return status

    def _full_for(self, msg):
        if self.max_length is not None and len(self.ready) >= self.max_length:
            return True
        if self.max_length_bytes is not None and (
            self.ready_bytes + len(msg.body) > self.max_length_bytes
        ):
            return True
        return False

    def _drop_head(self, now):
        ready = self.ready
        while ready and (
            (self.max_length is not None and len(ready) > self.max_length)
            or (self.max_length_bytes is not None and self.ready_bytes > self.max_length_bytes)
        ):
            entry = ready.popleft()
            self.ready_bytes -= entry.size
            self.discard(entry, "maxlen", now)

    # delivering

    def dispatch(self):
        """
        Hand ready entries to consumers that have room, round-robin.
        """
        if self._dispatching or self.deleted:
            return
        self._dispatching = True
        try:
            ready = self.ready
            groups = self.groups
            rrs = self._rr
            if self.ttl_ms is not None or self._ttl_due is not None:
                self.expire(self.broker.now())
            while ready:
                # The highest priority group with a consumer that has
                # room, round-robin within the group.
                for g, consumers in enumerate(groups):
                    n = len(consumers)
                    rr = rrs[g]
                    for i in range(n):
                        c = consumers[(rr + i) % n]
                        ch = c.channel
                        if not ch.deliverable:
                            continue
                        if not c.no_ack and (
                            (c.limit and c.unacked >= c.limit)
                            or (ch.global_limit and ch.unacked_count >= ch.global_limit)
                        ):
                            continue
                        entry = ready.popleft()
                        self.ready_bytes -= entry.size
                        rrs[g] = rr + i + 1
                        ch.deliver(c, entry, self)
                        break
                    else:
                        continue
                    break
                else:
                    break
        finally:
            self._dispatching = False

    def get(self, now):
        """
        Take the next ready entry for basic.get, or L{None}.
        """
        if self.ttl_ms is not None or self._ttl_due is not None:
            self.expire(now)
        if not self.ready:
            return None
        entry = self.ready.popleft()
        self.ready_bytes -= entry.size
        return entry

    def _regroup(self):
        """
        Group the consumers by priority, the highest first.
        """
        consumers = self.consumers
        priorities = sorted({c.priority for c in consumers}, reverse=True)
        if len(priorities) <= 1:
            groups = [consumers] if consumers else []
        else:
            groups = [[c for c in consumers if c.priority == p] for p in priorities]
        if len(groups) != len(self._rr) or len(groups) > 1:
            self._rr = [0] * len(groups)
        self.groups = groups

    def add_consumer(self, consumer):
        self.consumers.append(consumer)
        self._regroup()
        self.had_consumers = True
        self.cancel_expiry()
        self.dispatch()

    def remove_consumer(self, consumer):
        """
        Forget C{consumer}; an auto-delete queue that had consumers and has
        no more is deleted.
        """
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        self._regroup()
        if not self.consumers:
            if self.auto_delete and self.had_consumers and not self.deleted:
                self.broker.delete_queue(self, notify=False)
                return
            self.touch()

    # acknowledgements

    def settle(self, entry):
        """
        C{entry} is done with (acknowledged, or delivered with no-ack).
        """
        entry.gone = True
        if self.store is not None and (entry.offset is not None or entry.store_pending):
            self.store.remove(entry)

    def requeue(self, entries):
        """
        Put delivered entries back at the head, in their order, marked
        redelivered.
        """
        if self.deleted:
            for entry in entries:
                self.settle(entry)
            return
        ready = self.ready
        for entry in entries:
            entry.redelivered = True
            self.ready_bytes += entry.size
        if len(entries) > 1:
            entries = sorted(entries, key=_seq_of)
        # Back to their original places, as far as possible.
        if ready.__class__ is deque:
            _merge_front(ready, entries)
        else:
            ready.requeue(entries)
        self.dispatch()

    def discard(self, entry, reason, now):
        """
        Drop C{entry} (rejected, expired, over the length limit): dead-letter
        it when the queue has a dead-letter exchange.
        """
        if self.dlx is not None:
            self.broker.dead_letter(self, entry, reason, now)
        self.settle(entry)

    def purge(self):
        """
        Drop every ready entry; how many.
        """
        count = len(self.ready)
        entries = list(self.ready)
        self.ready.clear()
        self.ready_bytes = 0
        for entry in entries:
            self.settle(entry)
        return count

    # message TTL

    def expire(self, now):
        """
        Drop (dead-letter) expired entries at the head and arm the timer for
        the next one. As in RabbitMQ, only the head is checked.
        """
        ready = self.ready
        while ready:
            head = ready[0]
            if head.expires_at is None or head.expires_at > now:
                break
            ready.popleft()
            self.ready_bytes -= head.size
            self.discard(head, "expired", now)
        due = ready[0].expires_at if ready else None
        if due != self._ttl_due:
            timer = self._ttl_timer
            if timer is not None and timer.active():
                timer.cancel()
            self._ttl_timer = None
            self._ttl_due = due
            if due is not None:
                self._ttl_timer = self.broker.reactor.callLater(
                    max(0.0, due - now), self._ttl_fired
                )

    def _ttl_fired(self):
        self._ttl_timer = None
        self._ttl_due = None
        if not self.deleted:
            self.expire(self.broker.now())

    # queue expiry (x-expires)

    def touch(self):
        """
        The queue was used: restart its x-expires timer (while it has no
        consumers).
        """
        if self.expires_ms is None or self.deleted:
            return
        self.cancel_expiry()
        if not self.consumers:
            self._expiry_timer = self.broker.reactor.callLater(
                self.expires_ms / 1000.0, self._expired
            )

    def cancel_expiry(self):
        timer = self._expiry_timer
        if timer is not None and timer.active():
            timer.cancel()
        self._expiry_timer = None

    def _expired(self):
        self._expiry_timer = None
        if not self.deleted and not self.consumers:
            self.log.info("amqp: queue {name!r} in {vhost!r} expired", name=self.name,
                          vhost=self.vhost.name)
            self.broker.delete_queue(self, notify=True)

    def stop_timers(self):
        self.cancel_expiry()
        timer = self._ttl_timer
        if timer is not None and timer.active():
            timer.cancel()
        self._ttl_timer = None
        self._ttl_due = None
