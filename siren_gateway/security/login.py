"""Logging in: the policy, apart from HTTP.

Checked in this order, cheapest first, so guessing and floods cost the gateway little: field
lengths (before any hashing or auditing), then the throttles for the source address and the
username (before the password is even looked at, so the right password waits too), then the
password hash (off the event loop). Repeated failures publish a `login_attack` security event
(the alert engine raises it).
"""

from __future__ import annotations

from datetime import UTC, datetime

from siren_gateway.config.api import ApiConfig, UserConfig
from siren_gateway.live.bus import Bus, SecurityEvent
from siren_gateway.security.audit import AuditLog
from siren_gateway.security.auth import (
    MAX_PASSWORD,
    MAX_USERNAME,
    LoginThrottle,
    Principal,
    Role,
    Session,
    TokenStore,
)
from siren_gateway.security.credentials import Credentials


class LoginRefused(Exception):
    """A login that did not succeed, and why (the API chooses the status)."""


class Malformed(LoginRefused):
    pass


class Throttled(LoginRefused):
    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        super().__init__(f"too many failed logins: try again in {self.retry_after_s} s")

    @property
    def retry_after_s(self) -> int:
        return max(1, int(self.wait_s + 0.999))


class BadCredentials(LoginRefused):
    pass


class Logins:
    def __init__(self, config: ApiConfig, credentials: Credentials, tokens: TokenStore,
                 audit: AuditLog, bus: Bus) -> None:
        self.config = config
        self.credentials = credentials
        self.tokens = tokens
        self.audit = audit
        self.bus = bus
        login = config.login
        self.by_address = LoginThrottle(
            login.free_failures, login.base_delay_s, login.max_delay_s, login.lockout_after,
            login.lockout_s, login.window_s)
        self.by_username = LoginThrottle(
            login.free_failures, login.base_delay_s, login.max_delay_s,
            window_s=login.window_s)

    async def attempt(self, username: str, password: str, source: str
                      ) -> tuple[Session, UserConfig]:
        """A new session for the user, or LoginRefused (Malformed, Throttled, BadCredentials)."""
        shown = username[:MAX_USERNAME]
        if not username or len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD:
            await self.audit.record(shown or "?", "auth.login", "refused: malformed",
                                    username_length=len(username))
            raise Malformed(f"username is 1 to {MAX_USERNAME} characters, password at most "
                            f"{MAX_PASSWORD}")
        keys = (f"address {source}", f"user {username}")
        wait = max(self.by_address.wait_s(keys[0]), self.by_username.wait_s(keys[1]))
        if wait > 0:
            attempts = max(self.by_address.refused(keys[0]), self.by_username.refused(keys[1]))
            self._alert_if_attack(keys, attempts, shown)
            raise Throttled(wait)  # (not audited one by one: the failures that led here are)
        user = await self.credentials.verify(username, password)
        if user is None:
            failures = max(self.by_address.failed(keys[0]), self.by_username.failed(keys[1]))
            await self.audit.record(shown, "auth.login", "refused: bad credentials",
                                    failures=failures)
            self._alert_if_attack(keys, failures, shown)
            raise BadCredentials("wrong username or password")
        self.by_address.succeeded(keys[0])
        self.by_username.succeeded(keys[1])
        principal = Principal(user.username, Role.parse(user.role))
        session = self.tokens.issue(principal)
        await self.audit.record(principal, "auth.login", "ok")
        return session, user

    def _alert_if_attack(self, keys: tuple[str, str], attempts: int, shown: str) -> None:
        if attempts < self.config.login.alert_after:
            return
        # The key under the heavier throttle is the one being attacked.
        subject = keys[0] if (self.by_address.wait_s(keys[0])
                              >= self.by_username.wait_s(keys[1])) else keys[1]
        self.bus.publish(SecurityEvent(
            "login_attack", subject, f"{attempts} failed or refused logins ({subject}, the "
            f"last for user {shown!r})", datetime.now(UTC)))
