"""Users, roles, password hashes and bearer tokens.

Passwords are stored as scrypt hashes (standard library, memory-hard). Tokens are random,
short-lived and kept in memory: a gateway restart logs everybody out, which is acceptable for a
control room and means no signing key to manage.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


class Role(enum.IntEnum):
    """Ordered: each role may do everything the roles below it may."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: str) -> Role:
        return cls[name.upper()]


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            dklen=32)
    encode = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt).decode()}${encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                                p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


@dataclass(frozen=True)
class Principal:
    username: str
    role: Role


@dataclass(frozen=True)
class IssuedToken:
    token: str
    principal: Principal
    expires_at: float


class TokenStore:
    def __init__(self, ttl_s: float, max_tokens: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_tokens = max_tokens
        self._tokens: dict[str, IssuedToken] = {}

    def issue(self, principal: Principal) -> IssuedToken:
        now = time.time()
        if len(self._tokens) >= self.max_tokens:
            self._tokens = {k: v for k, v in self._tokens.items() if v.expires_at > now}
            if len(self._tokens) >= self.max_tokens:  # still full: the oldest goes
                oldest = min(self._tokens.values(), key=lambda t: t.expires_at)
                del self._tokens[oldest.token]
        issued = IssuedToken(secrets.token_urlsafe(32), principal, now + self.ttl_s)
        self._tokens[issued.token] = issued
        return issued

    def resolve(self, token: str) -> Principal | None:
        issued = self._tokens.get(token)
        if issued is None:
            return None
        if issued.expires_at <= time.time():
            del self._tokens[token]
            return None
        return issued.principal


# Compared against when the user does not exist, so a login takes as long either way.
DUMMY_HASH = hash_password("not a real password")
