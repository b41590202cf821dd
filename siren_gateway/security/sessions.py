"""Who a bearer token belongs to, asked by every route and stream.

One gateway keeps its sessions in memory (TokenStore). A cluster node also shares them through
the database: the node that logs a user in (the leader) records the session, by its token's
SHA-256; any other node that meets the token looks it up and keeps a copy, which it checks
against the database every few seconds (a logout or revocation elsewhere, the idle clock), so a
session made on the leader is good on every node and outlives the leader's death.
"""

from __future__ import annotations

import hashlib
import logging
import time

from siren_gateway.security.auth import Principal, Role, Session, TokenStore
from siren_gateway.store.base import SessionRepository
from siren_gateway.store.errors import StorageError

log = logging.getLogger(__name__)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    def __init__(self, tokens: TokenStore, shared: SessionRepository | None = None,
                 check_s: float = 5.0) -> None:
        self.tokens = tokens
        self.shared = shared
        self.check_s = check_s
        self._checked: dict[str, float] = {}  # token -> monotonic time of the last check

    async def issued(self, session: Session) -> None:
        if self.shared is None:
            return
        p = session.principal
        try:
            await self.shared.put((token_digest(session.token), p.username, p.role.name.lower(),
                                   session.issued_at, session.expires_at, session.last_used),
                                  time.time())
            self._checked[session.token] = time.monotonic()
        except StorageError as exc:
            log.warning("session of %s not shared with the other nodes (it works here "
                        "only): %s", p.username, exc)

    async def resolve(self, token: str) -> Principal | None:
        principal = self.tokens.resolve(token)
        if self.shared is None:
            return principal
        now = time.monotonic()
        if principal is not None and now - self._checked.get(token, 0.0) < self.check_s:
            return principal
        digest = token_digest(token)
        try:
            if principal is not None:  # known here: still known everywhere?
                if await self.shared.touch(digest, time.time()):
                    self._checked[token] = now
                    return principal
                self.tokens.revoke(token)  # logged out or revoked on another node
                self._checked.pop(token, None)
                return None
            row = await self.shared.get(digest)
        except StorageError:
            return principal  # the database is away: what this node knows stands
        if row is None:
            return None
        _, username, role, issued_at, expires_at, last_used = row
        session = Session(token, Principal(username, Role.parse(role)), issued_at, expires_at,
                          last_used)
        self.tokens.adopt(session)
        self._checked[token] = now
        return self.tokens.resolve(token)

    async def revoke(self, token: str) -> bool:
        revoked = self.tokens.revoke(token)
        self._checked.pop(token, None)
        if self.shared is not None:
            try:
                await self.shared.delete(token_digest(token))
                revoked = True
            except StorageError as exc:
                log.warning("a logout could not reach the other nodes: %s", exc)
        return revoked

    async def revoke_user(self, username: str) -> int:
        count = self.tokens.revoke_user(username)
        if self.shared is not None:
            try:
                await self.shared.delete_user(username)
            except StorageError as exc:
                log.warning("revoking %s's sessions could not reach the other nodes: %s",
                            username, exc)
        self._checked = {t: at for t, at in self._checked.items()
                         if self.tokens.session(t) is not None}
        return count
