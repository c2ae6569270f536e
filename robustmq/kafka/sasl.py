# -*- test-case-name: tests.test_kafka_sasl -*-
"""
SASL for Kafka clients (SaslHandshake + SaslAuthenticate): PLAIN, and
SCRAM-SHA-256 / SCRAM-SHA-512 (RFC 5802, RFC 7677) against the shared
authenticator.

PLAIN needs only C{authenticate(user, password, peer_host)}, returning a
Deferred. SCRAM needs the stored SCRAM credentials of a user, which the
authenticator gives through C{scram_credentials(user, mechanism)} returning
C{(salt, iterations, stored_key, server_key)} or L{None}; an authenticator
without that method offers PLAIN only. An authenticator may also give
C{fake_scram_credentials(user, mechanism)} (an unknown user then fails at the
last step, as a wrong password does), C{after_login_delay(user, peer_host,
result)} (the first reply waits as long as repeated failures call for) and
C{login_failed(user, peer_host)} (counts a failure).

L{SaslServer.step} returns its result or a Deferred of it.
"""

import base64
import hashlib
import hmac
import os

_SCRAM_HASHES = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}


def mechanisms_of(authenticator):
    """
    The mechanism names offered with C{authenticator}.
    """
    if getattr(authenticator, "scram_credentials", None) is not None:
        return ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
    return ["PLAIN"]


def scram_credentials(password, mechanism, salt=None, iterations=4096):
    """
    C{(salt, iterations, stored_key, server_key)} of a password, as an
    authenticator stores them for SCRAM.
    """
    h = _SCRAM_HASHES[mechanism]
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac(h().name, password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", h).digest()
    server_key = hmac.new(salted, b"Server Key", h).digest()
    return salt, iterations, h(client_key).digest(), server_key


class SaslServer:
    """
    The server side of one SASL exchange.

    L{step} takes each client message and returns C{(done, reply,
    message)}: C{done} is C{True} once authenticated, L{None} while more
    messages are expected, C{False} when authentication failed (C{message}
    says why).

    @ivar user: the authenticated user name.
    """

    user = None

    @staticmethod
    def for_mechanism(name, authenticator, peer_host):
        """
        A server for mechanism C{name}, or L{None} when it is not offered.
        """
        if name not in mechanisms_of(authenticator):
            return None
        if name == "PLAIN":
            return PlainServer(authenticator, peer_host)
        return ScramServer(name, authenticator, peer_host=peer_host)

    def step(self, data):
        raise NotImplementedError()


class PlainServer(SaslServer):
    """
    RFC 4616: C{authzid NUL user NUL password}.
    """

    def __init__(self, authenticator, peer_host):
        self.authenticator = authenticator
        self.peer_host = peer_host

    def step(self, data):
        parts = data.split(b"\x00")
        if len(parts) != 3:
            return False, b"", "malformed PLAIN message"
        authzid, user, password = parts
        try:
            user = user.decode("utf-8")
            authzid = authzid.decode("utf-8")
        except UnicodeDecodeError:
            return False, b"", "user name is not UTF-8"
        if authzid and authzid != user:
            return False, b"", "authorization id differs from the user name"
        d = self.authenticator.authenticate(user, password, self.peer_host)
        return d.addCallback(self._checked, user)

    def _checked(self, ok, user):
        if not ok:
            return False, b"", "Authentication failed: invalid user name or password"
        self.user = user
        return True, b"", None


def _attributes(text):
    out = {}
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ValueError("bad SCRAM attribute {!r}".format(part))
        out[part[0]] = part[2:]
    return out


def _unescape_name(name):
    if "=" in name.replace("=2C", "").replace("=3D", ""):
        raise ValueError("bad escape in a SCRAM user name")
    return name.replace("=2C", ",").replace("=3D", "=")


class ScramServer(SaslServer):
    """
    RFC 5802 SCRAM, without channel binding.
    """

    known = True

    def __init__(self, mechanism, authenticator, nonce=None, peer_host=None):
        self.mechanism = mechanism
        self.peer_host = peer_host
        self.hash = _SCRAM_HASHES[mechanism]
        self.authenticator = authenticator
        self.nonce = nonce or base64.b64encode(os.urandom(18)).decode("ascii")
        self.state = 0

    def step(self, data):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return False, b"", "SCRAM message is not UTF-8"
        try:
            if self.state == 0:
                return self._first(text)
            if self.state == 1:
                return self._final(text)
        except (ValueError, KeyError, TypeError) as e:
            return False, b"", "malformed SCRAM message: {}".format(e)
        return False, b"", "unexpected SCRAM message"

    def _first(self, text):
        gs2, sep, bare = text.partition(",")
        authz, sep2, bare = bare.partition(",")
        if not sep or not sep2 or gs2 not in ("n", "y"):
            raise ValueError("bad GS2 header")
        self.gs2_header = "{},{},".format(gs2, authz)
        attrs = _attributes(bare)
        user = _unescape_name(attrs["n"])
        client_nonce = attrs["r"]
        authenticator = self.authenticator
        creds = authenticator.scram_credentials(user, self.mechanism)
        if creds is None:
            fake = getattr(authenticator, "fake_scram_credentials", None)
            if fake is None:
                return False, b"", "Authentication failed: unknown user or no SCRAM credentials"
            creds = fake(user, self.mechanism)
            self.known = False
        self.salt, self.iterations, self.stored_key, self.server_key = creds
        self.candidate = user
        self.client_first_bare = bare
        self.full_nonce = client_nonce + self.nonce
        self.server_first = "r={},s={},i={}".format(
            self.full_nonce, base64.b64encode(self.salt).decode("ascii"), self.iterations)
        self.state = 1
        result = None, self.server_first.encode("ascii"), None
        delay = getattr(authenticator, "after_login_delay", None)
        return result if delay is None else delay(user, self.peer_host, result)

    def _refused(self, why):
        failed = getattr(self.authenticator, "login_failed", None)
        if failed is not None:
            failed(self.candidate, self.peer_host)
        return False, b"", why

    def _final(self, text):
        self.state = 2
        without_proof, sep, proof_part = text.rpartition(",p=")
        if not sep:
            raise ValueError("no proof")
        attrs = _attributes(without_proof)
        if attrs["r"] != self.full_nonce:
            return False, b"", "SCRAM nonce mismatch"
        if base64.b64decode(attrs["c"]) != self.gs2_header.encode("utf-8"):
            return False, b"", "SCRAM channel binding mismatch"
        proof = base64.b64decode(proof_part)
        auth_message = ",".join((self.client_first_bare, self.server_first, without_proof))
        auth_message = auth_message.encode("utf-8")
        h = self.hash
        signature = hmac.new(self.stored_key, auth_message, h).digest()
        if len(proof) != len(signature):
            return self._refused("Authentication failed: bad SCRAM proof")
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        if not hmac.compare_digest(h(client_key).digest(), self.stored_key) or not self.known:
            return self._refused("Authentication failed: invalid user name or password")
        self.user = self.candidate
        server_signature = hmac.new(self.server_key, auth_message, h).digest()
        return True, b"v=" + base64.b64encode(server_signature), None
