"""Connecting a mock hospital the way a production HIS does: over TLS, with its
own client certificate (mutual TLS) or a bearer token. See docs/security.md.

    from settlesim.clients.secure import connect
    his = connect("127.0.0.1:50443", "H11010500001", ca="ca.pem",
                  cert="H11010500001.pem", key="H11010500001.key")
"""

from __future__ import annotations

from pathlib import Path

import grpc
from settlesim.clients.hospital import Hospital

AUTHORIZATION = "authorization"


def _pem(source: Path | str | bytes | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


def channel_credentials(
    ca: Path | str | bytes, cert: Path | str | bytes | None = None, key: Path | str | bytes | None = None
) -> grpc.ChannelCredentials:
    """Trust `ca` for the server; present `cert`/`key` when the server asks (mTLS)."""
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs its key, and a key its certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=_pem(ca), private_key=_pem(key), certificate_chain=_pem(cert)
    )


def connect(
    target: str,
    institution_code: str,
    *,
    ca: Path | str | bytes | None = None,
    cert: Path | str | bytes | None = None,
    key: Path | str | bytes | None = None,
    token: str | None = None,
    server_name: str | None = None,
    **kwargs: object,
) -> Hospital:
    """A Hospital on a TLS channel when `ca` is given (plain otherwise, which
    only a loopback `--auth token` server accepts), sending `token` as
    `authorization: Bearer <token>` on every call when given."""
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    if ca is not None:
        channel = grpc.secure_channel(target, channel_credentials(ca, cert, key), options=options)
    else:
        channel = grpc.insecure_channel(target)
    metadata = tuple(kwargs.pop("metadata", ()))  # type: ignore[arg-type]
    if token is not None:
        metadata += ((AUTHORIZATION, f"Bearer {token}"),)
    return Hospital(channel, institution_code, metadata=metadata, **kwargs)  # type: ignore[arg-type]
