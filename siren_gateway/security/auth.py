"""Users, roles, password hashes, sessions (bearer tokens) and login throttling.

Passwords are hashed with argon2id (argon2-cffi) at OWASP's recommended parameters
(19 MiB, 2 passes, 1 lane: ~40 ms here). Hashes made with weaker parameters, or with the scrypt
scheme of earlier versions, still verify and are replaced at the next successful login
(`needs_rehash`); the replacement is kept in the database, since the site file is the admin's.

Tokens are random and kept in memory: a restart logs everybody out, and there is no signing key
to manage. Each has an absolute lifetime and an idle timeout; each user has a cap of live
tokens of their own (their oldest goes), so one account can never log another out.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# OWASP Password Storage Cheat Sheet, argon2id: m=19 MiB, t=2, p=1.
ARGON2 = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
MAX_USERNAME = 64
MAX_PASSWORD = 256


class Role(enum.IntEnum):
    """Ordered: each role may do everything the roles below it may."""

    VIEWER = 1
    TECHNICIAN = 2  # work orders, and a silent test on a siren it has an open order for
    OPERATOR = 3
    ADMIN = 4

    @classmethod
    def parse(cls, name: str) -> Role:
        return cls[name.upper()]


def hash_password(password: str) -> str:
    return ARGON2.hash(password)


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches `stored` (argon2id, or the legacy scrypt scheme)."""
    if stored.startswith("scrypt$"):
        return _verify_scrypt(password, stored)
    try:
        return ARGON2.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    if stored.startswith("scrypt$"):
        return True
    try:
        return ARGON2.check_needs_rehash(stored)
    except InvalidHashError:
        return True


def _verify_scrypt(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n),
                                r=int(r), p=int(p), dklen=len(expected), maxmem=2**28)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def legacy_scrypt_hash(password: str, n: int = 2**14) -> str:
    """A hash in the scheme of earlier versions (for tests of the upgrade path)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=8, p=1, dklen=32)
    encode = base64.b64encode
    return f"scrypt${n}$8$1${encode(salt).decode()}${encode(digest).decode()}"


@dataclass(frozen=True)
class Principal:
    username: str
    role: Role


@dataclass
class Session:
    token: str
    principal: Principal
    issued_at: float
    expires_at: float  # absolute end, whatever the use
    last_used: float


class TokenStore:
    """Live sessions: absolute lifetime, idle timeout, a cap per user (never across users)."""

    def __init__(self, ttl_s: float, idle_s: float, per_user: int) -> None:
        self.ttl_s = ttl_s
        self.idle_s = idle_s
        self.per_user = per_user
        self._tokens: dict[str, Session] = {}
        self._by_user: dict[str, OrderedDict[str, None]] = {}  # oldest first

    def issue(self, principal: Principal) -> Session:
        now = time.time()
        mine = self._by_user.setdefault(principal.username, OrderedDict())
        for token in list(mine):  # forget the user's own expired sessions first
            if not self._valid(self._tokens[token], now):
                self._drop(token)
        while len(mine) >= self.per_user:
            self._drop(next(iter(mine)))  # the user's own oldest: nobody else's
        session = Session(secrets.token_urlsafe(32), principal, now, now + self.ttl_s, now)
        self._tokens[session.token] = session
        mine[session.token] = None
        return session

    def adopt(self, session: Session) -> None:
        """A session another node of the cluster made (security/sessions.py)."""
        self._tokens[session.token] = session
        self._by_user.setdefault(session.principal.username, OrderedDict())[session.token] = None

    def _valid(self, session: Session, now: float) -> bool:
        return now < session.expires_at and now - session.last_used < self.idle_s

    def resolve(self, token: str, touch: bool = True) -> Principal | None:
        session = self._tokens.get(token)
        if session is None:
            return None
        now = time.time()
        if not self._valid(session, now):
            self._drop(token)
            return None
        if touch:
            session.last_used = now
        return session.principal

    def session(self, token: str) -> Session | None:
        return self._tokens.get(token)

    def revoke(self, token: str) -> bool:
        if token not in self._tokens:
            return False
        self._drop(token)
        return True

    def revoke_user(self, username: str) -> int:
        tokens = list(self._by_user.get(username, ()))
        for token in tokens:
            self._drop(token)
        return len(tokens)

    def _drop(self, token: str) -> None:
        session = self._tokens.pop(token, None)
        if session is not None:
            mine = self._by_user.get(session.principal.username)
            if mine is not None:
                mine.pop(token, None)
                if not mine:
                    del self._by_user[session.principal.username]

    def count(self, username: str | None = None) -> int:
        if username is None:
            return len(self._tokens)
        return len(self._by_user.get(username, ()))


@dataclass
class _Failures:
    count: int = 0
    first_at: float = 0.0
    blocked_until: float = 0.0
    throttled: int = 0  # attempts refused while waiting (they still say "attack")


@dataclass
class LoginThrottle:
    """Failed logins per source address and per username: after `free_failures`, each further
    attempt must wait a delay that doubles (up to `max_delay_s`); after `lockout_failures`
    the key is locked for `lockout_s`. A success clears the username and the address.
    While a key waits, even the right password is refused (429), so guessing gains nothing."""

    free_failures: int = 5
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    lockout_failures: int = 1 << 30  # no lockout unless asked for (see LoginConfig)
    lockout_s: float = 900.0
    window_s: float = 900.0
    max_keys: int = 100_000  # memory bound under a spray from many addresses
    _keys: OrderedDict[str, _Failures] = field(default_factory=OrderedDict)

    def wait_s(self, *keys: str) -> float:
        """Seconds to wait before these keys may try again (0: go ahead)."""
        now = time.time()
        waits = [f.blocked_until - now for k in keys if (f := self._keys.get(k)) is not None]
        return max([0.0, *waits])

    def refused(self, *keys: str) -> int:
        """Count an attempt refused while waiting; the highest attempt count among the keys."""
        worst = 0
        for key in keys:
            failures = self._keys.get(key)
            if failures is not None:
                failures.throttled += 1
                worst = max(worst, failures.count + failures.throttled)
        return worst

    def failed(self, *keys: str) -> int:
        """Count a failure; the highest failure count among the keys."""
        now = time.time()
        worst = 0
        for key in keys:
            failures = self._keys.get(key)
            if failures is None or now - failures.first_at > self.window_s:
                failures = _Failures(0, now)
            self._keys[key] = failures
            self._keys.move_to_end(key)
            failures.count += 1
            if failures.count >= self.lockout_failures:
                failures.blocked_until = now + self.lockout_s
            elif failures.count > self.free_failures:
                extra = failures.count - self.free_failures - 1
                failures.blocked_until = now + min(self.max_delay_s,
                                                   self.base_delay_s * 2 ** min(extra, 30))
            worst = max(worst, failures.count)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return worst

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._keys.pop(key, None)


# Compared against when the user does not exist, so a login takes as long either way.
DUMMY_HASH = hash_password("not a real password")
