# -*- test-case-name: tests.test_transports -*-
"""
TLS listeners, with optional verification of client certificates.

The endpoint string is Twisted's C{ssl:} with one more option::

    mtls:PORT:privateKey=KEY.pem[:certKey=CERT.pem][:caCerts=CA.pem]
        [:extraCertChain=CHAIN.pem][:interface=ADDR][:backlog=N]

Without C{caCerts} it behaves as C{ssl:}.  With C{caCerts}, every client
must present a certificate that chains to one of the authorities in that PEM
file; a client without one, or with one from another authority, fails the
TLS handshake.

The prefix is C{mtls} and not C{tls} because Twisted itself registers a
C{tls:} server endpoint plugin (a directory of PEM files selected by SNI),
and Twisted's own plugins are always consulted before ours.

This module also holds the small option-parsing helpers that the WebSocket
endpoint parsers share, and L{server_tls_options}, which builds the
C{CertificateOptions} for both C{mtls:} and C{wss:}.
"""

import re

from OpenSSL import crypto
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    trustRootFromCertificates,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----",
    re.DOTALL,
)

#: Options every TLS server endpoint string accepts besides the port.
TLS_OPTIONS = frozenset(
    {"privateKey", "certKey", "caCerts", "extraCertChain", "interface", "backlog"}
)


def check_options(prefix, args, kwargs, allowed):
    """
    Check the pieces of an endpoint string and return its port number.

    @param prefix: the endpoint type, for error messages.
    @param args: the positional arguments after the prefix; exactly one, the
        port, is accepted.
    @param kwargs: the C{name=value} options.
    @param allowed: the option names C{kwargs} may use.
    @return: the port as an L{int}.
    @raise ValueError: with a message naming the endpoint type and what is
        wrong.
    """
    if len(args) != 1:
        if not args:
            raise ValueError(f"{prefix}: missing port (e.g. '{prefix}:8883')")
        raise ValueError(
            f"{prefix}: unexpected positional arguments {list(args[1:])!r}"
            " (options are written name=value)"
        )
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"{prefix}: unknown option(s) {', '.join(unknown)}"
            f" (accepted: {', '.join(sorted(allowed))})"
        )
    return parse_port(prefix, args[0])


def parse_port(prefix, value):
    """
    Parse a TCP port number (0 means any free port).

    @raise ValueError: when C{value} is not an integer in 0..65535.
    """
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{prefix}: invalid port {value!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{prefix}: port {port} out of range 0..65535")
    return port


def parse_backlog(prefix, value):
    """
    Parse a listen backlog.

    @raise ValueError: when C{value} is not a positive integer.
    """
    try:
        backlog = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{prefix}: invalid backlog {value!r}") from None
    if backlog < 1:
        raise ValueError(f"{prefix}: backlog must be at least 1, not {backlog}")
    return backlog


def _read(prefix, option, path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(
            f"{prefix}: cannot read {option} file {path!r}: {e.strerror}"
        ) from None


def load_certificates(path, prefix="mtls", option="caCerts"):
    """
    Load every PEM certificate in a file.

    @param path: the file name.
    @param prefix: the endpoint type, for error messages.
    @param option: the option that named the file, for error messages.
    @return: a non-empty L{list} of L{Certificate}.
    @raise ValueError: when the file cannot be read, holds no PEM
        certificate, or holds one that does not parse.
    """
    data = _read(prefix, option, path)
    blocks = _PEM_CERTIFICATE.findall(data)
    if not blocks:
        raise ValueError(
            f"{prefix}: {option} file {path!r} contains no PEM certificate"
        )
    try:
        return [Certificate.loadPEM(block) for block in blocks]
    except crypto.Error as e:
        raise ValueError(
            f"{prefix}: {option} file {path!r} has an invalid certificate: {e}"
        ) from None


def server_tls_options(
    private_key, cert_key=None, ca_certs=None, extra_cert_chain=None, prefix="mtls"
):
    """
    Build the TLS context options of a server endpoint.

    The OpenSSL context is created here, once, so that a key that does not
    match its certificate is reported now and not at the first connection.

    @param private_key: file name of the PEM private key.
    @param cert_key: file name of the PEM certificate; L{None} means the
        certificate is in C{private_key}, as with Twisted's C{ssl:}.
    @param ca_certs: file name of the PEM authorities that client
        certificates must chain to; L{None} means clients are not asked for
        a certificate.
    @param extra_cert_chain: file name of PEM intermediate certificates sent
        along with the server certificate.
    @param prefix: the endpoint type, for error messages.
    @return: a L{CertificateOptions}.
    @raise ValueError: when a file is missing or invalid, or the key does
        not match the certificate.
    """
    if cert_key is None:
        cert_key = private_key
    cert_pem = _read(prefix, "certKey", cert_key)
    key_pem = _read(prefix, "privateKey", private_key)
    try:
        server = PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    except Exception as e:
        raise ValueError(
            f"{prefix}: cannot load certificate {cert_key!r} with key"
            f" {private_key!r}: {e}"
        ) from None
    kwargs = {}
    if extra_cert_chain is not None:
        chain = load_certificates(extra_cert_chain, prefix, "extraCertChain")
        kwargs["extraCertChain"] = [c.original for c in chain]
    if ca_certs is not None:
        authorities = load_certificates(ca_certs, prefix, "caCerts")
        kwargs["trustRoot"] = trustRootFromCertificates(authorities)
    options = CertificateOptions(
        privateKey=server.privateKey.original,
        certificate=server.original,
        **kwargs,
    )
    try:
        options.getContext()
    except Exception as e:
        raise ValueError(
            f"{prefix}: certificate {cert_key!r} and key {private_key!r}"
            f" cannot be used together: {e}"
        ) from None
    return options


def parse_tls_options(prefix, kwargs):
    """
    The L{CertificateOptions} described by the TLS options of an endpoint
    string (C{privateKey}, C{certKey}, C{caCerts}, C{extraCertChain}).

    @raise ValueError: when C{privateKey} is missing or a file is invalid.
    """
    if not kwargs.get("privateKey"):
        raise ValueError(f"{prefix}: privateKey=FILE.pem is required")
    return server_tls_options(
        kwargs["privateKey"],
        kwargs.get("certKey") or None,
        kwargs.get("caCerts") or None,
        kwargs.get("extraCertChain") or None,
        prefix,
    )


@implementer(IPlugin, IStreamServerEndpointStringParser)
class TLSServerParser:
    """
    Parser of C{mtls:} server endpoint strings: TLS over TCP, with client
    certificates required and verified when C{caCerts} is given.
    """

    prefix = "mtls"

    def parseStreamServer(self, reactor, *args, **kwargs):
        """
        Build the endpoint.

        @return: an L{SSL4ServerEndpoint}.
        @raise ValueError: when the description is invalid.
        """
        port = check_options(self.prefix, args, kwargs, TLS_OPTIONS)
        backlog = parse_backlog(self.prefix, kwargs.get("backlog", "50"))
        options = parse_tls_options(self.prefix, kwargs)
        return SSL4ServerEndpoint(
            reactor,
            port,
            options,
            backlog=backlog,
            interface=kwargs.get("interface", ""),
        )
