# -*- test-case-name: tests.test_transports -*-
"""
Throwaway X.509 material for transport tests.

L{make_test_pki} writes a fresh certificate authority, a server certificate
for C{localhost} / C{127.0.0.1}, a client certificate signed by that
authority and a second, unrelated authority with its own client certificate
(a client the server must refuse) into a directory, as PEM files.  Keys are
elliptic-curve (P-256) so generating them costs almost nothing; nothing is
committed to the repository.
"""

import datetime
import ipaddress
import os

import attr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@attr.s(frozen=True, auto_attribs=True)
class PKIFiles:
    """
    Paths of the PEM files written by L{make_test_pki}.

    @ivar ca_cert: the trusted authority's certificate.
    @ivar server_key: the server's private key.
    @ivar server_cert: the server's certificate (signed by C{ca_cert}).
    @ivar client_key: a client's private key.
    @ivar client_cert: the client's certificate (signed by C{ca_cert}).
    @ivar other_ca_cert: an authority the server does not trust.
    @ivar other_client_key: private key of a client of C{other_ca_cert}.
    @ivar other_client_cert: certificate signed by C{other_ca_cert}.
    """

    directory: str
    ca_cert: str
    server_key: str
    server_cert: str
    client_key: str
    client_cert: str
    other_ca_cert: str
    other_client_key: str
    other_client_cert: str


def _name(common_name):
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "robustmq tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _new_key():
    return ec.generate_private_key(ec.SECP256R1())


def _builder(subject, issuer, public_key, now):
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _make_ca(common_name, now):
    key = _new_key()
    name = _name(common_name)
    cert = (
        _builder(name, name, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_leaf(common_name, ca_key, ca_cert, usage, now, alt_names=None):
    key = _new_key()
    builder = (
        _builder(_name(common_name), ca_cert.subject, key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if alt_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(alt_names), critical=False
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def _write_cert(path, cert):
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path, key):
    with open(path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    os.chmod(path, 0o600)


def make_test_pki(directory):
    """
    Generate the test authorities, keys and certificates into C{directory}
    (created when missing).

    @param directory: a filesystem path, normally from C{TestCase.mktemp()}.
    @return: the L{PKIFiles} naming every file written.
    """
    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, ca_cert = _make_ca("robustmq test CA", now)
    server_key, server_cert = _make_leaf(
        "localhost",
        ca_key,
        ca_cert,
        ExtendedKeyUsageOID.SERVER_AUTH,
        now,
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
    )
    client_key, client_cert = _make_leaf(
        "test-client", ca_key, ca_cert, ExtendedKeyUsageOID.CLIENT_AUTH, now
    )
    other_ca_key, other_ca_cert = _make_ca("untrusted test CA", now)
    other_key, other_cert = _make_leaf(
        "untrusted-client",
        other_ca_key,
        other_ca_cert,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        now,
    )

    def path(name):
        return os.path.join(directory, name)

    pki = PKIFiles(
        directory=directory,
        ca_cert=path("ca.pem"),
        server_key=path("server.key"),
        server_cert=path("server.pem"),
        client_key=path("client.key"),
        client_cert=path("client.pem"),
        other_ca_cert=path("other-ca.pem"),
        other_client_key=path("other-client.key"),
        other_client_cert=path("other-client.pem"),
    )
    _write_cert(pki.ca_cert, ca_cert)
    _write_key(pki.server_key, server_key)
    _write_cert(pki.server_cert, server_cert)
    _write_key(pki.client_key, client_key)
    _write_cert(pki.client_cert, client_cert)
    _write_cert(pki.other_ca_cert, other_ca_cert)
    _write_key(pki.other_client_key, other_key)
    _write_cert(pki.other_client_cert, other_cert)
    return pki
