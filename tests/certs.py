"""
Test helper: a throw-away certificate authority and a server certificate.

Tests of TLS listeners and channels need PEM files a client can verify.
L{makeCertificates} writes a self-signed CA and a server certificate signed
by it, valid for C{localhost} and C{127.0.0.1}, into a directory (usually
C{self.mktemp()}), using C{cryptography}.
"""

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
import ipaddress

__all__ = ["makeCertificates"]


def _name(commonName):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])


def _writePEM(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def makeCertificates(directory):
    """
    Write a CA certificate, a server certificate and its key into
    C{directory} (created if missing) as PEM files.

    The server certificate names C{localhost} and the address C{127.0.0.1}
    in its subjectAltName, so clients may verify either.  Keys are
    elliptic-curve (P-256) to keep generation fast.

    @param directory: a directory path (str).
    @return: C{dict(ca=path, certificate=path, key=path)}: the CA
        certificate, the server certificate and the server's unencrypted
        private key, all PEM.
    """
    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    notBefore = now - datetime.timedelta(days=1)
    notAfter = now + datetime.timedelta(days=30)

    caKey = ec.generate_private_key(ec.SECP256R1())
    caName = _name("aiengine test CA")
    caCert = (
        x509.CertificateBuilder()
        .subject_name(caName)
        .issuer_name(caName)
        .public_key(caKey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notAfter)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
            x509.SubjectKeyIdentifier.from_public_key(caKey.public_key()),
            critical=False,
        )
        .sign(caKey, hashes.SHA256())
    )

    serverKey = ec.generate_private_key(ec.SECP256R1())
    serverCert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(caName)
        .public_key(serverKey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notAfter)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(caKey.public_key()),
            critical=False,
        )
        .sign(caKey, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    paths = dict(
        ca=_writePEM(os.path.join(directory, "ca.pem"), caCert.public_bytes(pem)),
        certificate=_writePEM(
            os.path.join(directory, "server.pem"), serverCert.public_bytes(pem)
        ),
        key=_writePEM(
            os.path.join(directory, "server.key"),
            serverKey.private_bytes(
                pem,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            ),
        ),
    )
    return paths
