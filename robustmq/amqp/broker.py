# -*- test-case-name: tests.test_amqp_broker -*-
"""
The AMQP state that outlives connections: virtual hosts, exchanges,
queues, bindings, dead-lettering, and what of them is durable.

Durable exchanges, queues and bindings are kept in the L{MetaStore}
(namespaces C{amqp.exchanges}, C{amqp.queues}, C{amqp.bindings}); the
persistent messages of a durable queue in its storage shards (see
L{robustmq.amqp.store}). The state is loaded the first time it is used,
which is after the broker opened its storage.
"""

import base64
import json
import os

from twisted.internet.defer import DeferredList, succeed
from twisted.logger import Logger

from robustmq.amqp import codec
from robustmq.amqp.codec import TypedValue
from robustmq.amqp.exchange import EXCHANGE_TYPES, Binding, Exchange
from robustmq.amqp.queue import Entry, Message, Queue
from robustmq.amqp.store import QueueLog

NS_EXCHANGES = "amqp.exchanges"
NS_QUEUES = "amqp.queues"
NS_BINDINGS = "amqp.bindings"

#: The exchanges every virtual host has.
STANDARD_EXCHANGES = (
    ("", "direct"),
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
)

# Queue arguments compared when a queue is declared again.
_EQUIVALENT_ARGS = (
    "x-message-ttl", "x-expires", "x-max-length", "x-max-length-bytes", "x-overflow",
    "x-dead-letter-exchange", "x-dead-letter-routing-key", "x-max-priority", "x-queue-type",
)


def _key(*parts):
    return json.dumps(parts, ensure_ascii=False)


def _args_key(arguments):
    return codec.encode_table(arguments) if arguments else b""


def _bool(value):
    return "true" if value else "false"


def _arg_text(value):
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value)


class Vhost:
    """
    A virtual host: its exchanges and queues by name.
    """

    def __init__(self, name):
        self.name = name
        self.exchanges = {}
        self.queues = {}

    def __repr__(self):
        return "<Vhost {!r}>".format(self.name)


class Broker:
    """
    Every virtual host of the AMQP service.

    @param reactor: the reactor.
    @param storage: the L{IStorageDriverManager}, or L{None} (nothing is
        stored).
    @param meta: the L{IMetaStore}, or L{None}.
    @param vhosts: the names of the virtual hosts.
    """

    log = Logger()

    def __init__(self, reactor, storage, meta, vhosts=("/",)):
        self.reactor = reactor
        self.storage = storage
        self.meta = meta
        self.vhost_names = tuple(vhosts)
        self.vhosts = {}
        self.loaded = False
        self._dirty_logs = {}
        self._flush_call = None

    def now(self):
        return self.reactor.seconds()

    # loading

    def load(self):
        """
        Create the virtual hosts and restore the durable state (once).
        """
        if self.loaded:
            return
        self.loaded = True
        for name in self.vhost_names:
            self._make_vhost(name)
        if self.meta is None:
            return
        for key, value in self.meta.items(NS_EXCHANGES):
            try:
                vname, name = json.loads(key)
                vhost = self.vhosts.get(vname)
                if vhost is None or name in vhost.exchanges:
                    continue
                args = self._decode_args(value.get("arguments"))
                vhost.exchanges[name] = Exchange(
                    vhost, name, value["type"], True, value.get("auto_delete", False),
                    value.get("internal", False), args,
                )
            except Exception:
                self.log.failure("amqp: cannot restore exchange {key}", key=key)
        for key, value in self.meta.items(NS_QUEUES):
            try:
                vname, name = json.loads(key)
                vhost = self.vhosts.get(vname)
                if vhost is None:
                    continue
                args = self._decode_args(value.get("arguments"))
                queue = Queue(self, vhost, name, True, False, value.get("auto_delete", False), args)
                vhost.queues[name] = queue
                self._attach_log(queue, recover=True)
            except Exception:
                self.log.failure("amqp: cannot restore queue {key}", key=key)
        for key, value in self.meta.items(NS_BINDINGS):
            try:
                vname, source, is_queue, dest, rk, _ = json.loads(key)
                vhost = self.vhosts.get(vname)
                if vhost is None:
                    continue
                ex = vhost.exchanges.get(source)
                target = (vhost.queues if is_queue else vhost.exchanges).get(dest)
                if ex is None or target is None:
                    continue
                args = self._decode_args(value.get("arguments"))
                self._add_binding(ex, target, rk, args)
            except Exception:
                self.log.failure("amqp: cannot restore binding {key}", key=key)
        for vhost in self.vhosts.values():
            for queue in vhost.queues.values():
                queue.touch()

    def _make_vhost(self, name):
        vhost = Vhost(name)
        for ex_name, kind in STANDARD_EXCHANGES:
            vhost.exchanges[ex_name] = Exchange(vhost, ex_name, kind, durable=True)
        self.vhosts[name] = vhost
        return vhost

    @staticmethod
    def _decode_args(raw):
        if not raw:
            return {}
        if isinstance(raw, str):
            raw = base64.b64decode(raw)
        return codec.decode_table(raw, 0)[0]

    def _attach_log(self, queue, recover=False):
        if self.storage is None:
            return
        log = QueueLog(self, queue)
        queue.store = log
        if not recover:
            log.create()
            return
        if not (self.storage.has_shard(log.shard) and self.storage.has_shard(log.ack_shard)):
            log.create()
            return
        now = self.now()

        def make_entry(offset, record, redelivered):
            headers = dict(record.headers)
            header = headers.get("h")
            if header is None or len(header) < 14:
                return None
            msg = Message(
                (headers.get("e") or b"").decode("utf-8", "surrogateescape"),
                (record.key or b"").decode("utf-8", "surrogateescape"),
                bytes(header), bytes(record.value or b""),
            )
            ttl = queue.ttl_ms
            if msg.expiration is not None and (ttl is None or msg.expiration < ttl):
                ttl = msg.expiration
            expires = None
            if ttl is not None:
                expires = record.timestamp_ms / 1000.0 + ttl / 1000.0
            entry = Entry(msg, expires, offset + 1)
            entry.redelivered = redelivered
            return entry

        entries = log.recover(make_entry)
        for entry in entries:
            queue.ready.append(entry)
            queue.ready_bytes += entry.size
        if entries:
            queue.seq = entries[-1].seq
        if entries:
            self.log.info(
                "amqp: queue {name!r} in {vhost!r}: {n} messages recovered",
                name=queue.name, vhost=queue.vhost.name, n=len(entries),
            )
        if queue.ttl_ms is not None or any(e.expires_at is not None for e in entries[:1]):
            queue.expire(now)

    # metadata

    def _persist(self, namespace, key, value):
        if self.meta is None:
            return
        self.meta.put(namespace, key, value).addErrback(
            lambda f: self.log.failure("amqp: cannot store {key}", f, key=key)
        )

    def _unpersist(self, namespace, key):
        if self.meta is None:
            return
        self.meta.delete(namespace, key).addErrback(
            lambda f: self.log.failure("amqp: cannot delete {key}", f, key=key)
        )

    def _binding_key(self, binding):
        d = binding.destination
        return _key(binding.source.vhost.name, binding.source.name, d.is_queue, d.name,
                    binding.routing_key, base64.b64encode(binding.args_key).decode("ascii"))

    # vhosts

    def vhost(self, name):
        self.load()
        return self.vhosts.get(name)

    # exchanges

    def exchange(self, vhost, name):
        """
        @raise codec.NotFound: no such exchange.
        """
        ex = vhost.exchanges.get(name)
        if ex is None:
            raise codec.NotFound("no exchange '%s' in vhost '%s'" % (name, vhost.name))
        return ex

    def declare_exchange(self, vhost, name, kind, passive=False, durable=False,
                         auto_delete=False, internal=False, arguments=None):
        if not name:
            raise codec.AccessRefused("operation not permitted on the default exchange")
        if passive:
            return self.exchange(vhost, name)
        if kind not in EXCHANGE_TYPES:
            raise codec.CommandInvalid("unknown exchange type '%s'" % (kind,))
        ex = vhost.exchanges.get(name)
        if ex is None:
            if name.startswith("amq."):
                raise codec.AccessRefused(
                    "exchange name '%s' contains reserved prefix 'amq.*'" % (name,))
            ex = Exchange(vhost, name, kind, durable, auto_delete, internal, arguments)
            vhost.exchanges[name] = ex
            if durable:
                self._persist(NS_EXCHANGES, _key(vhost.name, name), {
                    "type": kind, "auto_delete": auto_delete, "internal": internal,
                    "arguments": codec.encode_table(arguments or {}),
                })
            return ex
        what = "exchange '%s' in vhost '%s'" % (name, vhost.name)
        for arg, got, have in (
            ("type", kind, ex.kind), ("durable", durable, ex.durable),
            ("auto_delete", auto_delete, ex.auto_delete), ("internal", internal, ex.internal),
        ):
            if got != have:
                if isinstance(got, bool):
                    got, have = _bool(got), _bool(have)
                raise codec.PreconditionFailed(
                    "inequivalent arg '%s' for %s: received '%s' but current is '%s'"
                    % (arg, what, got, have))
        return ex

    def delete_exchange(self, vhost, name, if_unused=False):
        if not name:
            raise codec.AccessRefused("operation not permitted on the default exchange")
        ex = vhost.exchanges.get(name)
        if ex is None:
            return
        if name.startswith("amq.") and (name, ex.kind) in STANDARD_EXCHANGES:
            raise codec.AccessRefused(
                "cannot delete exchange '%s' in vhost '%s'" % (name, vhost.name))
        if if_unused and ex.bindings:
            raise codec.PreconditionFailed("exchange '%s' in vhost '%s' in use"
                                           % (name, vhost.name))
        self._remove_exchange(ex)

    def _remove_exchange(self, ex):
        vhost = ex.vhost
        ex.deleted = True
        vhost.exchanges.pop(ex.name, None)
        for binding in list(ex.bindings.values()):
            self._remove_binding(binding, auto_delete=False)
        for other in list(vhost.exchanges.values()):
            for binding in list(other.bindings.values()):
                if binding.destination is ex:
                    self._remove_binding(binding)
        if ex.durable:
            self._unpersist(NS_EXCHANGES, _key(vhost.name, ex.name))

    # bindings

    def _add_binding(self, source, destination, routing_key, arguments):
        binding = Binding(source, destination, routing_key, arguments or {},
                          _args_key(arguments))
        if not source.add_binding(binding):
            return None
        if destination.is_queue:
            destination.bindings.add(binding)
        return binding

    def _remove_binding(self, binding, auto_delete=True):
        source = binding.source
        source.remove_binding(binding.key)
        d = binding.destination
        if d.is_queue:
            d.bindings.discard(binding)
        if source.durable and d.durable:
            self._unpersist(NS_BINDINGS, self._binding_key(binding))
        if auto_delete and source.auto_delete and not source.bindings and not source.deleted:
            self._remove_exchange(source)

    def bind(self, vhost, source_name, destination, routing_key, arguments):
        source = self.exchange(vhost, source_name)
        if not source_name:
            raise codec.AccessRefused("operation not permitted on the default exchange")
        binding = self._add_binding(source, destination, routing_key, arguments)
        if binding is not None and source.durable and destination.durable:
            self._persist(NS_BINDINGS, self._binding_key(binding), {
                "arguments": codec.encode_table(arguments or {}),
            })

    def unbind(self, vhost, source_name, destination, routing_key, arguments):
        if not source_name:
            raise codec.AccessRefused("operation not permitted on the default exchange")
        source = vhost.exchanges.get(source_name)
        if source is None:
            return
        key = (destination.is_queue, destination.name, routing_key, _args_key(arguments))
        binding = source.bindings.get(key)
        if binding is not None:
            self._remove_binding(binding)

    # queues

    def queue(self, vhost, name, conn=None):
        """
        @raise codec.NotFound: no such queue.
        @raise codec.ResourceLocked: an exclusive queue of another connection.
        """
        q = vhost.queues.get(name)
        if q is None:
            raise codec.NotFound("no queue '%s' in vhost '%s'" % (name, vhost.name))
        if q.owner is not None and conn is not None and q.owner is not conn:
            raise _locked(q)
        return q

    def declare_queue(self, vhost, name, passive=False, durable=False, exclusive=False,
                      auto_delete=False, arguments=None, conn=None, server_named=False):
        """
        Declare (or find, with C{passive}) a queue.

        @param conn: the declaring connection (owner of an exclusive queue).
        """
        if passive:
            q = self.queue(vhost, name, conn)
            q.touch()
            return q
        q = vhost.queues.get(name)
        if q is not None:
            self.queue(vhost, name, conn)
            if exclusive != q.exclusive:
                # RabbitMQ: a different exclusivity, even from the owning
                # connection, is a lock conflict, not an inequivalent arg.
                raise _locked(q)
            what = "queue '%s' in vhost '%s'" % (name, vhost.name)
            for arg, got, have in (
                ("durable", durable, q.durable), ("auto_delete", auto_delete, q.auto_delete),
            ):
                if got != have:
                    raise codec.PreconditionFailed(
                        "inequivalent arg '%s' for %s: received '%s' but current is '%s'"
                        % (arg, what, _bool(got), _bool(have)))
            arguments = arguments or {}
            for arg in _EQUIVALENT_ARGS:
                got = arguments.get(arg)
                have = q.arguments.get(arg)
                if got != have:
                    raise codec.PreconditionFailed(
                        "inequivalent arg '%s' for %s: received %s but current is %s"
                        % (arg, what,
                           "none" if got is None else "the value '%s'" % _arg_text(got),
                           "none" if have is None else "the value '%s'" % _arg_text(have)))
            q.touch()
            return q
        if name.startswith("amq.") and not server_named:
            raise codec.AccessRefused("queue name '%s' contains reserved prefix 'amq.*'" % (name,))
        q = Queue(self, vhost, name, durable, exclusive, auto_delete, arguments,
                  conn if exclusive else None)
        vhost.queues[name] = q
        if durable and not exclusive:
            self._persist(NS_QUEUES, _key(vhost.name, name), {
                "auto_delete": auto_delete,
                "arguments": codec.encode_table(arguments or {}),
            })
            self._attach_log(q)
        self._add_binding(vhost.exchanges[""], q, name, None)
        q.touch()
        return q

    @staticmethod
    def server_name(prefix):
        return prefix + base64.urlsafe_b64encode(os.urandom(16)).decode("ascii").rstrip("=")

    def delete_queue(self, q, if_unused=False, if_empty=False, notify=True):
        """
        Delete C{q}: its consumers are cancelled (told so with
        C{notify}), its bindings and stored messages removed.

        @return: the number of ready messages it held.
        """
        if q.deleted:
            return 0
        what = "queue '%s' in vhost '%s'" % (q.name, q.vhost.name)
        if if_unused and q.consumers:
            raise codec.PreconditionFailed("%s in use" % (what,))
        if if_empty and q.ready:
            raise codec.PreconditionFailed("%s is not empty" % (what,))
        count = len(q.ready)
        q.deleted = True
        q.stop_timers()
        vhost = q.vhost
        if vhost.queues.get(q.name) is q:
            del vhost.queues[q.name]
        for binding in list(q.bindings):
            self._remove_binding(binding)
        # Each channel tells its consumers in consumer-tag order (RabbitMQ).
        for consumer in sorted(q.consumers, key=_tag_of):
            consumer.channel.consumer_gone(consumer, notify)
        q.consumers = []
        q.groups = []
        q.ready.clear()
        q.ready_bytes = 0
        if q.store is not None:
            log = q.store
            q.store = None
            self._dirty_logs.pop(id(log), None)
            log.destroy()
        if q.durable and not q.exclusive:
            self._unpersist(NS_QUEUES, _key(vhost.name, q.name))
        return count

    # routing and publishing

    def route(self, vhost, ex, routing_key, msg):
        """
        The queues a message published to C{ex} with C{routing_key} goes to
        (exchange-to-exchange bindings and alternate exchanges followed).
        """
        if not ex.name:
            q = vhost.queues.get(routing_key)
            return (q,) if q is not None else ()
        dests = ex.destinations(routing_key, msg.headers)
        if not ex.has_exchange_routes and (dests or ex.alternate is None):
            return dests
        queues = []
        seen = set()
        todo = [(ex, dests)]
        while todo:
            source, dests = todo.pop()
            seen.add(id(source))
            if not dests and source.alternate is not None:
                alt = vhost.exchanges.get(source.alternate)
                if alt is not None and id(alt) not in seen:
                    todo.append((alt, alt.destinations(routing_key, msg.headers)))
                continue
            for d in dests:
                if d.is_queue:
                    if d not in queues:
                        queues.append(d)
                elif id(d) not in seen:
                    todo.append((d, d.destinations(routing_key, msg.headers)))
        return queues

    def dead_letter(self, queue, entry, reason, now):
        """
        Publish C{entry} to the dead-letter exchange of C{queue}, with the
        C{x-death} header as RabbitMQ writes it.
        """
        vhost = queue.vhost
        ex = vhost.exchanges.get(queue.dlx)
        if ex is None:
            return
        msg = entry.msg
        try:
            props = codec.decode_properties(msg.header, 12, len(msg.header), typed=True)
        except codec.AmqpError:
            return
        headers = dict(props.headers or {})
        deaths = headers.get("x-death")
        deaths = list(deaths.value) if isinstance(deaths, TypedValue) and deaths.tag == "A" else []
        found = None
        for i, death in enumerate(deaths):
            table = death.value if isinstance(death, TypedValue) else death
            if not isinstance(table, dict):
                continue
            q = table.get("queue")
            r = table.get("reason")
            q = q.value if isinstance(q, TypedValue) else q
            r = r.value if isinstance(r, TypedValue) else r
            if q == queue.name and r == reason:
                found = i
                break
        if found is not None:
            table = dict(deaths.pop(found).value)
            count = table.get("count")
            count = count.value if isinstance(count, TypedValue) else (count or 0)
            table["count"] = TypedValue("l", int(count) + 1)
            table["time"] = TypedValue("T", int(now))
        else:
            table = {
                "count": TypedValue("l", 1),
                "reason": TypedValue("S", reason),
                "queue": TypedValue("S", queue.name),
                "time": TypedValue("T", int(now)),
                "exchange": TypedValue("S", msg.exchange),
                "routing-keys": TypedValue("A", [TypedValue("S", msg.routing_key)]),
            }
            if props.expiration is not None:
                table["original-expiration"] = TypedValue("S", props.expiration)
        deaths.insert(0, TypedValue("F", table))
        headers["x-death"] = TypedValue("A", deaths)
        if "x-first-death-reason" not in headers:
            headers["x-first-death-reason"] = TypedValue("S", reason)
            headers["x-first-death-queue"] = TypedValue("S", queue.name)
            headers["x-first-death-exchange"] = TypedValue("S", msg.exchange)
        headers["x-last-death-reason"] = TypedValue("S", reason)
        headers["x-last-death-queue"] = TypedValue("S", queue.name)
        headers["x-last-death-exchange"] = TypedValue("S", msg.exchange)
        props.headers = headers
        props.expiration = None
        header = codec.encode_content_header(len(msg.body), props)
        routing_key = queue.dlrk if queue.dlrk is not None else msg.routing_key
        new = Message(queue.dlx, routing_key, header, msg.body)
        rejected = reason == "rejected" or any(
            _death_reason(d) == "rejected" for d in deaths)
        dead_queues = set(_death_queue(d) for d in deaths)
        for target in self.route(vhost, ex, routing_key, new):
            if target.name in dead_queues and not rejected:
                # A cycle without any rejection: RabbitMQ drops it too.
                continue
            target.publish(new, now)

    # storage, once per reactor turn

    def log_dirty(self, log):
        self._dirty_logs[id(log)] = log
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self.flush)

    def flush(self):
        """
        Write what durable queues gathered this turn.

        @return: a Deferred firing when the message appends are stored.
        """
        call = self._flush_call
        self._flush_call = None
        if call is not None and call.active():
            call.cancel()
        logs = list(self._dirty_logs.values())
        self._dirty_logs.clear()
        now_ms = int(self.now() * 1000)
        ds = []
        for log in logs:
            try:
                d = log.flush(now_ms)
            except Exception:
                self.log.failure("amqp: storage flush failed")
                continue
            if d is not None:
                ds.append(d)
        if not ds:
            return succeed(None)
        return DeferredList(ds, consumeErrors=True).addCallback(lambda _: None)

    def close(self):
        """
        Flush what is pending and stop every queue timer.
        """
        d = self.flush()
        for vhost in self.vhosts.values():
            for q in vhost.queues.values():
                q.stop_timers()
        return d


def _tag_of(consumer):
    return consumer.tag


def _locked(q):
    return codec.ResourceLocked(
        "cannot obtain exclusive access to locked queue '%s' in vhost '%s'. It could be"
        " originally declared on another connection or the exclusive property value"
        " does not match that of the original declaration." % (q.name, q.vhost.name))


def _death_field(death, name):
    table = death.value if isinstance(death, TypedValue) else death
    if not isinstance(table, dict):
        return None
    value = table.get(name)
    return value.value if isinstance(value, TypedValue) else value


def _death_reason(death):
    return _death_field(death, "reason")


def _death_queue(death):
    return _death_field(death, "queue")
