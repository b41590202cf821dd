from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.security import OAuth2PasswordRequestForm

from siren_gateway.api.deps import GatewayDep
from siren_gateway.auth import DUMMY_HASH, Principal, Role, verify_password

router = APIRouter(tags=["auth"])


@router.post("/auth/token")
async def login(gateway: GatewayDep,
                form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> dict[str, Any]:
    user = gateway.users.get(form.username)
    # scrypt is deliberately slow: off the event loop, and as slow for unknown users.
    ok = await asyncio.to_thread(verify_password, form.password,
                                 user.password_hash if user else DUMMY_HASH)
    if user is None or not ok:
        await gateway.audit.record(form.username or "?", "auth.login", "refused: bad credentials")
        raise HTTPException(401, "wrong username or password",
                            headers={"WWW-Authenticate": "Bearer"})
    principal = Principal(user.username, Role.parse(user.role))
    issued = gateway.tokens.issue(principal)
    await gateway.audit.record(principal, "auth.login", "ok")
    return {"access_token": issued.token, "token_type": "bearer",
            "expires_in": int(gateway.tokens.ttl_s), "role": user.role,
            "username": user.username}
