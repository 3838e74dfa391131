"""Is the target usable? Fail fast, in one line, when nobody answers, the TLS
handshake fails, the credentials are refused or the answer is not the
settlesim.v1 contract, before any case runs. Also: how a replay reaches the
target (Credentials, Connections): plaintext or TLS, and per institution a
bearer token and/or a client certificate."""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from settlesim.clients.channels import TargetListError, open_channel
from settlesim.clients.hospital import SESSION_HEADER, Hospital, TlsHandshakeRefused, transport_refusal
from settlesim.clients.rejections import rejection_of
from settlesim.clients.secure import Identity, bearer, channel_credentials
from settlesim.v1 import platform_pb2, platform_pb2_grpc
from settlesim.v1 import settlement_service_pb2 as pb
from settlesim.v1 import settlement_service_pb2_grpc as pb_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["SettlementService"].full_name
NEEDS_CREDENTIALS = (
    "give --tokens FILE (a server run with --auth token) or --ca/--cert/--key (mutual TLS); see docs/cases.md"
)


class TargetError(Exception):
    """The target is down or does not speak the settlesim.v1 contract."""


@dataclass(frozen=True)
class Credentials:
    """How a replay proves who it is: `ca` (PEM) makes every channel TLS;
    `default` is the identity of an institution absent from `identities`
    (`--cert/--key`); `identities` are per institution (`--tokens FILE`)."""

    ca: bytes | None = None
    default: Identity = field(default_factory=Identity)
    identities: Mapping[str, Identity] = field(default_factory=dict)
    source: str = ""  # where `identities` came from, for messages

    def identity(self, institution: str) -> Identity:
        return self.identities.get(institution, self.default)

    def describe(self, institution: str) -> str:
        """Which credentials an institution uses, for messages."""
        if institution in self.identities:
            what = "token" if self.identities[institution].cert is None else "credentials"
            return f"the {what} for {institution} in {self.source or 'the credentials file'}"
        if self.default.cert is not None:
            return f"the client certificate given with --cert (used for {institution or 'the probe'})"
        return ""


class Connections:
    """The channels a replay opens to the target — one per client certificate,
    since a TLS connection has one identity — shared by every case, and each
    institution's metadata (its bearer token)."""

    def __init__(
        self,
        target: str,
        credentials: Credentials | None = None,
        channel: grpc.Channel | None = None,
        server_name: str | None = None,
    ) -> None:
        """`target`: one server or several replicas (clients/channels.py); `server_name`:
        the name their TLS certificate carries, when not the first target's host."""
        self.target = target
        self.server_name = server_name
        self.credentials = credentials or Credentials()
        self.tls = self.credentials.ca is not None
        self._given = channel
        self._channels: dict[tuple[bytes | None, bytes | None], grpc.Channel] = {}
        self._lock = threading.Lock()

    def channel(self, institution: str) -> grpc.Channel:
        if self._given is not None:
            return self._given
        identity = self.credentials.identity(institution)
        key = (identity.cert, identity.key)
        with self._lock:
            if key not in self._channels:
                creds = None
                if self.credentials.ca is not None:
                    creds = channel_credentials(self.credentials.ca, identity.cert, identity.key)
                try:
                    self._channels[key] = open_channel(self.target, creds, server_name=self.server_name)
                except TargetListError as e:
                    raise TargetError(f"cannot reach {self.target}: {e}") from None
            return self._channels[key]

    def metadata(self, institution: str) -> tuple[tuple[str, str], ...]:
        token = self.credentials.identity(institution).token
        return (bearer(token),) if token else ()

    def hospital(
        self, institution: str, session: str, deadline: float, members: Iterable[str] = ()
    ) -> Hospital:
        """A mock hospital of `institution` in `session`, a sandbox shared with `members`."""
        return Hospital(
            self.channel(institution),
            institution,
            session=session,
            session_members=members,
            deadline=deadline,
            metadata=self.metadata(institution),
            tls=self.tls,
        )

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()


def _unreachable(target: str, timeout: float, error: grpc.RpcError | None, tls: bool) -> TargetError:
    hint = "(is `settlesim serve` running there?)"
    if error is not None and not tls and "Socket closed" in (error.details() or ""):
        hint = "(it closed the connection before gRPC started: if it serves TLS, give --ca FILE)"
    return TargetError(f"cannot reach {target}: no gRPC server answered within {timeout:g}s {hint}")


def check_target(
    channel: grpc.Channel,
    target: str,
    timeout: float = 5.0,
    *,
    metadata: Sequence[tuple[str, str]] = (),
    tls: bool = False,
    credentials: str = "",
) -> None:
    """Fail fast, in one line, when nobody answers or the answer is not our contract:
    an empty VerifyRegistration must be refused as INVALID_ARGUMENT (or answered).
    `metadata` carries a token; `credentials` says whose, for messages."""
    stub = pb_grpc.SettlementServiceStub(channel)
    probe = [(SESSION_HEADER, "replay-probe-" + secrets.token_hex(4)), *metadata]
    deadline = time.monotonic() + timeout
    while True:
        # Not wait_for_ready: a connection that fails says why at once (refused,
        # TLS handshake), and the probe is repeated until `timeout`.
        remaining = deadline - time.monotonic()
        try:
            stub.VerifyRegistration(
                pb.VerifyRegistrationRequest(), timeout=max(0.2, remaining), metadata=probe
            )
            return
        except grpc.RpcError as error:
            refused = transport_refusal(error, tls=tls)
            if isinstance(refused, TlsHandshakeRefused):
                raise TargetError(f"cannot reach {target}: {refused}") from None
            rejection = rejection_of(error)
            lost = rejection.code in {"UNAVAILABLE", "DEADLINE_EXCEEDED"} and rejection.reason in {
                "",
                "INJECTED_FAULT",
            }
            if not lost:
                break
            if time.monotonic() + 0.2 >= deadline:
                raise _unreachable(target, timeout, error, tls) from None
            time.sleep(0.2)
    if rejection.code == "INVALID_ARGUMENT":
        return
    if rejection.code == "UNIMPLEMENTED":
        raise TargetError(
            f"{target} answers gRPC but does not implement {SERVICE} (UNIMPLEMENTED): it speaks another contract"
        ) from None
    if rejection.reason == "SESSIONS_DISABLED":
        raise TargetError(
            f"{target} refuses session sandboxes (started with --no-sessions, or with --auth "
            "token/mtls without --sessions); replay needs them to keep runs apart (docs/sessions.md)"
        ) from None
    if rejection.code == "UNAUTHENTICATED":
        if credentials:
            raise TargetError(f"{target} refused {credentials}: {rejection}") from None
        raise TargetError(
            f"{target} requires callers to authenticate ({rejection}): {NEEDS_CREDENTIALS}"
        ) from None
    raise TargetError(f"{target} gave an unexpected answer to a probe: {rejection}") from None


def check_identities(
    connections: Connections, institutions: Iterable[str], timeout: float = 5.0
) -> dict[str, str]:
    """Ask the target, per institution, whether its credentials act for it: a
    Reconcile of one day in 2000 in a fresh session (reads nothing real, writes
    nothing). Returns the institutions the target will not let this replay act
    for, with why; raises TargetError when credentials given for an institution
    explicitly (in the credentials file) are refused."""
    unusable: dict[str, str] = {}
    session = (SESSION_HEADER, "replay-probe-" + secrets.token_hex(4))
    credentials = connections.credentials
    for institution in sorted(set(institutions)):
        stub = pb_grpc.SettlementServiceStub(connections.channel(institution))
        request = pb.ReconcileRequest(
            institution_code=institution, start_date="2000-01-01", end_date="2000-01-01"
        )
        try:
            stub.Reconcile(request, timeout=timeout, metadata=[session, *connections.metadata(institution)])
            continue
        except grpc.RpcError as error:
            refused = transport_refusal(error, tls=connections.tls)
            if isinstance(refused, TlsHandshakeRefused):
                if credentials.identity(institution).cert is not None:
                    raise TargetError(
                        f"cannot reach {connections.target} as {institution}: {refused}"
                    ) from None
                unusable[institution] = "no client certificate"  # the platform requires one (mTLS)
                continue
            rejection = rejection_of(error)
        if rejection.code not in {"UNAUTHENTICATED", "PERMISSION_DENIED"}:
            continue  # it answered for this institution (e.g. UNKNOWN_INSTITUTION): cases decide
        if institution in credentials.identities:
            raise TargetError(
                f"{connections.target} refused {credentials.describe(institution)}: {rejection}"
            ) from None
        unusable[institution] = rejection.code
    return unusable


@dataclass(frozen=True)
class TargetWorld:
    """The world a target says it serves (settlesim.v1.PlatformService)."""

    name: str
    digest: str
    version: str

    def __str__(self) -> str:
        return f"world {self.name!r} (digest {self.digest[:12]}, settlesim {self.version})"


def describe_world(channel: grpc.Channel, target: str, timeout: float = 5.0) -> TargetWorld | None:
    """The world the target serves; None when it does not say (another
    implementation of the contract, without PlatformService)."""
    stub = platform_pb2_grpc.PlatformServiceStub(channel)
    try:
        answer = stub.DescribePlatform(platform_pb2.DescribePlatformRequest(), timeout=timeout)
    except grpc.RpcError as error:
        if error.code() is grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
            return None
        raise TargetError(f"{target} did not say which world it serves: {rejection_of(error)}") from None
    return TargetWorld(answer.world_name, answer.world_digest, answer.version)


def other_world(worlds: Iterable[str], served: TargetWorld, target: str) -> str | None:
    """Why cases naming `worlds` cannot pass on a target serving `served`, or None
    when they all name it: their expected figures come from another world."""
    counts = Counter(worlds)
    needed = {name: n for name, n in counts.items() if name != served.name}
    if not needed:
        return None
    listed = ", ".join(f"{name!r} ({n} case{'s' if n != 1 else ''})" for name, n in sorted(needed.items()))
    return (
        f"{target} serves {served}, but the cases need world {listed}: their expected figures "
        "hold for that world only. Start the target on it (settlesim serve --world DIR)"
    )
