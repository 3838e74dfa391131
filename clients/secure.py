"""Connecting a mock hospital the way a production HIS does: over TLS, with its
own client certificate (mutual TLS) or a bearer token. See docs/security.md.

    from settlesim.clients.secure import connect
    his = connect("127.0.0.1:50443", "H11010500001", ca="ca.pem",
                  cert="H11010500001.pem", key="H11010500001.key")

A failed TLS handshake (the platform refuses the client certificate, or the
client does not trust the server's) is raised as hospital.TlsHandshakeRefused,
one line saying what to check, and is never retried.

`load_identities` reads a per-institution credentials file (`settlesim replay
--tokens FILE`): institution code -> bearer token, or -> {token, cert, key}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from settlesim.clients.channels import open_channel
from settlesim.clients.hospital import Hospital

AUTHORIZATION = "authorization"
_CODE = re.compile(r"^[A-Za-z0-9]{1,32}$")
_TOKEN = re.compile(r"^\S{1,4096}$")


class CredentialsError(ValueError):
    """A credentials file or PEM file that cannot be used: one line naming it."""


def _pem(source: Path | str | bytes | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


def read_pem(path: Path | str, what: str) -> bytes:
    """A PEM file's bytes, checked to hold `what` ("certificate" or "private key"),
    so a wrong or missing file fails here in one line rather than later as an
    obscure handshake failure."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CredentialsError(f"cannot read {what} {path}: {e.strerror or e}") from None
    marker = b"PRIVATE KEY-----" if what == "private key" else b"-----BEGIN CERTIFICATE-----"
    if marker not in data:
        raise CredentialsError(f"{path} is not a PEM {what} (no {marker.decode().strip('-')} block)")
    return data


def channel_credentials(
    ca: Path | str | bytes, cert: Path | str | bytes | None = None, key: Path | str | bytes | None = None
) -> grpc.ChannelCredentials:
    """Trust `ca` for the server; present `cert`/`key` when the server asks (mTLS)."""
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs its key, and a key its certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=_pem(ca), private_key=_pem(key), certificate_chain=_pem(cert)
    )


def bearer(token: str) -> tuple[str, str]:
    """The metadata pair that carries a token (serve --auth token)."""
    return (AUTHORIZATION, f"Bearer {token}")


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
    `authorization: Bearer <token>` on every call when given. `target` may name
    several replicas (clients/channels.py); `server_name` is the name their TLS
    certificate carries when it is not the first target's host."""
    credentials = channel_credentials(ca, cert, key) if ca is not None else None
    channel = open_channel(target, credentials, server_name=server_name)
    metadata = tuple(kwargs.pop("metadata", ()))  # type: ignore[arg-type]
    if token is not None:
        metadata += (bearer(token),)
    return Hospital(channel, institution_code, metadata=metadata, tls=ca is not None, **kwargs)  # type: ignore[arg-type]


# --- per-institution credentials ------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """How one institution proves who it is: a bearer token, a client
    certificate with its key (PEM bytes), or both."""

    token: str | None = None
    cert: bytes | None = None
    key: bytes | None = None

    @property
    def empty(self) -> bool:
        return self.token is None and self.cert is None


def load_identities(path: Path | str) -> dict[str, Identity]:
    """Read a credentials file (YAML or JSON): a mapping from institution code to
    its bearer token, or to a mapping with `token`, `cert` and `key` (PEM paths
    relative to the file)::

        H11010500001: dev-token-H11010500001
        H11010200002: {cert: certs/H11010200002.pem, key: certs/H11010200002.key}

    Raises CredentialsError, one line naming the file and the entry."""
    path = Path(path)
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CredentialsError(f"cannot read credentials file {path}: {e.strerror or e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CredentialsError(f"{path}: not valid YAML or JSON ({first})") from None
    if not isinstance(data, dict) or not data:
        raise CredentialsError(
            f"{path}: expected a mapping of institution code to token, e.g. H11010500001: TOKEN"
        )
    identities: dict[str, Identity] = {}
    for raw_code, value in data.items():
        code = str(raw_code)
        if not _CODE.fullmatch(code):
            raise CredentialsError(f"{path}: {code!r} is not an institution code (letters and digits)")
        where = f"{path}: {code}"
        if value is None or isinstance(value, int | float | bool):
            raise CredentialsError(f"{where}: the token must be text (quote it in YAML)")
        if isinstance(value, str):
            value = {"token": value}
        if not isinstance(value, dict) or not value or not set(value) <= {"token", "cert", "key"}:
            raise CredentialsError(f"{where}: give a token, or a mapping with token and/or cert and key")
        token = value.get("token")
        if token is not None and (not isinstance(token, str) or not _TOKEN.fullmatch(token)):
            raise CredentialsError(f"{where}: the token must be one word of text")
        cert, key = value.get("cert"), value.get("key")
        if (cert is None) != (key is None):
            raise CredentialsError(f"{where}: a client certificate needs its key, and a key its certificate")
        if cert is not None and not (isinstance(cert, str) and isinstance(key, str)):
            raise CredentialsError(f"{where}: cert and key are file paths")
        try:
            identities[code] = Identity(
                token,
                read_pem(path.parent / cert, "certificate") if cert is not None else None,
                read_pem(path.parent / key, "private key") if key is not None else None,
            )
        except CredentialsError as e:
            raise CredentialsError(f"{where}: {e}") from None
    return identities
