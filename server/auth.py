"""Who is calling: TLS credentials and the institution a caller is.

Three modes (`settlesim serve --auth`), see docs/security.md:

- ``none``  — the insecure local stub: the institution code in each request is
  trusted. The default, and it says so at start-up.
- ``token`` — each call carries ``authorization: Bearer <token>``; the token is
  looked up among the institutions' tokens in the world data.
- ``mtls``  — the client certificate (signed by ``--client-ca``) names the
  institution in its subject CN or a SAN; no token is needed.

The identity this module returns is what `SettlementService.acting_for` and the
ledger hold every request to: an institution can only act for itself. An
authenticator is a plain function of the call's `authorization` metadata and the
transport's auth context, both read once per call by `server/calls.py`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from pathlib import Path

import grpc
from settlesim.server.calls import AuthContext, Authenticator
from settlesim.server.rules.reasons import Reason, Refusal

AUTH_MODES = ("none", "token", "mtls")


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """TLS from PEM files; with `client_ca`, clients must present a certificate
    it signed (the handshake fails otherwise, before any RPC runs)."""
    root = client_ca.read_bytes() if client_ca else None
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=root,
        require_client_auth=root is not None,
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_authenticator(tokens: Mapping[str, str]) -> Authenticator:
    """`authorization: Bearer <token>` against the world's per-institution tokens.

    Tokens are indexed by their SHA-256 so a lookup costs the same for any number
    of institutions; the final comparison is constant-time (hmac.compare_digest)."""
    by_digest = {hashlib.sha256(t.encode()).digest(): (code, t) for code, t in tokens.items() if t}

    def authenticate(header: str, _auth_context: AuthContext) -> str:
        if not header:
            raise Refusal(Reason.CALLER_UNAUTHENTICATED, "no authorization metadata: send 'Bearer <token>'")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refusal(Reason.CALLER_UNAUTHENTICATED, "authorization metadata must be 'Bearer <token>'")
        token = token.strip()
        found = by_digest.get(hashlib.sha256(token.encode()).digest())
        if found is None or not hmac.compare_digest(found[1].encode(), token.encode()):
            raise Refusal(Reason.CALLER_UNAUTHENTICATED, "the bearer token belongs to no institution")
        return found[0]

    return authenticate


def certificate_names(auth: AuthContext) -> list[str]:
    """The subject CN, then the SANs, of the verified client certificate."""
    names = [*auth.get("x509_common_name", ()), *auth.get("x509_subject_alternative_name", ())]
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def mtls_authenticator(institutions: Mapping[str, object]) -> Authenticator:
    """The institution named by the client certificate's CN (or a SAN). gRPC has
    already checked the chain against --client-ca during the handshake."""

    def authenticate(_authorization: str, auth_context: AuthContext) -> str:
        names = certificate_names(auth_context)
        for name in names:
            if name in institutions:
                return name
        if not names:
            raise Refusal(Reason.CALLER_UNAUTHENTICATED, "no verified client certificate on this connection")
        raise Refusal(
            Reason.CALLER_UNAUTHENTICATED,
            f"the client certificate ({', '.join(names)}) names no institution in this world",
        )

    return authenticate


def authenticator(
    mode: str, institutions: Mapping[str, object], tokens: Mapping[str, str]
) -> Authenticator | None:
    """The identity check for a mode; None for `none` (requests are trusted)."""
    if mode == "none":
        return None
    if mode == "token":
        if not any(tokens.values()):
            raise ValueError("--auth token needs institutions with a `token` in the world data")
        return token_authenticator(tokens)
    if mode == "mtls":
        return mtls_authenticator(institutions)
    raise ValueError(f"unknown auth mode {mode!r}; choose one of {', '.join(AUTH_MODES)}")


def check_combination(
    mode: str, host: str, tls_cert: Path | None, tls_key: Path | None, client_ca: Path | None
) -> list[str]:
    """Refuse settings a platform operator would never run; return warnings for
    the ones that are only fit for local development."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    tls = tls_cert is not None
    if client_ca is not None and not tls:
        raise ValueError("--client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
    if mode == "mtls" and client_ca is None:
        raise ValueError("--auth mtls needs --client-ca (the CA that signs hospital certificates)")
    if mode == "token" and not tls and not is_loopback(host):
        raise ValueError("--auth token without TLS would send tokens in clear text; add --tls-cert/--tls-key")
    warnings = []
    if mode == "none":
        where = "" if is_loopback(host) else f" and it listens on {host}, beyond this machine"
        transport = "TLS on, but" if tls else "no TLS, and"
        warnings.append(
            f"INSECURE local development mode: {transport} the institution code in each request is "
            f"trusted (use --auth token or --auth mtls){where}"
        )
    elif not tls:
        warnings.append("INSECURE transport: bearer tokens travel in clear text on loopback (no TLS)")
    return warnings
