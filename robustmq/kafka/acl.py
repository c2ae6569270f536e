# -*- test-case-name: tests.test_kafka_acl -*-
"""
Kafka authorization: the Kafka rules of C{[[security.acl]]} together with
the ACLs created through CreateAcls (kept in the metadata store, namespace
C{acl}, keys C{kafka/...}), evaluated as Apache Kafka's authorizer does.

A check asks whether a user, from an address, may do an action (C{read},
C{write}, C{create}, C{delete}, C{describe}, C{alter}) on a resource (a
topic, a group, or the cluster). Of the rules whose resource, user, address
and action match:

 - any C{deny} refuses, whatever the allows (order does not matter, and the
   rules of the config file and those created through the API are one
   set);
 - else any C{allow} grants; an allow of C{read}, C{write}, C{delete} or
   C{alter} also grants C{describe}, as in Kafka;
 - else, when some rule names the resource (for any user or action), the
   check is refused; when none does, C{[security] acl_default} decides (as
   Kafka's C{allow.everyone.if.no.acl.found}).

Resources are a name or a prefix (a config C{topic}/C{group} ending in
C{*}, a Kafka PREFIXED pattern; a lone C{*} is every name). C{%u} expands to
the authenticated user name; a rule with C{%u} matches no unauthenticated
client and no user name holding C{*}. An unauthenticated client is the user
C{ANONYMOUS}, as Kafka's C{User:ANONYMOUS}.
"""

import ipaddress
import json
import re

from twisted.internet.defer import gatherResults
from twisted.logger import Logger

from robustmq.kafka import errors
from robustmq.meta import ACL as ACL_NS

READ = "read"
WRITE = "write"
CREATE = "create"
DELETE = "delete"
DESCRIBE = "describe"
ALTER = "alter"
ACTIONS = (READ, WRITE, CREATE, DELETE, DESCRIBE, ALTER)

# Kafka's resource types.
RES_ANY = 1
TOPIC = 2
GROUP = 3
CLUSTER = 4
CLUSTER_NAME = "kafka-cluster"
_RESOURCE_OF_KEY = {"topic": TOPIC, "group": GROUP, "cluster": CLUSTER}

# Kafka's pattern types.
PATTERN_ANY = 1
PATTERN_MATCH = 2
LITERAL = 3
PREFIXED = 4

# Kafka's permission types.
PERMISSION_ANY = 1
DENY = 2
ALLOW = 3

# Kafka's ACL operations.
OP_ANY = 1
OP_ALL = 2
OP_READ = 3
OP_WRITE = 4
OP_CREATE = 5
OP_DELETE = 6
OP_ALTER = 7
OP_DESCRIBE = 8
OP_DESCRIBE_CONFIGS = 10
OP_ALTER_CONFIGS = 11
OP_IDEMPOTENT_WRITE = 12

_OP_OF_ACTION = {READ: OP_READ, WRITE: OP_WRITE, CREATE: OP_CREATE, DELETE: OP_DELETE,
                 DESCRIBE: OP_DESCRIBE, ALTER: OP_ALTER}

#: What a rule on an operation matches: C{(when allowed, when denied)}.
#: DescribeConfigs is checked as describe, AlterConfigs as alter,
#: IdempotentWrite as write on the cluster.
_MATCHES = {
    OP_ALL: (frozenset(ACTIONS), frozenset(ACTIONS)),
    OP_READ: (frozenset((READ, DESCRIBE)), frozenset((READ,))),
    OP_WRITE: (frozenset((WRITE, DESCRIBE)), frozenset((WRITE,))),
    OP_CREATE: (frozenset((CREATE,)), frozenset((CREATE,))),
    OP_DELETE: (frozenset((DELETE, DESCRIBE)), frozenset((DELETE,))),
    OP_ALTER: (frozenset((ALTER, DESCRIBE)), frozenset((ALTER,))),
    OP_DESCRIBE: (frozenset((DESCRIBE,)), frozenset((DESCRIBE,))),
    OP_DESCRIBE_CONFIGS: (frozenset((DESCRIBE,)), frozenset((DESCRIBE,))),
    OP_ALTER_CONFIGS: (frozenset((ALTER, DESCRIBE)), frozenset((ALTER,))),
    OP_IDEMPOTENT_WRITE: (frozenset((WRITE,)), frozenset((WRITE,))),
}

#: The operations of each resource type, as Kafka validates them.
_OPS_OF_RESOURCE = {
    TOPIC: frozenset((OP_ALL, OP_READ, OP_WRITE, OP_CREATE, OP_DELETE, OP_ALTER, OP_DESCRIBE,
                      OP_DESCRIBE_CONFIGS, OP_ALTER_CONFIGS)),
    GROUP: frozenset((OP_ALL, OP_READ, OP_DELETE, OP_DESCRIBE)),
    CLUSTER: frozenset((OP_ALL, OP_CREATE, OP_ALTER, OP_DESCRIBE, OP_DESCRIBE_CONFIGS,
                        OP_ALTER_CONFIGS, OP_IDEMPOTENT_WRITE)),
}

#: The bits of Kafka's C{authorized_operations} fields per resource type.
_REPORTED_OPS = {
    TOPIC: (OP_READ, OP_WRITE, OP_CREATE, OP_DELETE, OP_ALTER, OP_DESCRIBE,
            OP_DESCRIBE_CONFIGS, OP_ALTER_CONFIGS),
    GROUP: (OP_READ, OP_DELETE, OP_DESCRIBE),
    CLUSTER: (OP_CREATE, OP_ALTER, OP_DESCRIBE, OP_DESCRIBE_CONFIGS, OP_ALTER_CONFIGS,
              OP_IDEMPOTENT_WRITE),
}
_ACTION_OF_OP = {OP_READ: READ, OP_WRITE: WRITE, OP_CREATE: CREATE, OP_DELETE: DELETE,
                 OP_ALTER: ALTER, OP_DESCRIBE: DESCRIBE, OP_DESCRIBE_CONFIGS: DESCRIBE,
                 OP_ALTER_CONFIGS: ALTER, OP_IDEMPOTENT_WRITE: WRITE}

ANONYMOUS = "ANONYMOUS"
_KEY_PREFIX = "kafka/"

#: A topic name no client can create: what Kafka's "any topic" checks use.
_NO_TOPIC = "\x00"


class AclError(Exception):
    """
    An ACL binding or filter that cannot be used (INVALID_REQUEST).
    """


class Binding:
    """
    One Kafka ACL, in Kafka's terms, compiled for matching.

    @ivar source: C{"api"}, or C{"config"} with C{index} the place of the
        rule in C{[[security.acl]]}.
    """

    __slots__ = ("resource_type", "name", "pattern_type", "principal", "host", "operation",
                 "permission", "source", "index", "allow", "actions", "user", "network",
                 "prefix", "pattern", "placeholder", "covers")

    def __init__(self, resource_type, name, pattern_type, principal, host, operation,
                 permission, source="api", index=None):
        self.resource_type = resource_type
        self.name = name
        self.pattern_type = pattern_type
        self.principal = principal
        self.host = host
        self.operation = operation
        self.permission = permission
        self.source = source
        self.index = index
        self.allow = permission == ALLOW
        self.actions = _MATCHES[operation][0 if self.allow else 1]
        user = principal[len("User:"):]
        self.user = None if user == "*" else user
        self.network = None if host == "*" else ipaddress.ip_network(host, strict=False)
        if pattern_type == PREFIXED:
            self.prefix, self.pattern = True, name
        elif name == "*":
            self.prefix, self.pattern = True, ""
        else:
            self.prefix, self.pattern = False, name
        self.placeholder = "%u" in self.pattern
        if self.placeholder:
            # Which names the rule may name, for any user.
            regex = ".+".join(re.escape(p) for p in self.pattern.split("%u"))
            self.covers = re.compile(regex if self.prefix else regex + r"\Z", re.DOTALL).match
        else:
            self.covers = None

    @classmethod
    def from_rule(cls, rule, index):
        """
        The binding of a Kafka rule of the config file.
        """
        for key in ("topic", "group"):
            value = getattr(rule, key)
            if value is not None:
                resource_type = _RESOURCE_OF_KEY[key]
                if value == "*":
                    name, pattern_type = "*", LITERAL
                elif value.endswith("*"):
                    name, pattern_type = value[:-1], PREFIXED
                else:
                    name, pattern_type = value, LITERAL
                break
        else:
            resource_type, name, pattern_type = CLUSTER, CLUSTER_NAME, LITERAL
        operation = _OP_OF_ACTION[rule.action]
        if resource_type == CLUSTER and operation == OP_WRITE:
            operation = OP_IDEMPOTENT_WRITE
        return cls(
            resource_type, name, pattern_type,
            "User:" + (rule.user if rule.user is not None else "*"),
            rule.ip if rule.ip is not None else "*", operation,
            ALLOW if rule.permission == "allow" else DENY, "config", index,
        )

    @classmethod
    def from_request(cls, c):
        """
        The binding of one CreateAcls creation.

        @raise AclError: when Kafka would refuse it, or it names a resource
            this broker has no ACLs for.
        """
        rtype = c["resource_type"]
        name = c["resource_name"]
        pattern_type = c.get("resource_pattern_type", LITERAL)
        if rtype not in _OPS_OF_RESOURCE:
            raise AclError("resource type {} is not supported (topic, group and cluster"
                           " are)".format(rtype))
        if pattern_type not in (LITERAL, PREFIXED):
            raise AclError("pattern type must be LITERAL or PREFIXED")
        if not name:
            raise AclError("resource name must not be empty")
        if rtype == CLUSTER and (name != CLUSTER_NAME or pattern_type != LITERAL):
            raise AclError("the cluster resource is the literal '{}'".format(CLUSTER_NAME))
        principal = c["principal"] or ""
        if not principal.startswith("User:") or len(principal) == len("User:"):
            raise AclError("principal must be 'User:<name>' or 'User:*'")
        host = c["host"] or ""
        if host != "*":
            try:
                ipaddress.ip_network(host, strict=False)
            except ValueError:
                raise AclError("host must be '*' or an IP address") from None
        operation = c["operation"]
        if operation not in _OPS_OF_RESOURCE[rtype]:
            raise AclError("operation {} is not an operation on resource type {}".format(
                operation, rtype))
        if c["permission_type"] not in (ALLOW, DENY):
            raise AclError("permission type must be ALLOW or DENY")
        return cls(rtype, name, pattern_type, principal, host, operation, c["permission_type"])

    @classmethod
    def from_meta(cls, value):
        return cls(value["resource_type"], value["name"], value["pattern_type"],
                   value["principal"], value["host"], value["operation"], value["permission"])

    def to_meta(self):
        return {"resource_type": self.resource_type, "name": self.name,
                "pattern_type": self.pattern_type, "principal": self.principal,
                "host": self.host, "operation": self.operation, "permission": self.permission}

    def key(self):
        """
        The metadata key: the same for the same ACL.
        """
        return _KEY_PREFIX + json.dumps(
            [self.resource_type, self.name, self.pattern_type, self.principal, self.host,
             self.operation, self.permission], separators=(",", ":"), ensure_ascii=False)

    def names(self, name, user):
        """
        C{True} when the rule's resource pattern matches the resource
        C{name} for C{user}.
        """
        pattern = self.pattern
        if self.placeholder:
            if user is None or "*" in user:
                return False
            pattern = pattern.replace("%u", user)
        if self.prefix:
            return name.startswith(pattern)
        return name == pattern

    def is_about(self, name):
        """
        C{True} when the rule names the resource C{name} for some user.
        """
        if self.covers is not None:
            return self.covers(name) is not None
        if self.prefix:
            return name.startswith(self.pattern)
        return name == self.pattern

    def matches_filter(self, f):
        """
        C{True} when this binding matches a DescribeAcls / DeleteAcls
        filter, as Kafka's C{AclBindingFilter}.
        """
        rtype = f["resource_type_filter"]
        if rtype != RES_ANY and rtype != self.resource_type:
            return False
        ptype = f.get("pattern_type_filter", LITERAL)
        name = f["resource_name_filter"]
        if ptype in (LITERAL, PREFIXED):
            if ptype != self.pattern_type or (name is not None and name != self.name):
                return False
        elif name is not None:
            if ptype == PATTERN_ANY:
                if name != self.name:
                    return False
            elif self.pattern_type == PREFIXED:
                if not name.startswith(self.name):
                    return False
            elif self.name not in ("*", name):
                return False
        for key, mine in (("principal_filter", self.principal), ("host_filter", self.host)):
            if f[key] is not None and f[key] != mine:
                return False
        if f["operation"] != OP_ANY and f["operation"] != self.operation:
            return False
        if f["permission_type"] != PERMISSION_ANY and f["permission_type"] != self.permission:
            return False
        return True


def check_filter(f):
    """
    @raise AclError: for a filter with an UNKNOWN field, as Kafka.
    """
    if (f["resource_type_filter"] == 0 or f.get("pattern_type_filter", LITERAL) == 0
            or f["operation"] == 0 or f["permission_type"] == 0):
        raise AclError("a filter field is UNKNOWN")


class KafkaAcl:
    """
    The Kafka ACLs of the broker: the config rules and the API-created
    ones, and the decisions they give.

    @ivar open: C{True} when there is no Kafka ACL and C{acl_default} is
        allow: every check passes (the fast path).
    @ivar generation: bumped whenever the ACLs change; caches of decisions
        compare it.
    """

    log = Logger()

    def __init__(self, authorizer, meta, max_acls=10000):
        self.meta = meta
        self.max_acls = max_acls
        rules = getattr(authorizer, "kafka_rules", ()) if authorizer is not None else ()
        self.default_allow = (authorizer.default_allow if authorizer is not None
                              else True)
        self.config_bindings = [Binding.from_rule(r, i) for i, r in enumerate(rules)]
        self.api_bindings = {}
        self.generation = 0
        self._warned = set()
        self._rebuild()

    def load(self):
        """
        Read the ACLs created through the API from the metadata store.
        """
        for key, value in self.meta.items(ACL_NS, _KEY_PREFIX):
            try:
                self.api_bindings[key] = Binding.from_meta(value)
            except (KeyError, TypeError, ValueError):
                self.log.error("kafka: bad ACL in the metadata store: {key}", key=key)
        self._rebuild()
        if self.api_bindings:
            self.log.info("kafka: {n} ACLs loaded", n=len(self.api_bindings))

    def _rebuild(self):
        by_type = {TOPIC: [], GROUP: [], CLUSTER: []}
        for b in self.bindings():
            by_type[b.resource_type].append(b)
        self._by_type = by_type
        self.open = self.default_allow and not any(by_type.values())
        self.generation += 1

    def bindings(self):
        return self.config_bindings + list(self.api_bindings.values())

    # decisions

    def _decide(self, action, rtype, name, user, address):
        """
        C{True} (an allow matched and no deny), C{False} (a deny matched)
        or L{None} (nothing matched).
        """
        principal = user if user is not None else ANONYMOUS
        allowed = None
        for b in self._by_type[rtype]:
            if action not in b.actions:
                continue
            if b.user is not None and b.user != principal:
                continue
            if b.network is not None and (address is None or address not in b.network):
                continue
            if not b.names(name, user):
                if b.placeholder and user is not None and "*" in user:
                    self._warn(user)
                continue
            if not b.allow:
                return False
            allowed = True
        return allowed

    def _warn(self, user):
        if user not in self._warned and len(self._warned) < 1000:
            self._warned.add(user)
            self.log.warn("kafka: user name {user!r} holds '*': rules with %u do not apply"
                          " to it", user=user)

    def _named(self, rtype, name):
        return any(b.is_about(name) for b in self._by_type[rtype])

    def authorize(self, action, rtype, name, user=None, ip=None):
        """
        May C{user} (L{None}: unauthenticated) from C{ip} do C{action} on
        the resource? Creating a topic: a rule on the topic decides, else a
        rule on the cluster, else the default of the topic.
        """
        if self.open:
            return True
        address = _address(ip)
        decided = self._decide(action, rtype, name, user, address)
        if decided is None and action == CREATE and rtype == TOPIC:
            decided = self._decide(CREATE, CLUSTER, CLUSTER_NAME, user, address)
        if decided is not None:
            return decided
        return self.default_allow and not self._named(rtype, name)

    def authorize_idempotent(self, user=None, ip=None):
        """
        InitProducerId without a transactional id, as Kafka: write
        (IdempotentWrite) on the cluster, or write on some topic.
        """
        if self.authorize(WRITE, CLUSTER, CLUSTER_NAME, user, ip):
            return True
        if self.authorize(WRITE, TOPIC, _NO_TOPIC, user, ip):
            return True
        address = _address(ip)
        principal = user if user is not None else ANONYMOUS
        for b in self._by_type[TOPIC]:
            if (b.allow and WRITE in b.actions
                    and (b.user is None or b.user == principal)
                    and (b.network is None or (address is not None and address in b.network))
                    and (not b.placeholder or (user is not None and "*" not in user))):
                return True
        return False

    def authorized_operations(self, rtype, name, user=None, ip=None):
        """
        Kafka's C{authorized_operations} bit field for a resource.
        """
        bits = 0
        for op in _REPORTED_OPS[rtype]:
            if self.authorize(_ACTION_OF_OP[op], rtype, name, user, ip):
                bits |= 1 << op
        return bits

    # the ACL APIs

    def describe(self, f):
        """
        The bindings matching a DescribeAcls filter, grouped as its
        response's C{resources}.

        @raise AclError: for a bad filter.
        """
        check_filter(f)
        resources = {}
        for b in self.bindings():
            if b.matches_filter(f):
                resources.setdefault((b.resource_type, b.name, b.pattern_type), []).append({
                    "principal": b.principal, "host": b.host, "operation": b.operation,
                    "permission_type": b.permission})
        return [{"resource_type": t, "resource_name": n, "pattern_type": p, "acls": acls}
                for (t, n, p), acls in sorted(resources.items())]

    def create(self, creations):
        """
        Create ACLs; each is stored in the metadata store before it applies.

        @return: a Deferred firing with C{[(error_code, message)]}, one per
            creation.
        """
        results = []
        ds = []
        pending = {}
        for c in creations:
            try:
                b = Binding.from_request(c)
            except AclError as e:
                results.append([errors.INVALID_REQUEST, str(e)])
                continue
            key = b.key()
            result = [errors.NONE, None]
            results.append(result)
            if key in self.api_bindings or key in pending:
                continue
            if len(self.api_bindings) + len(pending) >= self.max_acls:
                result[:] = [errors.INVALID_REQUEST,
                             "at most {} ACLs ([kafka_runtime] max_acls)".format(self.max_acls)]
                continue
            pending[key] = b
            ds.append(self._store(key, b, result))
        return gatherResults(ds).addCallback(lambda _: [tuple(r) for r in results])

    def _store(self, key, binding, result):
        def stored(_):
            self.api_bindings[key] = binding
            self._rebuild()
            self.log.info("kafka: ACL created: {acl}", acl=key[len(_KEY_PREFIX):])

        def failed(f):
            self.log.failure("kafka: cannot store an ACL", f)
            result[:] = [errors.UNKNOWN_SERVER_ERROR, "cannot store the ACL"]

        return self.meta.put(ACL_NS, key, binding.to_meta()).addCallbacks(stored, failed)

    def delete(self, filters):
        """
        Delete the API-created ACLs matching each filter. Rules of the
        config file are reported with an error and stay.

        @return: a Deferred firing with the C{filter_results} of DeleteAcls.
        """
        out = []
        ds = []
        doomed = set()
        for f in filters:
            r = {"error_code": errors.NONE, "error_message": None, "matching_acls": []}
            out.append(r)
            try:
                check_filter(f)
            except AclError as e:
                r["error_code"], r["error_message"] = errors.INVALID_REQUEST, str(e)
                continue
            for b in self.bindings():
                if not b.matches_filter(f):
                    continue
                m = {"error_code": errors.NONE, "error_message": None,
                     "resource_type": b.resource_type, "resource_name": b.name,
                     "pattern_type": b.pattern_type, "principal": b.principal,
                     "host": b.host, "operation": b.operation, "permission_type": b.permission}
                r["matching_acls"].append(m)
                if b.source == "config":
                    m["error_code"] = errors.INVALID_REQUEST
                    m["error_message"] = (
                        "rule security.acl[{}] of the config file; remove it there".format(
                            b.index))
                    continue
                key = b.key()
                if key not in doomed:
                    doomed.add(key)
                    ds.append(self._remove(key, m))
        return gatherResults(ds).addCallback(lambda _: out)

    def _remove(self, key, match):
        def removed(_):
            if self.api_bindings.pop(key, None) is not None:
                self._rebuild()
                self.log.info("kafka: ACL deleted: {acl}", acl=key[len(_KEY_PREFIX):])

        def failed(f):
            self.log.failure("kafka: cannot delete an ACL", f)
            match["error_code"] = errors.UNKNOWN_SERVER_ERROR
            match["error_message"] = "cannot delete the ACL"

        return self.meta.delete(ACL_NS, key).addCallbacks(removed, failed)


def _address(ip):
    if ip is None:
        return None
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        return None
