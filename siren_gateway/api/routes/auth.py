"""Log in, log out, revoke: sessions with throttled logins (the policy: security/login.py).

A malformed login answers 422, a throttled one 429 with Retry-After, a wrong password 401.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from pydantic import BaseModel, Field

from siren_gateway.api.deps import Admin, BearerToken, GatewayDep, Viewer, client_address
from siren_gateway.security.auth import MAX_USERNAME
from siren_gateway.security.login import BadCredentials, Malformed, Throttled

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


@router.post("/auth/token", responses={429: {"description": "too many failed logins"}})
async def login(request: Request, gateway: GatewayDep,
                username: Annotated[str, Form(max_length=4096)],
                password: Annotated[str, Form(max_length=4096)]) -> TokenOut:
    try:
        session, user = await gateway.logins.attempt(username, password,
                                                     client_address(request))
    except Malformed as exc:
        raise HTTPException(422, str(exc)) from None
    except Throttled as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)}
                            ) from None
    except BadCredentials as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
    await gateway.sessions.issued(session)  # (a cluster's other nodes know it too)
    api = gateway.site.config.api
    return TokenOut(access_token=session.token, expires_in=int(api.token_ttl_s),
                    idle_timeout_s=int(api.token_idle_s), role=user.role,
                    username=user.username)


@router.post("/auth/logout")
async def logout(gateway: GatewayDep, who: Viewer, token: BearerToken) -> LogoutOut:
    """End this session on the server: the token (and any stream opened with it) stops."""
    revoked = await gateway.sessions.revoke(token or "")
    await gateway.audit.record(who, "auth.logout", "ok")
    return LogoutOut(revoked=revoked)


@router.post("/auth/revoke")
async def revoke(body: RevokeIn, gateway: GatewayDep, who: Admin) -> RevokeOut:
    """End every session of a user (a lost laptop, a leaver)."""
    count = await gateway.sessions.revoke_user(body.username)
    await gateway.audit.record(who, "auth.revoke", "ok", target=f"user {body.username}",
                               sessions=count)
    return RevokeOut(username=body.username, revoked=count)
