# -*- test-case-name: tests.test_admin -*-
"""
The admin HTTP service (twisted.web): C{/health}, C{/metrics} and
C{/api/connections}.

Whenever a password file or a bearer token is configured, every path but
C{/health} needs credentials: HTTP Basic of a user named in C{[admin]
users} (checked by the shared authenticator, off the event loop and
throttled as every login), or C{Authorization: Bearer TOKEN}. A request
without them gets 401 with C{WWW-Authenticate}; each refusal is logged and
counted in C{robustmq_admin_requests_refused_total}.
"""

import base64
import binascii
import hmac
import json

from twisted.internet.defer import succeed
from twisted.logger import Logger
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET, Site

from robustmq.network.service import GuardedFactory, ListeningService


def _json(request, code, body):
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, sort_keys=True).encode("utf-8") + b"\n"


class HealthResource(Resource):
    isLeaf = True

    def __init__(self, params):
        Resource.__init__(self)
        self.params = params

    def render_GET(self, request):
        status = self.params.status()
        body = {"status": status, "listeners": self.params.node.listeners()}
        return _json(request, 200 if status == "ok" else 503, body)


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, params):
        Resource.__init__(self)
        self.params = params

    def render_GET(self, request):
        body, content_type = self.params.metrics.render()
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return body


class ConnectionsResource(Resource):
    isLeaf = True

    def __init__(self, params):
        Resource.__init__(self)
        self.params = params

    def render_GET(self, request):
        protocol = request.args.get(b"protocol", [None])[0]
        if protocol is not None:
            protocol = protocol.decode("utf-8", "replace")
        conns = self.params.connections.connections(protocol)
        return _json(request, 200, {"connections": [c.as_dict() for c in conns]})


def read_token(config):
    """
    The bearer token of C{[admin]} (C{token}, or the content of
    C{token_file} without surrounding white space), or L{None}.
    """
    if config is None:
        return None
    token = config.token
    if not token and config.token_file:
        with open(config.token_file, encoding="utf-8") as f:
            token = f.read().strip()
    return token or None


class AdminGuard:
    """
    Decides whether a request may see the admin paths other than C{/health}.

    @ivar required: credentials are needed (a password file or a token is
        configured).
    """

    log = Logger()

    def __init__(self, params):
        config = params.config
        security = params.security
        self.authenticator = params.authenticator
        token = read_token(config)
        self.token = token.encode("utf-8") if token else None
        self.users = frozenset(config.users) if config is not None else frozenset()
        password_file = security.password_file if security is not None else ""
        self.basic = bool(password_file)
        self.required = bool(password_file or self.token)
        self.refused = params.metrics.counter(
            "admin_requests_refused", "Admin HTTP requests refused for want of valid"
            " credentials", ("reason",))
        challenges = []
        if self.basic:
            challenges.append(b'Basic realm="robustmq admin", charset="UTF-8"')
        if self.token:
            challenges.append(b'Bearer realm="robustmq admin"')
        self.challenges = challenges
        if self.required and not self.users and not self.token:
            self.log.warn(
                "admin: a password file is configured but no [admin] users nor token:"
                " only /health is served")

    def check(self, request):
        """
        A Deferred firing with L{None} when the request may go on, else with
        the reason of the refusal.
        """
        header = request.getHeader(b"authorization")
        if not header:
            return succeed("no credentials")
        scheme, _, value = header.strip().partition(b" ")
        scheme = scheme.lower()
        value = value.strip()
        host = request.getClientAddress()
        host = getattr(host, "host", None)
        if scheme == b"bearer" and self.token:
            if hmac.compare_digest(value, self.token):
                return succeed(None)
            # As a failed login: counted and slowed down per address.
            self.authenticator.login_failed("(admin token)", host)
            return self.authenticator.after_login_delay(
                "(admin token)", host, "bad bearer token")
        if scheme == b"basic" and self.basic:
            try:
                user, sep, password = base64.b64decode(value, validate=True).partition(b":")
                user = user.decode("utf-8")
            except (binascii.Error, ValueError):
                return succeed("malformed basic credentials")
            if not sep:
                return succeed("malformed basic credentials")
            # Every user's password is checked, so the answer does not tell
            # which users exist or may administer.
            d = self.authenticator.authenticate(user, password, host)

            def checked(ok):
                if not ok:
                    return "bad user name or password"
                if user not in self.users:
                    return "user {!r} is not in [admin] users".format(user)
                return None

            return d.addCallback(checked)
        return succeed("unsupported authorization scheme")

    def refuse(self, request, why):
        reason = "no_credentials" if why == "no credentials" else "bad_credentials"
        self.refused.labels(reason).inc()
        self.log.warn(
            "admin {peer}: {method} {path} refused: {why}",
            peer=getattr(request.getClientAddress(), "host", None),
            method=request.method.decode("ascii", "replace"),
            path=request.uri.decode("ascii", "replace"), why=why)
        for challenge in self.challenges:
            request.responseHeaders.addRawHeader(b"www-authenticate", challenge)
        return _json(request, 401, {"error": "unauthorized"})


class _Checked(Resource):
    """
    The resource of a guarded path, once the guard has decided.
    """

    isLeaf = True

    def __init__(self, guard, inner):
        Resource.__init__(self)
        self.guard = guard
        self.inner = inner

    def render(self, request):
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def decided(why):
            if gone:
                return
            if why is not None:
                request.write(self.guard.refuse(request, why))
                request.finish()
                return
            request.render(getChildForRequest(self.inner, request))

        def failed(failure):
            self.guard.log.failure("admin: checking credentials failed", failure)
            if not gone:
                request.processingFailed(failure)

        self.guard.check(request).addCallback(decided).addErrback(failed)
        return NOT_DONE_YET


class AdminRoot(Resource):
    """
    C{/health} for everyone; the other paths behind the L{AdminGuard}.
    """

    def __init__(self, params):
        Resource.__init__(self)
        self.guard = AdminGuard(params)
        self.health = HealthResource(params)
        self.inner = Resource()
        self.inner.putChild(b"metrics", MetricsResource(params))
        api = Resource()
        api.putChild(b"connections", ConnectionsResource(params))
        self.inner.putChild(b"api", api)

    def getChildWithDefault(self, path, request):
        if path == b"health":
            return self.health
        if not self.guard.required:
            return self.inner.getChildWithDefault(path, request)
        # The inner tree is walked again from the top once allowed.
        request.postpath.insert(0, request.prepath.pop())
        return _Checked(self.guard, self.inner)


def build_site(params):
    root = AdminRoot(params)
    site = Site(root)
    site.noisy = False
    site.displayTracebacks = False
    return site


class AdminService(ListeningService):
    """
    One HTTP listener per endpoint string of C{[admin] listeners}.
    """

    protocol_name = "admin"

    def __init__(self, params):
        ListeningService.__init__(self, params.reactor, params.node)
        self.params = params
        self.site = build_site(params)
        for i, endpoint in enumerate(params.config.listeners):
            self.add_listener(
                endpoint, GuardedFactory(self.site, params.connections, params.metrics, "admin"),
                "admin.listeners[{}]".format(i),
            )
