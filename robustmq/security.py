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
import os

from twisted.logger import Logger
from zope.interface import implementer

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
    C{True} when C{password} matches an encoded hash (C{$7$} or C{$6$}).
    """
    parts = encoded.split("$")
    pw = password.encode("utf-8")
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


@implementer(IAuthenticator)
class Authenticator:
    """
    @param users: C{{user: encoded_hash or [encoded_hash, ...]}}.
    """

    log = Logger()

    def __init__(self, users, allow_anonymous=True, cache_size=10000):
        self._users = {
            u: [h] if isinstance(h, str) else list(h) for u, h in users.items()
        }
        self.allow_anonymous = allow_anonymous
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
        self._cache = {}
        self._cache_size = cache_size

    @classmethod
    def from_config(cls, security):
        users = {}
        if security.password_file:
            with open(security.password_file, encoding="utf-8") as f:
                users = parse_password_file(f.read(), security.password_file)
        return cls(users, security.allow_anonymous)

    def user_exists(self, username):
        return username in self._users

    def authenticate(self, username, password, peer_host=None):
        hashes = self._users.get(username)
        if hashes is None or password is None:
            return False
        if isinstance(password, bytes):
            try:
                password = password.decode("utf-8")
            except UnicodeDecodeError:
                return False
        key = (username, password)
        if key in self._cache:
            return True
        if not any(verify_password(password, encoded) for encoded in hashes):
            return False
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[key] = True
        return True


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


class _Rule:
    __slots__ = ("allow", "actions", "topic", "user", "client_id", "network", "placeholders")

    def __init__(self, rule):
        self.allow = rule.permission == "allow"
        self.actions = ("publish", "subscribe") if rule.action == "all" else (rule.action,)
        self.topic = rule.topic
        self.user = rule.user
        self.client_id = rule.client_id
        self.network = ipaddress.ip_network(rule.ip, strict=False) if rule.ip else None
        self.placeholders = "%u" in rule.topic or "%c" in rule.topic


@implementer(IAuthorizer)
class Authorizer:
    """
    First matching rule wins; C{default} (C{"allow"} or C{"deny"}) decides the rest.
    """

    def __init__(self, rules, default="allow"):
        self._rules = [_Rule(r) for r in rules]
        self.default_allow = default == "allow"

    @classmethod
    def from_config(cls, security):
        return cls(security.acl, security.acl_default)

    def check(self, action, topic, user=None, client_id=None, ip=None):
        if not self._rules:
            return self.default_allow
        address = None
        for rule in self._rules:
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
                if ("%u" in pattern and user is None) or ("%c" in pattern and client_id is None):
                    continue
                pattern = pattern.replace("%u", user or "").replace("%c", client_id or "")
            if action == "subscribe":
                hit = filter_covers(pattern, topic)
            else:
                hit = topic_matches(pattern, topic)
            if hit:
                return rule.allow
        return self.default_allow


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
