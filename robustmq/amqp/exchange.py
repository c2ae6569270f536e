# -*- test-case-name: tests.test_amqp_broker -*-
"""
AMQP exchanges and their routing: direct, fanout, topic and headers.

An exchange keeps its bindings and an index built for its type, so routing
one message reads only what it needs: a dict lookup for direct, a cached
list for fanout, a per-routing-key cache for topic; headers bindings are
checked one by one against the message headers.

A binding destination is a L{robustmq.amqp.queue.Queue} or another
L{Exchange} (exchange-to-exchange bindings); both have C{is_queue}.
"""

from twisted.logger import Logger

#: The exchange types this broker implements.
EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")

#: Cached topic routes per exchange, at most.
TOPIC_CACHE_SIZE = 4096


def topic_words(pattern):
    """
    The words of a topic binding key, consecutive C{#} collapsed.
    """
    words = []
    for word in pattern.split("."):
        if word == "#" and words and words[-1] == "#":
            continue
        words.append(word)
    return tuple(words)


def topic_matches(words, key_words, wi=0, ki=0):
    """
    Whether the routing key (split on dots) matches the binding key words:
    C{*} is exactly one word, C{#} zero or more.
    """
    nw = len(words)
    nk = len(key_words)
    while wi < nw:
        word = words[wi]
        if word == "#":
            if wi == nw - 1:
                return True
            for j in range(ki, nk + 1):
                if topic_matches(words, key_words, wi + 1, j):
                    return True
            return False
        if ki >= nk:
            return False
        if word != "*" and word != key_words[ki]:
            return False
        wi += 1
        ki += 1
    return ki == nk


def headers_match(arguments, headers):
    """
    Whether message C{headers} match a headers-exchange binding.

    C{x-match} is C{all} (default), C{any}, C{all-with-x} or
    C{any-with-x}; without C{-with-x}, binding keys starting with C{x-} are
    not compared. A binding value of L{None} (void) only asks for presence.
    """
    mode = arguments.get("x-match", "all")
    if isinstance(mode, bytes):
        mode = mode.decode("utf-8", "replace")
    with_x = mode.endswith("-with-x")
    want_any = mode.startswith("any")
    headers = headers or {}
    for key, value in arguments.items():
        if key == "x-match" or (key.startswith("x-") and not with_x):
            continue
        present = key in headers
        ok = present and (value is None or headers[key] == value)
        if want_any and ok:
            return True
        if not want_any and not ok:
            return False
    return not want_any


class Binding:
    """
    One binding of an exchange to a destination.
    """

    __slots__ = ("source", "destination", "routing_key", "arguments", "args_key", "words")

    def __init__(self, source, destination, routing_key, arguments, args_key):
        self.source = source
        self.destination = destination
        self.routing_key = routing_key
        self.arguments = arguments
        self.args_key = args_key
        self.words = None

    @property
    def key(self):
        d = self.destination
        return (d.is_queue, d.name, self.routing_key, self.args_key)


class Exchange:
    """
    An exchange of one virtual host.

    @ivar kind: one of L{EXCHANGE_TYPES}.
    @ivar alternate: the name of the alternate exchange, or L{None}.
    @ivar has_exchange_routes: some destination is an exchange.
    """

    log = Logger()
    is_queue = False

    def __init__(self, vhost, name, kind, durable=False, auto_delete=False,
                 internal=False, arguments=None):
        self.vhost = vhost
        self.name = name
        self.kind = kind
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = arguments or {}
        alternate = self.arguments.get("alternate-exchange")
        if isinstance(alternate, bytes):
            alternate = alternate.decode("utf-8", "surrogateescape")
        self.alternate = alternate if isinstance(alternate, str) else None
        self.bindings = {}
        self.has_exchange_routes = False
        self.deleted = False
        self._reindex()

    def __repr__(self):
        return "<Exchange {!r} {} in {!r}>".format(self.name, self.kind, self.vhost)

    # bindings

    def add_binding(self, binding):
        """
        Add C{binding}; C{False} when it exists already.
        """
        key = binding.key
        if key in self.bindings:
            return False
        if self.kind == "topic":
            binding.words = topic_words(binding.routing_key)
        self.bindings[key] = binding
        self._reindex()
        return True

    def remove_binding(self, key):
        binding = self.bindings.pop(key, None)
        if binding is not None:
            self._reindex()
        return binding

    def remove_destination(self, destination):
        """
        Remove every binding to C{destination}; the removed bindings.
        """
        gone = [b for b in self.bindings.values() if b.destination is destination]
        for b in gone:
            del self.bindings[b.key]
        if gone:
            self._reindex()
        return gone

    def _reindex(self):
        self._topic_cache = {}
        direct = {}
        everyone = []
        seen = set()
        self.has_exchange_routes = False
        for b in self.bindings.values():
            d = b.destination
            if not d.is_queue:
                self.has_exchange_routes = True
            targets = direct.setdefault(b.routing_key, [])
            if d not in targets:
                targets.append(d)
            if id(d) not in seen:
                seen.add(id(d))
                everyone.append(d)
        self._direct = {k: tuple(v) for k, v in direct.items()}
        self._everyone = tuple(everyone)
        self._list = tuple(self.bindings.values())

    # routing

    def destinations(self, routing_key, headers_of):
        """
        The destinations of a message published with C{routing_key}.

        @param headers_of: a callable returning the message headers (only
            called by a headers exchange).
        @return: a tuple, each destination once.
        """
        kind = self.kind
        if kind == "direct":
            return self._direct.get(routing_key, ())
        if kind == "fanout":
            return self._everyone
        if kind == "topic":
            cached = self._topic_cache.get(routing_key)
            if cached is not None:
                return cached
            key_words = routing_key.split(".")
            out = []
            for b in self._list:
                if b.destination not in out and topic_matches(b.words, key_words):
                    out.append(b.destination)
            out = tuple(out)
            if len(self._topic_cache) >= TOPIC_CACHE_SIZE:
                self._topic_cache.clear()
            self._topic_cache[routing_key] = out
            return out
        headers = headers_of()
        out = []
        for b in self._list:
            if b.destination not in out and headers_match(b.arguments, headers):
                out.append(b.destination)
        return tuple(out)
