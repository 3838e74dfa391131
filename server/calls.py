"""Who is calling, read once per call: the one place that reads a call's metadata.

Every component that needs to know the caller — the servicer, the audit log, the token check —
asks here, and within one call they all get the same `Caller`:

- `read_metadata` reads the keys the platform acts on (x-settlesim-session,
  x-settlesim-session-members, authorization). A key sent twice is refused
  (`DUPLICATE_HEADER`): one reader taking the first value and another the last is how a call
  could be audited in one namespace and served in another.
- `resolve` is a plain function over (metadata, the transport's auth context, `CallSettings`):
  the identity the transport vouches for (certificate or token; "" when the server trusts the
  request, as the insecure stub does), the session, and the first refusal, if any.
- `resolved` holds the result for the rest of the call (a contextvar, so it works the same for
  grpc's thread pool and for grpc.aio tasks); `caller_of` reads it, or resolves when nothing
  holds one (a server without the audit log resolves in the servicer).

Which sandbox a call may use is decided later, once the request names its institution
(`server/sandboxes.py`); see docs/sessions.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar, Token
from typing import Any, NamedTuple

from settlesim.server.rules.reasons import Reason, Refusal
from settlesim.server.validation import is_code

SESSION_HEADER = "x-settlesim-session"
# The other institutions a sandbox is shared with (a case spanning hospitals): comma-separated codes.
MEMBERS_HEADER = "x-settlesim-session-members"
AUTHORIZATION = "authorization"
READ_ONCE = frozenset((SESSION_HEADER, MEMBERS_HEADER, AUTHORIZATION))
SESSION_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_MEMBERS = 16
SESSIONS_OFF = (
    "this server does not accept session-scoped sandboxes (started with --no-sessions, or with "
    "--auth token/mtls without --sessions)"
)

AuthContext = Mapping[str, Sequence[bytes]]
# (authorization metadata, the transport's auth context) -> the caller's institution, or Refusal.
Authenticator = Callable[[str, AuthContext], str]


# Plain tuples: resolving a caller is on every call's path (a frozen dataclass costs ~1 us a field).
class CallMetadata(NamedTuple):
    """The metadata the platform acts on, each key read once."""

    session: str | None = None  # None: no x-settlesim-session header at all
    members: str | None = None
    authorization: str = ""


class CallSettings(NamedTuple):
    """What the server demands of callers: whether sandboxes are allowed and how the transport
    names the caller (None: the request's institution code is trusted)."""

    allow_sessions: bool = True
    authenticate: Authenticator | None = None


class Caller(NamedTuple):
    """Who is calling: the ledger namespace ("" is the real ledger), the institution the transport
    vouches for ("" when it proves nothing), the other institutions the caller says share its
    sandbox, and why the call must be refused before anything else, if it must."""

    session: str
    institution: str
    members: frozenset[str] = frozenset()
    refusal: Refusal | None = None

    def require(self) -> Caller:
        if self.refusal is not None:
            raise self.refusal
        return self


def read_metadata(metadata: Sequence[tuple[str, Any]]) -> CallMetadata:
    """The keys of READ_ONCE, refusing any sent more than once."""
    seen: dict[str, str] = {}
    for key, value in metadata:
        if key in READ_ONCE:
            if key in seen:
                times = sum(1 for k, _ in metadata if k == key)
                raise Refusal(
                    Reason.DUPLICATE_HEADER, f"metadata {key} is sent {times} times; send it once", field=key
                )
            seen[key] = value.decode() if isinstance(value, bytes) else value
    if not seen:
        return _NOTHING
    return CallMetadata(seen.get(SESSION_HEADER), seen.get(MEMBERS_HEADER), seen.get(AUTHORIZATION, ""))


_NOTHING = CallMetadata()


def _members(raw: str | None, session: str | None) -> frozenset[str]:
    if raw is None:
        return frozenset()
    if session is None:
        raise Refusal(Reason.FIELD_INVALID, f"metadata {MEMBERS_HEADER} needs {SESSION_HEADER}", field=MEMBERS_HEADER)
    codes = [code.strip() for code in raw.split(",") if code.strip()]
    if not codes or len(codes) > MAX_MEMBERS or not all(map(is_code, codes)):
        raise Refusal(
            Reason.FIELD_INVALID,
            f"metadata {MEMBERS_HEADER} must be 1-{MAX_MEMBERS} institution codes separated by commas",
            field=MEMBERS_HEADER,
        )
    return frozenset(codes)


def resolve(metadata: Sequence[tuple[str, Any]], auth_context: AuthContext, settings: CallSettings) -> Caller:
    """The caller of one call. Never raises: a refusal is carried in `Caller.refusal` (the first of:
    a repeated key, a session the server refuses or cannot read, an unproven identity), so the audit
    log can record what was known about a refused call."""
    try:
        read = read_metadata(metadata)
    except Refusal as refusal:
        return Caller("", "", refusal=refusal)
    identity, refusal = "", None
    if settings.authenticate is not None:
        try:
            identity = settings.authenticate(read.authorization, auth_context)
        except Refusal as unauthenticated:
            refusal = unauthenticated
    if read.session is None and read.members is None:  # the common case: the real ledger
        if not identity and refusal is None:
            return _TRUSTED  # the insecure stub's caller: one tuple for every call
        return Caller("", identity, _NO_MEMBERS, refusal)
    session, members = read.session or "", _NO_MEMBERS
    try:
        if read.session is not None and not settings.allow_sessions:
            raise Refusal(Reason.SESSIONS_DISABLED, SESSIONS_OFF)
        if read.session is not None and not SESSION_NAME.fullmatch(read.session):
            session = ""
            raise Refusal(
                Reason.FIELD_INVALID,
                f"metadata {SESSION_HEADER} must be 1-64 letters, digits or ._-",
                field=SESSION_HEADER,
            )
        members = _members(read.members, read.session)
    except Refusal as bad_session:  # checked before identity, as a session needs no identity to judge
        refusal = bad_session
    return Caller(session, identity, members, refusal)


# --- one resolution per call ----------------------------------------------------------------------

_NO_MEMBERS: frozenset[str] = frozenset()
_TRUSTED = Caller("", "", _NO_MEMBERS)  # no session, nothing proven, nothing refused
_current: ContextVar[tuple[object, Caller] | None] = ContextVar("settlesim_caller", default=None)


def _resolve_context(context: Any, settings: CallSettings) -> Caller:
    # The transport's auth context is read only for a server that authenticates (2.5 us a call).
    auth = (context.auth_context() or {}) if settings.authenticate is not None else {}
    return resolve(context.invocation_metadata() or (), auth, settings)


class resolved:
    """Resolve the caller of the call `context` belongs to, once: everything run inside (the
    audit log's wrapped handler, the servicer) gets the same Caller from `caller_of`. (A class, not
    @contextmanager: it runs on every call, and a generator costs a few microseconds more.)"""

    __slots__ = ("caller", "token")

    def __init__(self, context: Any, settings: CallSettings) -> None:
        held = _current.get()
        if held is not None and held[0] is context:
            self.caller, self.token = held[1], None
        else:
            self.caller = _resolve_context(context, settings)
            self.token: Token[tuple[object, Caller] | None] | None = _current.set((context, self.caller))

    def __enter__(self) -> Caller:
        return self.caller

    def __exit__(self, *_exc: object) -> None:
        if self.token is not None:
            _current.reset(self.token)


def caller_of(context: Any, settings: CallSettings) -> Caller:
    """The Caller `resolved` holds for this call, or a fresh resolution when none is held."""
    held = _current.get()
    if held is not None and held[0] is context:
        return held[1]
    return _resolve_context(context, settings)
