# -*- test-case-name: tests.test_security -*-
"""
Authentication and authorization shared by all protocols.

Users come from a password file in Mosquitto's format (C{user:$7$...} lines
written by C{mosquitto_passwd}, or by L{hash_password}), so an existing
Mosquitto password file works unchanged. ACL rules come from the
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
        if len(parts) == 5 and parts[1] == "7":
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


def parse_password_file(text, source="<password file>"):
    """
    C{{user: encoded_hash}} from the text of a password file.

    @raise PasswordFileError: naming every bad line.
    """
    users = {}
    problems = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        parts = encoded.split("$")
        ok = sep and user and (
            (len(parts) == 5 and parts[1] == "7" and parts[2].isdigit())
            or (len(parts) == 4 and parts[1] == "6")
        )
        if not ok:
            problems.append("{}:{}: not 'user:$7$...' or 'user:$6$...'".format(source, lineno))
            continue
        users[user] = encoded
    if problems:
        raise PasswordFileError("; ".join(problems))
    return users


@implementer(IAuthenticator)
class Authenticator:
    """
    @param users: C{{user: encoded_hash}}.
    """

    log = Logger()

    def __init__(self, users, allow_anonymous=True, cache_size=10000):
        self._users = dict(users)
        self.allow_anonymous = allow_anonymous
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
        encoded = self._users.get(username)
        if encoded is None or password is None:
            return False
        if isinstance(password, bytes):
            try:
                password = password.decode("utf-8")
            except UnicodeDecodeError:
                return False
        key = (username, encoded, password)
        if key in self._cache:
            return True
        if not verify_password(password, encoded):
            return False
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[key] = True
        return True


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
