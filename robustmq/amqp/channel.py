# -*- test-case-name: tests.test_amqp_protocol -*-
"""
One AMQP channel: its methods, consumers, unacknowledged deliveries,
publisher confirms and transactions.

The connection (L{robustmq.amqp.protocol.AmqpProtocol}) frames and decodes;
a channel gets decoded methods and assembled content, and raises
L{robustmq.amqp.codec.AmqpError}s that the connection turns into
channel.close (soft errors) or connection.close (hard errors).
"""

import struct
from collections import deque

from twisted.logger import Logger

from robustmq.amqp import codec
from robustmq.amqp.queue import PENDING, REJECTED, Consumer, Message

_DELIVER_HEAD = struct.Struct(">BHIHH")
_QB = struct.Struct(">QB")
_END = b"\xce"


class Delivery:
    """
    A message delivered on a channel and not yet acknowledged.

    @ivar held: acknowledged inside a transaction not yet committed.
    """

    __slots__ = ("tag", "entry", "queue", "consumer", "done", "held")

    def __init__(self, tag, entry, queue, consumer):
        self.tag = tag
        self.entry = entry
        self.queue = queue
        self.consumer = consumer
        self.done = False
        self.held = False


class Channel:
    """
    @ivar deliverable: deliveries may be written now (flow active, client
        reading, channel open).
    @ivar global_limit: prefetch count shared by the channel's consumers.
    @ivar unacked_count: deliveries waiting for an acknowledgement.
    """

    log = Logger()

    def __init__(self, conn, number):
        self.conn = conn
        self.number = number
        self.broker = conn.broker
        self.vhost = conn.vhost
        self.grant = conn.grant
        self.open = True
        self.flow = True
        self.deliverable = not conn.output_paused
        self.consumers = {}
        self.next_tag = 1
        self.unacked = deque()
        self.unacked_by_tag = {}
        self.unacked_count = 0
        self.global_limit = 0
        self.consumer_limit = 0
        self.confirm = False
        self.publish_seq = 0
        self.confirm_sent = 0
        self.confirm_pending = {}
        self.confirm_nacks = set()
        self.tx = None
        self.last_queue = ""
        self.held_cancels = None

    # output

    def send(self, method):
        self.conn.send_method(self.number, method)

    def update_deliverable(self):
        was = self.deliverable
        self.deliverable = self.open and self.flow and not self.conn.output_paused
        if self.deliverable and not was:
            for consumer in list(self.consumers.values()):
                consumer.queue.dispatch()

    def deliver(self, consumer, entry, queue):
        """
        Write basic.deliver with the content of C{entry} (the hot path).
        """
        tag = self.next_tag
        self.next_tag = tag + 1
        if consumer.no_ack:
            queue.settle(entry)
        else:
            d = Delivery(tag, entry, queue, consumer)
            self.unacked.append(d)
            self.unacked_by_tag[tag] = d
            consumer.unacked += 1
            self.unacked_count += 1
            queue.unacked += 1
        msg = entry.msg
        store = queue.store
        if store is not None and msg.persistent:
            store.delivered(entry)
        conn = self.conn
        tag_bytes = consumer.tag_bytes
        ex_rk = msg.ex_rk or msg.encoded_names()
        conn.send_sequence([
            _DELIVER_HEAD.pack(1, self.number, 13 + len(tag_bytes) + len(ex_rk), 60, 60),
            tag_bytes, _QB.pack(tag, 1 if entry.redelivered else 0), ex_rk, _END,
            msg.content(self.number, conn.frame_max),
        ], 3)

    # life cycle

    def close(self):
        """
        The channel is closed (either side) or its connection is gone:
        consumers cancelled, unacknowledged messages requeued.
        """
        if not self.open:
            return
        self.open = False
        self.deliverable = False
        for consumer in list(self.consumers.values()):
            consumer.cancelled = True
            consumer.queue.remove_consumer(consumer)
        self.consumers.clear()
        self.tx = None
        self._requeue_all()
        self.confirm_pending.clear()

    def _requeue_all(self):
        by_queue = {}
        for d in self.unacked:
            if d.done:
                continue
            d.done = True
            by_queue.setdefault(d.queue, []).append(d.entry)
            d.consumer.unacked -= 1
            d.queue.unacked -= 1
        self.unacked.clear()
        self.unacked_by_tag.clear()
        self.unacked_count = 0
        for queue, entries in by_queue.items():
            queue.requeue(entries)

    def consumer_gone(self, consumer, notify):
        """
        The queue of C{consumer} was deleted: forget it and, when the client
        accepts it, send basic.cancel.
        """
        if self.consumers.get(consumer.tag) is consumer:
            del self.consumers[consumer.tag]
            consumer.cancelled = True
            if notify and self.open and self.conn.capabilities.get("consumer_cancel_notify"):
                if self.held_cancels is not None:
                    self.held_cancels.append(consumer.tag)
                else:
                    self.send(codec.BasicCancel(consumer.tag, True))

    # methods

    def handle(self, method):
        handler = _HANDLERS.get(method.__class__)
        if handler is None:
            raise codec.CommandInvalid("unexpected method %s" % (method.name,),
                                       method.class_id, method.method_id)
        try:
            handler(self, method)
        except codec.AmqpError as e:
            if not e.class_id:
                e.class_id, e.method_id = method.class_id, method.method_id
            raise

    def on_flow(self, m):
        self.flow = m.active
        self.update_deliverable()
        self.send(codec.ChannelFlowOk(m.active))

    def on_flow_ok(self, m):
        pass

    def on_access_request(self, m):
        self.send(codec.AccessRequestOk(1))

    # exchanges

    def on_exchange_declare(self, m):
        grant = self.grant
        if grant is not None and not m.passive:
            grant.check("configure", "exchange", m.exchange)
            alternate = (m.arguments or {}).get("alternate-exchange")
            if isinstance(alternate, (str, bytes)):
                if isinstance(alternate, bytes):
                    alternate = alternate.decode("utf-8", "surrogateescape")
                grant.check("write", "exchange", alternate)
                grant.check("read", "exchange", m.exchange)
        self.broker.declare_exchange(
            self.vhost, m.exchange, m.type, m.passive, m.durable, m.auto_delete, m.internal,
            m.arguments,
        )
        if not m.nowait:
            self.send(codec.ExchangeDeclareOk())

    def on_exchange_delete(self, m):
        if self.grant is not None:
            self.grant.check("configure", "exchange", m.exchange)
        self.broker.delete_exchange(self.vhost, m.exchange, m.if_unused)
        if not m.nowait:
            self.send(codec.ExchangeDeleteOk())

    def on_exchange_bind(self, m):
        self._check_bind("exchange", m.destination, m.source)
        dest = self.broker.exchange(self.vhost, m.destination)
        if not m.destination:
            raise codec.AccessRefused("operation not permitted on the default exchange")
        self.broker.bind(self.vhost, m.source, dest, m.routing_key, m.arguments)
        if not m.nowait:
            self.send(codec.ExchangeBindOk())

    def on_exchange_unbind(self, m):
        self._check_bind("exchange", m.destination, m.source)
        dest = self.vhost.exchanges.get(m.destination)
        if dest is not None:
            self.broker.unbind(self.vhost, m.source, dest, m.routing_key, m.arguments)
        if not m.nowait:
            self.send(codec.ExchangeUnbindOk())

    def _check_bind(self, kind, destination, source):
        grant = self.grant
        if grant is not None:
            grant.check("write", kind, destination)
            grant.check("read", "exchange", source)

    # queues

    def _queue_name(self, name):
        if not name:
            if not self.last_queue:
                raise codec.NotFound("no previously declared queue")
            return self.last_queue
        return name

    def _queue(self, name):
        return self.broker.queue(self.vhost, self._queue_name(name), self.conn)

    def _check(self, what, queue):
        if self.grant is not None:
            self.grant.check(what, "queue", self._queue_name(queue))

    def on_queue_declare(self, m):
        name = m.queue
        broker = self.broker
        server_named = not name and not m.passive
        if server_named:
            name = broker.server_name("amq.gen-")
        elif not name:
            name = self._queue_name(name)
        grant = self.grant
        if grant is not None and not m.passive:
            grant.check("configure", "queue", name)
            dlx = (m.arguments or {}).get("x-dead-letter-exchange")
            if isinstance(dlx, (str, bytes)):
                if isinstance(dlx, bytes):
                    dlx = dlx.decode("utf-8", "surrogateescape")
                grant.check("write", "exchange", dlx)
                grant.check("read", "queue", name)
        q = broker.declare_queue(
            self.vhost, name, m.passive, m.durable, m.exclusive, m.auto_delete, m.arguments,
            self.conn, server_named,
        )
        if q.exclusive and q.owner is self.conn:
            self.conn.exclusive_queues[id(q)] = q
        self.last_queue = name
        if not m.nowait:
            self.send(codec.QueueDeclareOk(name, len(q.ready), len(q.consumers)))

    def on_queue_bind(self, m):
        self._check_bind("queue", self._queue_name(m.queue), m.exchange)
        q = self._queue(m.queue)
        routing_key = m.routing_key
        if not routing_key and not m.queue:
            routing_key = q.name
        self.broker.bind(self.vhost, m.exchange, q, routing_key, m.arguments)
        if not m.nowait:
            self.send(codec.QueueBindOk())

    def on_queue_unbind(self, m):
        # Unbinding a queue that does not exist (any more) is not an error
        # in RabbitMQ: RPC clients delete a reply queue, then unbind it.
        name = self._queue_name(m.queue)
        self._check_bind("queue", name, m.exchange)
        if name in self.vhost.queues:
            q = self._queue(name)
            self.broker.unbind(self.vhost, m.exchange, q, m.routing_key, m.arguments)
        elif not m.exchange:
            raise codec.AccessRefused("operation not permitted on the default exchange")
        self.send(codec.QueueUnbindOk())

    def on_queue_purge(self, m):
        self._check("read", m.queue)
        q = self._queue(m.queue)
        count = q.purge()
        if not m.nowait:
            self.send(codec.QueuePurgeOk(count))

    def on_queue_delete(self, m):
        name = self._queue_name(m.queue)
        if self.grant is not None:
            self.grant.check("configure", "queue", name)
        q = self.vhost.queues.get(name)
        count = 0
        held = []
        if q is not None:
            self.broker.queue(self.vhost, name, self.conn)
            # This channel's own consumers of the queue hear of it after
            # delete-ok, as from RabbitMQ (where the notification follows
            # the queue's end).
            self.held_cancels = held
            try:
                count = self.broker.delete_queue(q, m.if_unused, m.if_empty)
            finally:
                self.held_cancels = None
            self.conn.exclusive_queues.pop(id(q), None)
        if not m.nowait:
            self.send(codec.QueueDeleteOk(count))
        for tag in held:
            self.send(codec.BasicCancel(tag, True))

    # basic

    def on_basic_qos(self, m):
        if m.prefetch_size:
            raise codec.NotImplemented_("prefetch_size!=0 (%d)" % (m.prefetch_size,))
        if m.global_:
            self.global_limit = m.prefetch_count
        else:
            self.consumer_limit = m.prefetch_count
        self.send(codec.BasicQosOk())
        for consumer in list(self.consumers.values()):
            consumer.queue.dispatch()

    def on_basic_consume(self, m):
        self._check("read", m.queue)
        q = self._queue(m.queue)
        tag = m.consumer_tag
        if not tag:
            tag = self.broker.server_name("amq.ctag-")
        elif tag in self.consumers:
            raise codec.NotAllowed("attempt to reuse consumer tag '%s'" % (tag,))
        if q.consumers and (m.exclusive or any(c.exclusive for c in q.consumers)):
            raise codec.AccessRefused("queue '%s' in vhost '%s' in exclusive use"
                                      % (q.name, self.vhost.name))
        priority = (m.arguments or {}).get("x-priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise codec.PreconditionFailed(
                "invalid arg 'x-priority' for queue '%s' in vhost '%s':"
                " \"expected integer, got %s\"" % (q.name, self.vhost.name, _type_name(priority)))
        consumer = Consumer(self, tag, q, m.no_ack, m.exclusive, self.consumer_limit,
                            m.arguments, priority)
        self.consumers[tag] = consumer
        if not m.nowait:
            self.send(codec.BasicConsumeOk(tag))
        q.add_consumer(consumer)

    def on_basic_cancel(self, m):
        consumer = self.consumers.pop(m.consumer_tag, None)
        if not m.nowait:
            self.send(codec.BasicCancelOk(m.consumer_tag))
        if consumer is not None:
            consumer.cancelled = True
            consumer.queue.remove_consumer(consumer)

    def on_basic_cancel_ok(self, m):
        # A client's answer to the basic.cancel sent when a queue was
        # deleted (RabbitMQ 4.3 clients send it): nothing left to do.
        pass

    def on_basic_get(self, m):
        self._check("read", m.queue)
        q = self._queue(m.queue)
        q.touch()
        entry = q.get(self.broker.now())
        if entry is None:
            self.send(codec.BasicGetEmpty(""))
            return
        tag = self.next_tag
        self.next_tag = tag + 1
        if m.no_ack:
            q.settle(entry)
        else:
            d = Delivery(tag, entry, q, _GET_CONSUMER)
            self.unacked.append(d)
            self.unacked_by_tag[tag] = d
            self.unacked_count += 1
            q.unacked += 1
        msg = entry.msg
        if q.store is not None and msg.persistent:
            q.store.delivered(entry)
        method = codec.BasicGetOk(tag, entry.redelivered, msg.exchange, msg.routing_key,
                                  len(q.ready))
        self.conn.send_sequence([
            codec.encode_method(self.number, method),
            msg.content(self.number, self.conn.frame_max),
        ], 3)

    def _take(self, tag, multiple):
        """
        The deliveries an ack/nack/reject of C{tag} covers, in tag order.

        @raise codec.PreconditionFailed: an unknown delivery tag.
        """
        if not multiple:
            d = self.unacked_by_tag.get(tag)
            if d is None or d.held:
                raise codec.PreconditionFailed("unknown delivery tag %d" % (tag,))
            return [d]
        if tag and (tag not in self.unacked_by_tag or self.unacked_by_tag[tag].held):
            raise codec.PreconditionFailed("unknown delivery tag %d" % (tag,))
        out = []
        for d in self.unacked:
            if tag and d.tag > tag:
                break
            if not d.done and not d.held:
                out.append(d)
        return out

    def _finish(self, deliveries):
        """
        Take C{deliveries} off the unacknowledged list.
        """
        by_tag = self.unacked_by_tag
        for d in deliveries:
            d.done = True
            del by_tag[d.tag]
            d.consumer.unacked -= 1
            d.queue.unacked -= 1
        self.unacked_count -= len(deliveries)
        unacked = self.unacked
        while unacked and unacked[0].done:
            unacked.popleft()

    def on_basic_ack(self, m):
        self.ack(m.delivery_tag, m.multiple)

    def ack(self, tag, multiple):
        """
        The hot path of acknowledgements.
        """
        if self.tx is not None:
            deliveries = self._take(tag, multiple)
            for d in deliveries:
                d.held = True
            self.tx.append(("ack", deliveries, False))
            return
        unacked = self.unacked
        if multiple and tag and unacked and unacked[0].tag <= tag:
            if tag not in self.unacked_by_tag:
                raise codec.PreconditionFailed("unknown delivery tag %d" % (tag,))
            by_tag = self.unacked_by_tag
            n = 0
            while unacked:
                d = unacked[0]
                if d.tag > tag:
                    break
                unacked.popleft()
                if d.done:
                    continue
                d.done = True
                del by_tag[d.tag]
                d.consumer.unacked -= 1
                q = d.queue
                q.unacked -= 1
                q.settle(d.entry)
                n += 1
            self.unacked_count -= n
        else:
            self._settle(self._take(tag, multiple))
        self._refill()

    def _settle(self, deliveries):
        self._finish(deliveries)
        for d in deliveries:
            d.queue.settle(d.entry)

    def _refill(self):
        for consumer in list(self.consumers.values()):
            consumer.queue.dispatch()

    def _reject(self, deliveries, requeue):
        self._finish(deliveries)
        if requeue:
            by_queue = {}
            for d in deliveries:
                by_queue.setdefault(d.queue, []).append(d.entry)
            for queue, entries in by_queue.items():
                queue.requeue(entries)
        else:
            now = self.broker.now()
            for d in deliveries:
                d.queue.discard(d.entry, "rejected", now)
        self._refill()

    def on_basic_nack(self, m):
        deliveries = self._take(m.delivery_tag, m.multiple)
        if self.tx is not None:
            for d in deliveries:
                d.held = True
            self.tx.append(("reject", deliveries, m.requeue))
            return
        self._reject(deliveries, m.requeue)

    def on_basic_reject(self, m):
        deliveries = self._take(m.delivery_tag, False)
        if self.tx is not None:
            deliveries[0].held = True
            self.tx.append(("reject", deliveries, m.requeue))
            return
        self._reject(deliveries, m.requeue)

    def on_basic_recover(self, m):
        self._recover()
        self.send(codec.BasicRecoverOk())

    def on_basic_recover_async(self, m):
        self._recover()

    def _recover(self):
        deliveries = [d for d in self.unacked if not d.done and not d.held]
        self._reject(deliveries, True)

    # publishing

    def publish(self, exchange, routing_key, mandatory, header, body):
        """
        A whole message arrived (basic.publish, content header, body).
        """
        if self.grant is not None:
            try:
                self.grant.check("write", "exchange", exchange)
            except codec.AmqpError as e:
                e.class_id, e.method_id = 60, 40
                raise
        try:
            ex = self.vhost.exchanges[exchange]
        except KeyError:
            raise codec.NotFound("no exchange '%s' in vhost '%s'" % (exchange, self.vhost.name),
                                 60, 40) from None
        if ex.internal:
            raise codec.AccessRefused("cannot publish to internal exchange '%s' in vhost '%s'"
                                      % (exchange, self.vhost.name), 60, 40)
        try:
            msg = Message(exchange, routing_key, header, body)
        except codec.AmqpError as e:
            e.class_id, e.method_id = 60, 40
            raise
        if self.tx is not None:
            self.tx.append(("publish", ex, msg, mandatory))
            return
        self._route(ex, msg, mandatory)

    def _route(self, ex, msg, mandatory):
        broker = self.broker
        queues = broker.route(self.vhost, ex, msg.routing_key, msg)
        if self.confirm:
            seq = self.publish_seq = self.publish_seq + 1
            channel = self
        else:
            seq = 0
            channel = None
        if not queues:
            if mandatory:
                self.conn.send_sequence([
                    codec.encode_method(self.number, codec.BasicReturn(
                        312, "NO_ROUTE", msg.exchange, msg.routing_key)),
                    msg.content(self.number, self.conn.frame_max),
                ], 3)
            return
        now = broker.reactor.seconds()
        pending = 0
        rejected = False
        for q in queues:
            status = q.publish(msg, now, channel, seq)
            if status:
                if status == PENDING:
                    pending += 1
                elif status == REJECTED:
                    rejected = True
        if channel is not None:
            if rejected:
                self.confirm_nacks.add(seq)
            if pending:
                self.confirm_pending[seq] = pending

    # confirms

    def on_confirm_select(self, m):
        if self.tx is not None:
            raise codec.PreconditionFailed("cannot switch from tx to confirm mode")
        self.confirm = True
        self.conn.confirm_channels[self.number] = self
        if not m.nowait:
            self.send(codec.ConfirmSelectOk())

    def confirm_stored(self, seq, ok):
        """
        A stored message of C{seq} is on disk (or failed to be).
        """
        count = self.confirm_pending.get(seq)
        if count is None:
            return
        if not ok:
            self.confirm_nacks.add(seq)
        if count <= 1:
            del self.confirm_pending[seq]
        else:
            self.confirm_pending[seq] = count - 1
        if self.open:
            self.flush_confirms()

    def flush_confirms(self):
        """
        Send basic.ack (multiple) and basic.nack for what is settled, in
        order.
        """
        seq = self.publish_seq
        sent = self.confirm_sent
        if sent >= seq or not self.open:
            return
        pending = self.confirm_pending
        nacks = self.confirm_nacks
        if not pending and not nacks:
            self.send(codec.BasicAck(seq, seq - sent > 1))
            self.confirm_sent = seq
            return
        start = s = sent + 1
        while s <= seq:
            if s in pending:
                break
            if s in nacks:
                nacks.discard(s)
                if s > start:
                    self.send(codec.BasicAck(s - 1, s - 1 > start))
                self.send(codec.BasicNack(s, False, False))
                start = s + 1
            s += 1
        if s - 1 >= start:
            self.send(codec.BasicAck(s - 1, s - 1 > start))
        self.confirm_sent = s - 1

    # transactions

    def on_tx_select(self, m):
        if self.confirm:
            raise codec.PreconditionFailed("cannot switch from confirm to tx mode")
        if self.tx is None:
            self.tx = []
        self.send(codec.TxSelectOk())

    def on_tx_commit(self, m):
        if self.tx is None:
            raise codec.PreconditionFailed("channel is not transactional")
        actions, self.tx = self.tx, []
        for action in actions:
            if action[0] == "publish":
                _, ex, msg, mandatory = action
                if not ex.deleted:
                    self._route(ex, msg, mandatory)
            elif action[0] == "ack":
                deliveries = [d for d in action[1] if not d.done]
                for d in deliveries:
                    d.held = False
                self._settle(deliveries)
            else:
                deliveries = [d for d in action[1] if not d.done]
                for d in deliveries:
                    d.held = False
                self._reject(deliveries, action[2])
        self._refill()
        d = self.broker.flush()
        if d.called:
            self.send(codec.TxCommitOk())
        else:
            d.addCallback(self._committed)

    def _committed(self, _):
        if self.open:
            self.send(codec.TxCommitOk())

    def on_tx_rollback(self, m):
        if self.tx is None:
            raise codec.PreconditionFailed("channel is not transactional")
        actions, self.tx = self.tx, []
        for action in actions:
            if action[0] != "publish":
                for d in action[1]:
                    d.held = False
        self.send(codec.TxRollbackOk())


def _type_name(value):
    """
    The AMQP field type of a decoded table value, as RabbitMQ names it.
    """
    for kind, name in ((bool, "bool"), (str, "longstr"), (bytes, "longstr"), (float, "double"),
                       (dict, "table"), (list, "array"), (type(None), "void")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


class _GetConsumer:
    """
    Stands for the consumer of a basic.get delivery.
    """

    unacked = 0


_GET_CONSUMER = _GetConsumer()

_HANDLERS = {
    codec.ChannelFlow: Channel.on_flow,
    codec.ChannelFlowOk: Channel.on_flow_ok,
    codec.AccessRequest: Channel.on_access_request,
    codec.ExchangeDeclare: Channel.on_exchange_declare,
    codec.ExchangeDelete: Channel.on_exchange_delete,
    codec.ExchangeBind: Channel.on_exchange_bind,
    codec.ExchangeUnbind: Channel.on_exchange_unbind,
    codec.QueueDeclare: Channel.on_queue_declare,
    codec.QueueBind: Channel.on_queue_bind,
    codec.QueueUnbind: Channel.on_queue_unbind,
    codec.QueuePurge: Channel.on_queue_purge,
    codec.QueueDelete: Channel.on_queue_delete,
    codec.BasicQos: Channel.on_basic_qos,
    codec.BasicConsume: Channel.on_basic_consume,
    codec.BasicCancel: Channel.on_basic_cancel,
    codec.BasicCancelOk: Channel.on_basic_cancel_ok,
    codec.BasicGet: Channel.on_basic_get,
    codec.BasicAck: Channel.on_basic_ack,
    codec.BasicNack: Channel.on_basic_nack,
    codec.BasicReject: Channel.on_basic_reject,
    codec.BasicRecover: Channel.on_basic_recover,
    codec.BasicRecoverAsync: Channel.on_basic_recover_async,
    codec.ConfirmSelect: Channel.on_confirm_select,
    codec.TxSelect: Channel.on_tx_select,
    codec.TxCommit: Channel.on_tx_commit,
    codec.TxRollback: Channel.on_tx_rollback,
}
