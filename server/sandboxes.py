"""Whose sandbox is it: a session belongs to the institutions that opened it.

The first write in a session (settle, reverse, void) records its group — the institution the call
acts for plus those it names in x-settlesim-session-members — durably in the ledger (`sessions`
table). From then on only a call acting for one of them and naming exactly that group may use it;
anything else is PERMISSION_DENIED / SESSION_NOT_YOURS. A session nobody has written to yet holds
nothing, so reading it is harmless and opens nothing. See docs/sessions.md.

A group never changes once recorded, so it is cached in memory: a session costs one extra write,
once, and a lookup per call after that.
"""

from __future__ import annotations

from settlesim.server.ledger import LedgerStore
from settlesim.server.rules.reasons import Reason, Refusal


class Sandboxes:
    CACHE_LIMIT = 100_000  # sessions remembered; the ledger answers for the rest

    def __init__(self, ledger: LedgerStore) -> None:
        self.ledger = ledger
        self._groups: dict[str, frozenset[str]] = {}

    async def enter(self, session: str, group: frozenset[str], *, writes: bool) -> None:
        """Let a call acting for `group` (its institution + the members it names) into `session`,
        opening the session on its first write; refuse it when the session is another group's."""
        owners = self._groups.get(session)
        if owners is None:
            owners = self.ledger.session_group(session)
            if owners is None and writes:
                # The first writer wins, atomically; committed (the loop's group commit) before
                # the write that opened it is even queued.
                owners = await self.ledger.open_session_async(session, group)
            if owners is None:
                return  # nobody's yet, and a read opens nothing
            if len(self._groups) >= self.CACHE_LIMIT:
                self._groups.clear()
            self._groups[session] = owners
        if owners != group:
            raise Refusal(
                Reason.SESSION_NOT_YOURS,
                f"session {session} belongs to {', '.join(sorted(owners))}; a call for "
                f"{', '.join(sorted(group))} cannot use it (name another session)",
                session=session,
            )
