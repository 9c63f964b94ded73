"""TLS for listeners and channels, in one place: PEM files, trust roots, the
options Twisted takes for each side, and why a handshake failed.

Files are read when the engine is built, so that a bad file stops start-up
(and ``--check``) with a :class:`~aiengine.config.ConfigError` naming it.
"""

from __future__ import annotations

import re
from typing import Optional

from aiengine.config import ConfigError

__all__ = ["pemCertificates", "serverTLSOptions", "clientTLSOptions", "verifyResult",
           "describeFailure"]

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def pemCertificates(data: bytes) -> list:
    """The PEM certificate blocks in ``data``, in order."""
    return _PEM_CERTIFICATE.findall(data)


# -- listeners -------------------------------------------------------------------

def serverTLSOptions(listener: str, certificate: str, key: str):
    """``CertificateOptions`` for a TLS listener from two PEM files.

    ``certificate`` holds the server certificate, optionally followed by
    the intermediate certificates of its chain; ``key`` its private key
    (unencrypted).  Raises :class:`~aiengine.config.ConfigError` naming the
    listener and the offending file when one cannot be read, holds no
    usable PEM, or the key does not belong to the certificate.
    """
    from OpenSSL.crypto import FILETYPE_PEM
    from twisted.internet import ssl

    where = f"listener '{listener}'"

    def read(path, prop):
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}", element=where,
                              prop=prop) from None

    certData, keyData = read(certificate, "tls.certificate"), read(key, "tls.key")
    blocks = pemCertificates(certData)
    try:
        if not blocks:
            raise ValueError("no PEM certificate found")
        chain = [ssl.Certificate.loadPEM(block).original for block in blocks]
    except Exception as e:
        raise ConfigError(f"{certificate} is not a usable PEM certificate ({e})",
                          element=where, prop="tls.certificate") from None
    try:
        privateKey = ssl.KeyPair.load(keyData, FILETYPE_PEM).original
    except Exception as e:
        raise ConfigError(f"{key} is not a usable unencrypted PEM private key "
                          f"({_sslError(e)})", element=where, prop="tls.key") from None
    try:
        options = ssl.CertificateOptions(privateKey=privateKey, certificate=chain[0],
                                         extraCertChain=chain[1:])
        # Built now, not at the first connection, so a key that does not
        # match the certificate stops start-up.
        options.getContext()
    except Exception as e:
        raise ConfigError(f"the key {key} does not fit the certificate {certificate} "
                          f"({_sslError(e)})", element=where, prop="tls.key") from None
    return options


def _sslError(e):
    return str(e) or type(e).__name__


# -- channels --------------------------------------------------------------------

def verifyResult(transport) -> Optional[str]:
    """Why OpenSSL rejected the server's certificate, if it did and says so.

    pyOpenSSL has no public call for it, so this reaches into its bindings;
    without them the caller's message simply has less detail.
    """
    try:
        from OpenSSL._util import ffi, lib
        handle = transport.getHandle()  # the TLS layer keeps it while it reports
        code = lib.SSL_get_verify_result(handle._ssl)
        if code == 0:
            return None
        return ffi.string(lib.X509_verify_cert_error_string(code)).decode("ascii", "replace")
    except Exception:
        return None


def _trustRoot(path, config):
    """Every certificate in the PEM file ``path`` as a trust root."""
    from twisted.internet.ssl import Certificate, trustRootFromCertificates
    where = dict(line=config.line, element=f"channel '{config.name}'", prop="tls.ca")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}", **where) from e
    blocks = pemCertificates(data)
    if not blocks:
        raise ConfigError(f"no PEM certificate in {path}", **where)
    try:
        return trustRootFromCertificates([Certificate.loadPEM(b) for b in blocks])
    except Exception as e:
        raise ConfigError(f"bad certificate in {path}: {e}", **where) from e


def clientTLSOptions(config, host):
    """The ``IOpenSSLClientConnectionCreator`` for a ``tls=true`` channel."""
    from twisted.internet.ssl import CertificateOptions, optionsForClientTLS, platformTrust
    if not config.tls_verify:
        return CertificateOptions(verify=False)
    trust = platformTrust() if config.tls_ca is None else _trustRoot(config.tls_ca, config)
    return optionsForClientTLS(config.tls_hostname or host, trustRoot=trust)


def describeFailure(reason, tlsName=None, verifyResult=None) -> str:
    """A short, human description of a connection failure."""
    value = reason.value
    try:
        from OpenSSL import SSL
    except ImportError:  # pragma: no cover - TLS extras missing
        SSL = None
    if SSL is not None and isinstance(value, SSL.Error):
        texts = [e[-1] for e in (value.args[0] if value.args else ())
                 if isinstance(e, tuple) and e and e[-1]]
        text = texts[-1] if texts else str(value)
        if verifyResult:
            text += f" ({verifyResult})"
        return f"TLS handshake failed: {text}"
    if type(value).__name__ == "VerificationError":  # service_identity's
        return f"TLS: the server's certificate is not valid for {tlsName!r}"
    return reason.getErrorMessage()
