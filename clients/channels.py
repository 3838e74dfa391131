"""Where every client of settlesim opens its gRPC channel: one server, or several
replicas of one platform spread over with gRPC's own `round_robin` policy.

A target is what `--target` takes:

- `HOST:PORT`: one server, as gRPC takes it (pick_first, as before);
- `HOST:PORT,HOST:PORT,...`: several replicas; each host is resolved once, here,
  and the list becomes an `ipv4:` (or `ipv6:`) target gRPC balances over;
- a gRPC target URI, `dns:///replicas.example:50051` (every address the name
  resolves to, re-resolved by gRPC as it changes), `ipv4:10.0.0.1:50051,10.0.0.2:50051`
  or `ipv6:[::1]:50051,[::1]:50052`: balanced over its addresses.

Balanced channels carry the service config `{"loadBalancingConfig": [{"round_robin":
{}}]}`: a call goes to the next replica whose connection is ready, and a replica that
is down (refused, reset) is skipped until it answers again. On TLS every replica must
present a certificate for one name, by default the host of the first target
(`server_name` overrides it, e.g. the name a shared certificate carries); the channel's
authority, and the TLS server name (SNI) with it, is that name. See docs/scaling.md.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
SCHEMES = ("dns:", "ipv4:", "ipv6:")
ChannelOptions = Sequence[tuple[str, object]]


class TargetListError(ValueError):
    """A target list that cannot be turned into one gRPC target: one line saying why."""


@dataclass(frozen=True)
class GrpcTarget:
    """What a channel is opened on: `uri` as gRPC takes it, `authority` (HOST:PORT)
    the name the servers are called by (TLS checks their certificate against its
    host), and whether calls are spread over several addresses."""

    uri: str
    authority: str
    balanced: bool

    @property
    def host(self) -> str:
        return self.authority.rsplit(":", 1)[0].strip("[]")


def split_host_port(part: str) -> tuple[str, str]:
    host, _, port = part.strip().rpartition(":")
    return host.strip("[]"), port


def _scheme_authority(uri: str) -> str:
    """The first address of a gRPC target URI, as HOST:PORT."""
    scheme, _, rest = uri.partition(":")
    if scheme == "dns":
        # dns:///name:port, dns://resolver/name:port or dns:name:port
        rest = rest.removeprefix("//").split("/", 1)[-1] if rest.startswith("//") else rest
        return rest
    return rest.split(",", 1)[0]


def _addresses(host: str, port: str) -> dict[int, list[str]]:
    """Every IPv4 and IPv6 address of `host` (an address or a name), by family."""
    try:
        ipaddress.ip_address(host)
        literal = [(socket.AF_INET6 if ":" in host else socket.AF_INET, host)]
    except ValueError:
        try:
            found = socket.getaddrinfo(host, int(port), proto=socket.IPPROTO_TCP)
        except socket.gaierror as e:
            raise TargetListError(f"cannot resolve {host!r}: {e.strerror or e}") from None
        literal = [(family, sockaddr[0]) for family, _, _, _, sockaddr in found]
    by_family: dict[int, list[str]] = {}
    for family, address in literal:
        if address not in by_family.setdefault(family, []):
            by_family[family].append(address)
    return by_family


def resolve(target: str) -> GrpcTarget:
    """The gRPC target for `target` (see the module's docstring). Raises
    TargetListError when a listed host does not resolve, or when the hosts have no
    address family in common (gRPC's ipv4:/ipv6: lists cannot mix them)."""
    target = target.strip()
    if target.startswith(SCHEMES):
        return GrpcTarget(target, _scheme_authority(target), balanced=True)
    parts = [p.strip() for p in target.split(",") if p.strip()]
    if len(parts) == 1:
        return GrpcTarget(parts[0], parts[0], balanced=False)
    resolved = [(part, split_host_port(part), _addresses(*split_host_port(part))) for part in parts]
    for family, scheme in ((socket.AF_INET, "ipv4"), (socket.AF_INET6, "ipv6")):
        if all(family in by_family for _, _, by_family in resolved):
            addresses = [
                f"[{a}]:{port}" if family == socket.AF_INET6 else f"{a}:{port}"
                for _, (_, port), by_family in resolved
                for a in by_family[family]
            ]
            return GrpcTarget(f"{scheme}:{','.join(dict.fromkeys(addresses))}", parts[0], balanced=True)
    raise TargetListError(
        f"{target!r}: the hosts have no address family in common (IPv4 for all, or IPv6 for all); "
        "give addresses of one family, or a dns: name"
    )


def _options(
    target: GrpcTarget, *, tls: bool, server_name: str | None, options: ChannelOptions
) -> list[tuple[str, object]]:
    chosen: list[tuple[str, object]] = list(options)
    if target.balanced:
        chosen.append(("grpc.service_config", ROUND_ROBIN))
        # gRPC would call an ipv4: list by the whole list; call the servers by one name.
        port = split_host_port(target.authority)[1]
        name = server_name or target.host
        chosen.append(("grpc.default_authority", f"[{name}]:{port}" if ":" in name else f"{name}:{port}"))
    if tls and server_name:
        chosen.append(("grpc.ssl_target_name_override", server_name))
    return chosen


def open_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None = None,
    *,
    server_name: str | None = None,
    options: ChannelOptions = (),
) -> grpc.Channel:
    """A channel to one server or to replicas (round_robin); TLS when `credentials`."""
    resolved = resolve(target)
    chosen = _options(resolved, tls=credentials is not None, server_name=server_name, options=options)
    if credentials is None:
        return grpc.insecure_channel(resolved.uri, options=chosen)
    return grpc.secure_channel(resolved.uri, credentials, options=chosen)


def open_aio_channel(target: str, *, options: ChannelOptions = ()) -> grpc.aio.Channel:
    """As open_channel, plaintext, for grpc.aio (the benchmark's load generator)."""
    resolved = resolve(target)
    return grpc.aio.insecure_channel(
        resolved.uri, options=_options(resolved, tls=False, server_name=None, options=options)
    )
