"""Log in, log out, revoke: sessions with throttled logins.

A login is checked in this order, cheapest first, so guessing and floods cost the gateway
little: field lengths (before any hashing or auditing), then the throttle for the source
address and the username (429 with Retry-After, before the password is even looked at, so
the right password waits too), then the password hash (off the event loop).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from pydantic import BaseModel, Field

from siren_gateway.api.deps import Admin, BearerToken, GatewayDep, Viewer, client_address
from siren_gateway.live.bus import SecurityEvent
from siren_gateway.security.auth import MAX_PASSWORD, MAX_USERNAME, Principal, Role

router = APIRouter(tags=["auth"])


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="seconds until the absolute end of the session")
    idle_timeout_s: int
    role: str
    username: str


class LogoutOut(BaseModel):
    revoked: bool


class RevokeIn(BaseModel):
    username: Annotated[str, Field(min_length=1, max_length=MAX_USERNAME)]


class RevokeOut(BaseModel):
    username: str
    revoked: int


def _throttled(wait_s: float) -> HTTPException:
    seconds = max(1, int(wait_s + 0.999))
    return HTTPException(429, f"too many failed logins: try again in {seconds} s",
                         headers={"Retry-After": str(seconds)})


@router.post("/auth/token", responses={429: {"description": "too many failed logins"}})
async def login(request: Request, gateway: GatewayDep,
                username: Annotated[str, Form(max_length=4096)],
                password: Annotated[str, Form(max_length=4096)]) -> TokenOut:
    source = client_address(request)
    shown = username[:MAX_USERNAME]
    if not username or len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD:
        await gateway.audit.record(shown or "?", "auth.login", "refused: malformed",
                                   username_length=len(username))
        raise HTTPException(422, f"username is 1 to {MAX_USERNAME} characters, password at "
                            f"most {MAX_PASSWORD}")
    keys = (f"address {source}", f"user {username}")
    wait = max(gateway.login_by_address.wait_s(keys[0]),
               gateway.login_by_username.wait_s(keys[1]))
    if wait > 0:
        attempts = max(gateway.login_by_address.refused(keys[0]),
                       gateway.login_by_username.refused(keys[1]))
        _alert_if_attack(gateway, keys, attempts, shown)
        raise _throttled(wait)  # (not audited one by one: the failures that led here are)
    user = await gateway.credentials.verify(username, password)
    if user is None:
        failures = max(gateway.login_by_address.failed(keys[0]),
                       gateway.login_by_username.failed(keys[1]))
        await gateway.audit.record(shown, "auth.login", "refused: bad credentials",
                                   failures=failures)
        _alert_if_attack(gateway, keys, failures, shown)
        raise HTTPException(401, "wrong username or password",
                            headers={"WWW-Authenticate": "Bearer"})
    gateway.login_by_address.succeeded(keys[0])
    gateway.login_by_username.succeeded(keys[1])
    principal = Principal(user.username, Role.parse(user.role))
    session = gateway.tokens.issue(principal)
    await gateway.audit.record(principal, "auth.login", "ok")
    api = gateway.site.config.api
    return TokenOut(access_token=session.token, expires_in=int(api.token_ttl_s),
                    idle_timeout_s=int(api.token_idle_s), role=user.role,
                    username=user.username)


def _alert_if_attack(gateway: GatewayDep, keys: tuple[str, str], attempts: int,
                     shown: str) -> None:
    if attempts < gateway.site.config.api.login.alert_after:
        return
    # The key under the heavier throttle is the one being attacked.
    subject = keys[0] if (gateway.login_by_address.wait_s(keys[0])
                          >= gateway.login_by_username.wait_s(keys[1])) else keys[1]
    gateway.bus.publish(SecurityEvent(
        "login_attack", subject, f"{attempts} failed or refused logins ({subject}, the last "
        f"for user {shown!r})", datetime.now(UTC)))


@router.post("/auth/logout")
async def logout(gateway: GatewayDep, who: Viewer, token: BearerToken) -> LogoutOut:
    """End this session on the server: the token (and any stream opened with it) stops."""
    revoked = gateway.tokens.revoke(token or "")
    await gateway.audit.record(who, "auth.logout", "ok")
    return LogoutOut(revoked=revoked)


@router.post("/auth/revoke")
async def revoke(body: RevokeIn, gateway: GatewayDep, who: Admin) -> RevokeOut:
    """End every session of a user (a lost laptop, a leaver)."""
    count = gateway.tokens.revoke_user(body.username)
    await gateway.audit.record(who, "auth.revoke", "ok", target=f"user {body.username}",
                               sessions=count)
    return RevokeOut(username=body.username, revoked=count)
