"""The verified client certificate of a TLS connection, handed to each of its requests.

uvicorn verifies the certificate against --client-ca in the handshake (CERT_REQUIRED) but
does not put it in the ASGI scope (the TLS extension is not filled); this protocol, uvicorn's
own h11 one, puts the certificate's names (subject CN, then SANs) in
scope["extensions"][EXTENSION]["names"] for every request on the connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

EXTENSION = "settlesim.client_certificate"


def certificate_names(peer: dict[str, Any] | None) -> list[str]:
    """CN then SANs of ssl's getpeercert() (empty when no verified certificate)."""
    if not peer:
        return []
    common = [value for rdn in peer.get("subject", ()) for key, value in rdn if key == "commonName"]
    return [*common, *(value for _kind, value in peer.get("subjectAltName", ()))]


def names_of(scope: dict[str, Any]) -> list[str]:
    return list(scope.get("extensions", {}).get(EXTENSION, {}).get("names", []))


class ClientCertificateProtocol(H11Protocol):
    """uvicorn's h11 protocol that tells the app who the connection's certificate names."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        names = certificate_names(ssl_object.getpeercert() if ssl_object is not None else None)
        app = self.app

        async def with_certificate(scope: Any, receive: Any, send: Any) -> None:
            scope["extensions"] = {**(scope.get("extensions") or {}), EXTENSION: {"names": names}}
            await app(scope, receive, send)

        self.app = with_certificate  # this connection's requests only (one protocol per connection)
