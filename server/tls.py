"""TLS and mutual TLS for the server and its clients, from PEM files.

The files are checked with Python's `ssl` module when they are read, so that a missing file, a
key that does not match its certificate, or a file that is not PEM is refused at start-up with
the flag named, not at the first handshake.
"""

import ssl
from pathlib import Path

import grpc

from zoo.errors import ZooError


def _read(path, flag):
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ZooError(f"{flag} {path}: cannot read it ({e.strerror or e})") from None


def _check_pair(cert, key, cert_flag, key_flag):
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise ZooError(f"{cert_flag} {cert} / {key_flag} {key}: not a PEM certificate chain and its private key "
                       f"({e})") from None


def _check_ca(path, flag):
    try:
        ssl.create_default_context().load_verify_locations(cafile=str(path))
    except (ssl.SSLError, OSError) as e:
        raise ZooError(f"{flag} {path}: not PEM CA certificates ({e})") from None


def server_credentials(cert, key, client_ca=None):
    """gRPC server credentials: TLS with `cert`/`key`; with `client_ca`, clients must present a
    certificate signed by it (mutual TLS)."""
    _check_pair(cert, key, "--tls-cert", "--tls-key")
    if client_ca is not None:
        _check_ca(client_ca, "--tls-client-ca")
    return grpc.ssl_server_credentials(
        [(_read(key, "--tls-key"), _read(cert, "--tls-cert"))],
        root_certificates=_read(client_ca, "--tls-client-ca") if client_ca else None,
        require_client_auth=client_ca is not None)


def server_context(cert, key, client_ca=None):
    """The same settings as an `ssl.SSLContext`, for the metrics endpoint (HTTPS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def channel_credentials(ca=None, cert=None, key=None):
    """gRPC channel credentials: verify the server against `ca` (default: the system's roots); with
    `cert` and `key`, present a client certificate (mutual TLS)."""
    if (cert is None) != (key is None):
        raise ZooError("--tls-cert and --tls-key go together: give both for a client certificate, or neither")
    if ca is not None:
        _check_ca(ca, "--tls-ca")
    if cert is not None:
        _check_pair(cert, key, "--tls-cert", "--tls-key")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "--tls-ca") if ca else None,
        private_key=_read(key, "--tls-key") if key else None,
        certificate_chain=_read(cert, "--tls-cert") if cert else None)
