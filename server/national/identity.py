"""Who is calling the national door, per `serve --auth` (docs/national.md "Identity").

- none:  the envelope's fixmedins_code is trusted (the insecure local stub).
- token: x-tif-* signatures (signature.py, as some provinces' gateways sign), or
         `authorization: Bearer <token>` as on the gRPC door; the same per-institution
         tokens of the world data.
- mtls:  the verified client certificate's CN or a SAN names the institution, as on the
         gRPC door (server/auth.py); uvicorn has checked the chain against --client-ca in
         the handshake, and client_certs.py hands the request the certificate's names.

An identity is a plain function of the request's headers and those names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from settlesim.server import auth
from settlesim.server.national.signature import HEADERS, SignatureCheck
from settlesim.server.rules.reasons import Reason, Refusal

Identify = Callable[[Mapping[str, str], Sequence[str]], str]
READS = (*HEADERS, "authorization")  # the headers an identity may read


def by_token(tokens: Mapping[str, str]) -> Identify:
    """x-tif-* signed, or a bearer token: the institution the request is signed for."""
    signatures = SignatureCheck(tokens)
    bearer = auth.token_authenticator(tokens)

    def identify(headers: Mapping[str, str], _names: Sequence[str]) -> str:
        if any(headers.get(name) for name in HEADERS):
            return signatures.institution(headers)
        if headers.get("authorization"):
            return bearer(headers["authorization"], {})
        raise Refusal(
            Reason.CALLER_UNAUTHENTICATED,
            "the request is not signed: sign it with x-tif-* headers or send authorization: Bearer <token>",
        )

    return identify


def by_certificate(institutions: Mapping[str, object]) -> Identify:
    """The institution the verified client certificate names."""
    check = auth.mtls_authenticator(institutions)

    def identify(_headers: Mapping[str, str], names: Sequence[str]) -> str:
        return check("", {"x509_subject_alternative_name": list(names)})

    return identify


def for_mode(mode: str, institutions: Mapping[str, object], tokens: Mapping[str, str]) -> Identify | None:
    """The door's identity for `serve --auth MODE` (None: the envelope is trusted)."""
    if mode == "token":
        return by_token(tokens)
    if mode == "mtls":
        return by_certificate(institutions)
    return None
