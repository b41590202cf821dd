"""Checking a login against the site's users, and upgrading weak password hashes on the way.

The users and their hashes are in the site file, which the gateway never rewrites. A hash made
with weaker parameters (or the scrypt scheme of earlier versions) is replaced at the next
successful login by an argon2id hash kept in the database, tied to the site file's hash it
replaces: when an admin changes the password in the site file, the site file wins again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from siren_gateway.config.api import UserConfig
from siren_gateway.security.auth import DUMMY_HASH, hash_password, needs_rehash, verify_password
from siren_gateway.store.base import Store
from siren_gateway.store.errors import StorageError

log = logging.getLogger(__name__)

def _fingerprint(stored: str) -> str:
    return hashlib.sha256(stored.encode()).hexdigest()


class Credentials:
    def __init__(self, users: list[UserConfig], store: Store) -> None:
        self.users = {u.username: u for u in users}
        self.health = store.health  # whether storage takes writes now
        self.store = store.password_upgrades
        self._upgrades: dict[str, tuple[str, str]] = {}  # username -> (replaces, new hash)
        self.upgraded = 0

    async def start(self) -> None:
        for username, replaces, new_hash in await self.store.all():
            self._upgrades[username] = (replaces, new_hash)

    async def stop(self) -> None:
        """Nothing held open: upgrades are written as they happen."""

    def stored_hash(self, username: str) -> str | None:
        user = self.users.get(username)
        if user is None:
            return None
        upgrade = self._upgrades.get(username)
        if upgrade is not None and upgrade[0] == _fingerprint(user.password_hash):
            return upgrade[1]
        return user.password_hash

    async def verify(self, username: str, password: str) -> UserConfig | None:
        """The user when the password is right. As slow for unknown users (dummy hash)."""
        user = self.users.get(username)
        stored = self.stored_hash(username) or DUMMY_HASH
        ok = await asyncio.to_thread(verify_password, password, stored)
        if user is None or not ok:
            return None
        if needs_rehash(stored):
            await self._upgrade(user, password)
        return user

    async def _upgrade(self, user: UserConfig, password: str) -> None:
        new_hash = await asyncio.to_thread(hash_password, password)
        replaces = _fingerprint(user.password_hash)
        try:
            await self.store.put(user.username, replaces, new_hash, time.time())
        except StorageError as exc:  # the login stands; the upgrade waits for the next one
            self.health.failed(exc)
            return
        self._upgrades[user.username] = (replaces, new_hash)
        self.upgraded += 1
        log.info("password hash of %s upgraded to argon2id", user.username)
