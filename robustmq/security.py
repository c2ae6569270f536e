# -*- test-case-name: tests.test_security -*-
"""
Authentication and authorization shared by all protocols.

Users come from a password file in Mosquitto's format (C{user:$7$...} lines
written by C{mosquitto_passwd}, or by L{hash_password}), so an existing
Mosquitto password file works unchanged for PLAIN logins. SCRAM logins
(Kafka) need C{$scram-sha-256$}/C{$scram-sha-512$} lines holding RFC 5802's
StoredKey and ServerKey, which C{python -m robustmq.security passwd} writes
next to the C{$7$} line, each with its own salt. ACL rules come from the
C{[[security.acl]]} tables of the config.
"""

import base64
import hashlib
import hmac
import ipaddress
import math
import os
from collections import OrderedDict

from twisted.application.service import Service
from twisted.internet.defer import DeferredLock, maybeDeferred, succeed
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from robustmq.config import MQTT_ACL_ACTIONS
from robustmq.interfaces import IAuthenticator, IAuthorizer

PBKDF2_ITERATIONS = 20000
SALT_BYTES = 12


class PasswordFileError(Exception):
    """
    A line of the password file cannot be used.
    """


def hash_password(password, iterations=PBKDF2_ITERATIONS, salt=None):
    """
    Hash C{password} as Mosquitto's C{$7$} (PBKDF2-HMAC-SHA512) format.
    """
    if salt is None:
        salt = os.urandom(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return "$7${}${}${}".format(
        iterations, base64.b64encode(salt).decode("ascii"), base64.b64encode(digest).decode("ascii")
    )


def verify_password(password, encoded):
    """
    C{True} when C{password} (str or bytes) matches an encoded hash
    (C{$7$}, C{$6$} or a SCRAM line).
    """
    parts = encoded.split("$")
    pw = password if isinstance(password, bytes) else password.encode("utf-8")
    try:
        if len(parts) == 6 and parts[1] in SCRAM_HASHES:
            mechanism = SCRAM_HASHES[parts[1]]
            salt = base64.b64decode(parts[3], validate=True)
            want = base64.b64decode(parts[4], validate=True)
            got = scram_keys(pw, salt, int(parts[2]), mechanism)[0]
        elif len(parts) == 5 and parts[1] == "7":
            iterations = int(parts[2])
            salt = base64.b64decode(parts[3], validate=True)
            want = base64.b64decode(parts[4], validate=True)
            got = hashlib.pbkdf2_hmac("sha512", pw, salt, iterations)
        elif len(parts) == 4 and parts[1] == "6":
            salt = base64.b64decode(parts[2], validate=True)
            want = base64.b64decode(parts[3], validate=True)
            got = hashlib.sha512(pw + salt).digest()
        else:
            return False
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


SCRAM_HASHES = {"scram-sha-256": "SCRAM-SHA-256", "scram-sha-512": "SCRAM-SHA-512"}
_HASH_OF = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}


def scram_keys(password, salt, iterations, mechanism):
    """
    C{(stored_key, server_key)} of RFC 5802 for C{password} (bytes).
    """
    h = _HASH_OF[mechanism]
    salted = hashlib.pbkdf2_hmac(h().name, password, salt, iterations)
    return _keys_from_salted(salted, h)


def scram_entry_from_salted(salted_password, salt, iterations, mechanism):
    """
    The password-file hash (as L{scram_entry}) of SCRAM credentials given as
    RFC 5802's SaltedPassword, as Kafka's AlterUserScramCredentials sends
    them: only StoredKey and ServerKey are kept.
    """
    stored, server = _keys_from_salted(salted_password, _HASH_OF[mechanism])
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return "${}${}${}${}${}".format(mechanism.lower(), iterations, b64(salt), b64(stored), b64(server))


def _keys_from_salted(salted, h):
    client_key = hmac.new(salted, b"Client Key", h).digest()
    return h(client_key).digest(), hmac.new(salted, b"Server Key", h).digest()


def scram_entry(password, mechanism="SCRAM-SHA-256", iterations=4096, salt=None):
    """
    A password-file hash holding the SCRAM credentials of C{password}:
    C{$scram-sha-256$ITERATIONS$SALT$STORED_KEY$SERVER_KEY} (base64), for
    Kafka clients using SASL SCRAM.
    """
    if salt is None:
        salt = os.urandom(SALT_BYTES)
    stored, server = scram_keys(password.encode("utf-8"), salt, iterations, mechanism)
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return "${}${}${}${}${}".format(mechanism.lower(), iterations, b64(salt), b64(stored), b64(server))


def _well_formed(encoded):
    parts = encoded.split("$")
    return (
        (len(parts) == 5 and parts[1] == "7" and parts[2].isdigit())
        or (len(parts) == 4 and parts[1] == "6")
        or (len(parts) == 6 and parts[1] in SCRAM_HASHES and parts[2].isdigit())
    )


def parse_password_file(text, source="<password file>"):
    """
    C{{user: [encoded_hash, ...]}} from the text of a password file. A user
    may have several lines: a C{$7$} (or C{$6$}) hash as Mosquitto writes
    it, and C{$scram-sha-256$}/C{$scram-sha-512$} SCRAM credentials.

    @raise PasswordFileError: naming every bad line.
    """
    users = {}
    problems = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        if not (sep and user and _well_formed(encoded)):
            problems.append(
                "{}:{}: not 'user:$7$...', 'user:$6$...' or 'user:$scram-sha-256$...'".format(
                    source, lineno)
            )
            continue
        users.setdefault(user, []).append(encoded)
    if problems:
        raise PasswordFileError("; ".join(problems))
    return users


#: What an unknown user's password is checked against, so that refusing an
#: unknown user costs the same work as refusing a known one (a C{$7$} hash
#: with the default iteration count; its digest matches no password).
_UNKNOWN_USER = "$7${}${}${}".format(
    PBKDF2_ITERATIONS, base64.b64encode(bytes(SALT_BYTES)).decode("ascii"),
    base64.b64encode(bytes(64)).decode("ascii"))


def _plain_verifier(hashes):
    """
    The one hash of a user that PLAIN passwords are checked against: the
    C{$7$} (or C{$6$}) line, else the first SCRAM line.
    """
    for kind in ("7", "6"):
        for encoded in hashes:
            if encoded.split("$")[1:2] == [kind]:
                return encoded
    return hashes[0] if hashes else None


class LoginThrottle:
    """
    Failed logins per user name and per client address. Each key's count
    leaks at C{per_minute} a minute; while a key holds C{per_minute} failures
    or more not yet leaked away, each new attempt of that user or from that
    address waits before it is checked: 1 s, doubling with each further
    failure, at most C{max_delay_s}.

    @param clock: a callable returning the time in seconds.
    @param max_keys: keys remembered at most (the least recently failed are
        forgotten first).
    """

    def __init__(self, clock, per_minute=10, max_delay_s=10.0, max_keys=100000):
        self.clock = clock
        self.per_minute = per_minute
        self.max_delay_s = max_delay_s
        self.max_keys = max_keys
        self._counts = OrderedDict()

    def _count(self, key, now):
        entry = self._counts.get(key)
        if entry is None:
            return 0.0
        count, then = entry
        return max(0.0, count - (now - then) * self.per_minute / 60.0)

    def delay(self, user, host):
        """
        Seconds the next attempt of C{user} from C{host} waits.
        """
        now = self.clock()
        count = max(self._count(("user", user), now), self._count(("host", host), now))
        # Failures not yet leaked away, a partly leaked one counting whole.
        excess = math.ceil(count - 1e-9) - self.per_minute
        if excess < 0:
            return 0.0
        return min(self.max_delay_s, 2.0 ** min(excess, 64))

    def failed(self, user, host):
        """
        Count a failed login of C{user} from C{host}.
        """
        now = self.clock()
        counts = self._counts
        for key in (("user", user), ("host", host)):
            counts[key] = (self._count(key, now) + 1, now)
            counts.move_to_end(key)
        while len(counts) > self.max_keys:
            counts.popitem(last=False)


@implementer(IAuthenticator)
class Authenticator:
    """
    Checks passwords against the users of the password file.

    A password check (PBKDF2, ~10 ms) runs in a thread pool of C{threads}
    threads (L{start} and L{stop} it with the service; with C{threads=0} it
    runs in the caller's thread, for tests). Successes are remembered by a
    keyed hash of the credentials (never the password itself) so a
    reconnecting client costs nothing; failures are slowed down per user
    and per address by a L{LoginThrottle}; an unknown user's password is
    checked as a known user's is, so the answer's timing does not tell
    whether a user exists.

    @param users: C{{user: encoded_hash or [encoded_hash, ...]}}.
    @param reactor: schedules the delays and the thread pool's results;
        L{None} for no delays (tests).
    @param max_pending: password checks waiting for the pool at most; beyond
        them a login is refused at once.
    @param metrics: an L{robustmq.interfaces.IMetrics}, or L{None}.
    """

    log = Logger()

    def __init__(self, users, allow_anonymous=True, cache_size=10000, reactor=None,
                 threads=0, max_failures_per_minute=10, max_delay_s=10.0,
                 max_pending=1000, metrics=None):
        self._users = {
            u: [h] if isinstance(h, str) else list(h) for u, h in users.items()
        }
        self.allow_anonymous = allow_anonymous
        self._plain = {u: _plain_verifier(h) for u, h in self._users.items()}
        self._scram = {}
        old = []
        for user, hashes in self._users.items():
            scram = _scram_of(user, hashes, self.log)
            self._scram.update(scram)
            if len(scram) < len(SCRAM_HASHES):
                old.append(user)
        if old:
            self.log.warn(
                "password file: {users} without SCRAM-SHA-256 and SCRAM-SHA-512 credentials"
                " (an older or Mosquitto-format entry): PLAIN logins work, SCRAM does not;"
                " re-run 'python -m robustmq.security passwd FILE USER' for each",
                users=", ".join(sorted(old)))
        self.reactor = reactor
        self._secret = os.urandom(32)
        self._cache = OrderedDict()
        self._cache_size = cache_size
        #: Bumped by L{update_users}: a check begun before it is not
        #: remembered.
        self._generation = 0
        #: The password file (L{from_config}), or L{None}.
        self.password_file = None
        #: Held while the password file is rewritten (one rewrite at a time).
        self.file_lock = DeferredLock()
        self.threads = threads
        self.pool = None
        if threads:
            self.pool = ThreadPool(1, threads, name="robustmq-auth")
        self.max_pending = max_pending
        self.pending = 0
        self._overload_logged = None
        clock = reactor.seconds if reactor is not None else (lambda: 0.0)
        self.throttle = LoginThrottle(clock, max_failures_per_minute, max_delay_s)
        self._counters = None
        if metrics is not None:
            self._counters = {
                "failed": metrics.counter(
                    "auth_failures", "Logins refused: unknown user or wrong password"),
                "delayed": metrics.counter(
                    "auth_delayed", "Logins delayed after repeated failures of the user"
                    " or the address"),
                "overloaded": metrics.counter(
                    "auth_overloaded", "Logins refused because too many password checks"
                    " were waiting"),
            }

    @classmethod
    def from_config(cls, security, reactor=None, metrics=None):
        users = {}
        if security.password_file:
            with open(security.password_file, encoding="utf-8") as f:
                users = parse_password_file(f.read(), security.password_file)
        authenticator = cls(
            users, security.allow_anonymous, reactor=reactor, threads=security.auth_threads,
            max_failures_per_minute=security.max_auth_failures_per_minute,
            max_delay_s=security.auth_failure_max_delay_s,
            max_pending=security.auth_max_pending, metrics=metrics,
        )
        authenticator.password_file = security.password_file or None
        return authenticator

    def start(self):
        """
        Start the password-checking threads.
        """
        if self.pool is not None and not self.pool.started:
            self.pool.start()

    def stop(self):
        """
        Stop the password-checking threads (waits for a check in progress).
        """
        if self.pool is not None and self.pool.started:
            self.pool.stop()

    def _count(self, name):
        if self._counters is not None:
            self._counters[name].inc()

    def user_exists(self, username):
        return username in self._users

    def _cache_key(self, username, password):
        return hmac.new(self._secret, username.encode("utf-8") + b"\x00" + password,
                        hashlib.sha256).digest()

    def authenticate(self, username, password, peer_host=None):
        """
        Check a user name and password (str or bytes).

        @return: a Deferred firing with C{True} or C{False}; already fired
            for a remembered success.
        """
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        if username is None or password is None:
            self.login_failed(username, peer_host)
            return succeed(False)
        if isinstance(password, str):
            password = password.encode("utf-8")
        key = self._cache_key(username, password)
        if key in self._cache:
            self._cache.move_to_end(key)
            return succeed(True)
        if self.pending >= self.max_pending:
            self._count("overloaded")
            now = self.throttle.clock()
            if self._overload_logged is None or now - self._overload_logged >= 10:
                self._overload_logged = now
                self.log.warn(
                    "{count} password checks waiting: logins refused until fewer wait"
                    " (security.auth_max_pending)", count=self.pending)
            return succeed(False)
        self.pending += 1
        generation = self._generation
        delay = self.throttle.delay(username, peer_host)
        if delay and self.reactor is not None:
            self._count("delayed")
            d = deferLater(self.reactor, delay, self._check, username, password)
        else:
            d = self._check(username, password)

        def done(ok):
            self.pending -= 1
            if ok is True and generation == self._generation:
                self._cache[key] = username
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            else:
                self.login_failed(username, peer_host)
            return ok is True

        return d.addBoth(done)

    def _check(self, username, password):
        verifier = self._plain.get(username)
        known = verifier is not None
        if not known:
            verifier = _UNKNOWN_USER
        if self.pool is None:
            d = maybeDeferred(verify_password, password, verifier)
        else:
            d = deferToThreadPool(self.reactor, self.pool, verify_password, password, verifier)
        return d.addCallback(lambda ok: bool(ok) and known)

    def login_failed(self, username, peer_host):
        """
        Count a failed login (also for mechanisms checked elsewhere, as SCRAM).
        """
        self._count("failed")
        self.throttle.failed(username, peer_host)

    def after_login_delay(self, username, peer_host, result):
        """
        A Deferred firing with C{result} once the delay that repeated
        failures of C{username} or from C{peer_host} call for has passed.
        """
        delay = self.throttle.delay(username, peer_host)
        if not delay or self.reactor is None:
            return succeed(result)
        self._count("delayed")
        return deferLater(self.reactor, delay, lambda: result)

    def in_thread(self, f, *args):
        """
        Run C{f(*args)} in the password-checking threads (in this thread
        without them): a Deferred of its result.
        """
        if self.pool is None:
            return maybeDeferred(f, *args)
        return deferToThreadPool(self.reactor, self.pool, f, *args)

    def update_users(self, changed):
        """
        Replace the password-file lines of some users, for the logins that
        follow (a SCRAM exchange already begun keeps what it read), and
        forget the remembered successes of those users.

        @param changed: C{{user: [encoded_hash, ...]}}; an empty list removes
            the user.
        """
        for user, hashes in changed.items():
            for mechanism in SCRAM_HASHES.values():
                self._scram.pop((user, mechanism), None)
            if hashes:
                self._users[user] = list(hashes)
                self._plain[user] = _plain_verifier(hashes)
                self._scram.update(_scram_of(user, hashes, self.log))
            else:
                self._users.pop(user, None)
                self._plain.pop(user, None)
        self._generation += 1
        cache = self._cache
        for key in [k for k, user in cache.items() if user in changed]:
            del cache[key]

    def scram_iterations(self):
        """
        C{{user: {mechanism: iterations}}} of the SCRAM credentials served.
        """
        out = {}
        for (user, mechanism), creds in self._scram.items():
            out.setdefault(user, {})[mechanism] = creds[1]
        return out

    def fake_scram_credentials(self, username, mechanism):
        """
        SCRAM credentials for a user without any: the same for each asking
        (a salt derived from the user name with a secret of this process),
        matching no password, so the exchange fails at its last step like
        a wrong password's (RFC 5802, section 5.1).
        """
        h = _HASH_OF[mechanism]
        seed = hmac.new(self._secret, mechanism.encode() + b"\x00" + username.encode(
            "utf-8", "replace"), hashlib.sha256).digest()
        salt = seed[:SALT_BYTES]
        return salt, 4096, h(seed + b"stored").digest(), h(seed + b"server").digest()

    def scram_credentials(self, username, mechanism):
        """
        C{(salt, iterations, stored_key, server_key)} for SASL SCRAM
        (C{"SCRAM-SHA-256"} or C{"SCRAM-SHA-512"}), or L{None}.

        Only C{$scram-sha-256$}/C{$scram-sha-512$} lines (RFC 5802 StoredKey
        and ServerKey) are served. A C{$7$} line never is: its digest is
        PBKDF2-HMAC-SHA512, SCRAM-SHA-512's salted password, so serving
        SCRAM from it would let whoever reads the file log in.
        """
        return self._scram.get((username, mechanism))


def _scram_of(user, hashes, log):
    """
    C{{(user, mechanism): (salt, iterations, stored_key, server_key)}} of
    the SCRAM lines of one user, leaving out a SCRAM-SHA-512 line whose salt
    and iteration count are those of a C{$7$} line of the user (the C{$7$}
    digest would then be its salted password).
    """
    pbkdf2 = set()
    for encoded in hashes:
        parts = encoded.split("$")
        if len(parts) == 5 and parts[1] == "7":
            pbkdf2.add((parts[2], parts[3]))
    out = {}
    for encoded in hashes:
        parts = encoded.split("$")
        if len(parts) != 6 or parts[1] not in SCRAM_HASHES:
            continue
        mechanism = SCRAM_HASHES[parts[1]]
        if mechanism == "SCRAM-SHA-512" and (parts[2], parts[3]) in pbkdf2:
            log.warn(
                "password file: user {user}: the SCRAM-SHA-512 line shares its salt with"
                " the $7$ line, so the $7$ line would log in: SCRAM-SHA-512 disabled for"
                " this user; re-run 'python -m robustmq.security passwd FILE {user}'",
                user=user)
            continue
        try:
            creds = (
                base64.b64decode(parts[3], validate=True), int(parts[2]),
                base64.b64decode(parts[4], validate=True),
                base64.b64decode(parts[5], validate=True),
            )
        except ValueError:
            continue
        out.setdefault((user, mechanism), creds)
    return out


class AuthenticatorService(Service):
    """
    Starts and stops the password-checking threads of an L{Authenticator}.
    """

    def __init__(self, authenticator):
        self.authenticator = authenticator

    def startService(self):
        Service.startService(self)
        self.authenticator.start()

    def stopService(self):
        Service.stopService(self)
        self.authenticator.stop()


def topic_matches(topic_filter, topic):
    """
    C{True} when an MQTT topic name matches a topic filter (C{+}, C{#});
    wildcards at the first level do not match C{$}-topics.
    """
    if topic_filter == topic:
        return True
    f = topic_filter.split("/")
    t = topic.split("/")
    if t[0].startswith("$") and f[0] in ("+", "#"):
        return False
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(f) == len(t)


def filter_covers(rule_filter, requested):
    """
    C{True} when every topic matched by the filter C{requested} is matched by
    C{rule_filter} (how a subscription is checked against an ACL rule).
    """
    f = rule_filter.split("/")
    r = requested.split("/")
    if r[0].startswith("$") and f[0] in ("+", "#"):
        return False
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(r):
            return False
        if r[i] == "#":
            return False
        if level != "+" and (level != r[i] or r[i] == "+"):
            return False
    return len(f) == len(r)


def _widens(value):
    """
    Whether a user name or client id put into a topic filter would add
    levels or wildcards to it.
    """
    return "+" in value or "#" in value or "/" in value


class _Rule:
    __slots__ = ("allow", "actions", "topic", "user", "client_id", "network", "placeholders",
                 "has_user", "has_client_id")

    def __init__(self, rule):
        self.allow = rule.permission == "allow"
        self.actions = ("publish", "subscribe") if rule.action == "all" else (rule.action,)
        self.topic = rule.topic
        self.user = rule.user
        self.client_id = rule.client_id
        self.network = ipaddress.ip_network(rule.ip, strict=False) if rule.ip else None
        self.has_user = "%u" in rule.topic
        self.has_client_id = "%c" in rule.topic
        self.placeholders = self.has_user or self.has_client_id


@implementer(IAuthorizer)
class Authorizer:
    """
    First matching rule wins; C{default} (C{"allow"} or C{"deny"}) decides the rest.

    A rule with C{%u} or C{%c} does not match a client whose user name or
    client id holds C{+}, C{#} or C{/}: put into the topic filter, such a
    value would widen the rule (a client id C{#} turning C{clients/%c} into
    C{clients/#}). Each such case is logged once per rule, user and client
    id.
    """

    log = Logger()

    #: (rule, user, client id) already logged for a widening value; cleared
    #: when it reaches this size.
    max_logged = 10000
    _logged = None

    def __init__(self, rules, default="allow"):
        self._rules = [_Rule(r) for r in rules if r.action in MQTT_ACL_ACTIONS]
        self.default_allow = default == "allow"
        #: The Kafka rules, evaluated by L{robustmq.kafka.acl.KafkaAcl}.
        self.kafka_rules = tuple(r for r in rules if r.action not in MQTT_ACL_ACTIONS)

    @classmethod
    def from_config(cls, security):
        return cls(security.acl, security.acl_default)

    def check(self, action, topic, user=None, client_id=None, ip=None):
        if not self._rules:
            return self.default_allow
        address = None
        for index, rule in enumerate(self._rules):
            if action not in rule.actions:
                continue
            if rule.user is not None and rule.user != user:
                continue
            if rule.client_id is not None and rule.client_id != client_id:
                continue
            if rule.network is not None:
                if address is None:
                    try:
                        address = ipaddress.ip_address(ip or "")
                    except ValueError:
                        continue
                if address not in rule.network:
                    continue
            pattern = rule.topic
            if rule.placeholders:
                if (rule.has_user and user is None) or (rule.has_client_id and client_id is None):
                    continue
                if (rule.has_user and _widens(user)) or (
                        rule.has_client_id and _widens(client_id)):
                    self._widening(index, rule, user, client_id)
                    continue
                pattern = pattern.replace("%u", user or "").replace("%c", client_id or "")
            if action == "subscribe":
                hit = filter_covers(pattern, topic)
            else:
                hit = topic_matches(pattern, topic)
            if hit:
                return rule.allow
        return self.default_allow

    def _widening(self, index, rule, user, client_id):
        key = (index, user, client_id)
        logged = self._logged
        if logged is None:
            logged = self._logged = set()
        elif key in logged:
            return
        if len(logged) >= self.max_logged:
            logged.clear()
        logged.add(key)
        self.log.warn(
            "acl: rule {index} ({topic!r}) skipped for user {user!r} client id {client_id!r}:"
            " a user name or client id holding '+', '#' or '/' would widen it",
            index=index, topic=rule.topic, user=user, client_id=client_id)


def main(argv=None):
    """
    C{python -m robustmq.security passwd FILE USER [PASSWORD]}: add or
    replace a user in a password file: a C{$7$} line for PLAIN logins (as
    Mosquitto writes it) and C{$scram-sha-256$} and C{$scram-sha-512$} lines
    (StoredKey and ServerKey) for SCRAM, each with its own salt. The file is
    written with mode 0600.
    """
    import getpass
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (3, 4) or args[0] != "passwd":
        sys.stderr.write("usage: python -m robustmq.security passwd FILE USER [PASSWORD]\n")
        return 2
    path, user = args[1], args[2]
    if ":" in user or not user:
        sys.stderr.write("a user name may not be empty or hold ':'\n")
        return 2
    password = args[3] if len(args) == 4 else getpass.getpass("password for {}: ".format(user))
    lines = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            lines = [l for l in f.read().splitlines() if l.partition(":")[0] != user]
    # Each line has a salt of its own: the $7$ digest (PBKDF2-HMAC-SHA512)
    # must never be the salted password of the SCRAM-SHA-512 line.
    lines.append("{}:{}".format(user, hash_password(password)))
    lines.append("{}:{}".format(user, scram_entry(password, "SCRAM-SHA-256")))
    lines.append("{}:{}".format(user, scram_entry(password, "SCRAM-SHA-512")))
    write_private(path, "\n".join(lines) + "\n")
    return 0


def write_private(path, text):
    """
    Replace the file C{path} by C{text}, readable by its owner only (mode
    0600, whatever the umask and the old file's mode), atomically.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, ".{}.{}.tmp".format(os.path.basename(path), os.getpid()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            fd = None
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd is not None:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


if __name__ == "__main__":
    raise SystemExit(main())
