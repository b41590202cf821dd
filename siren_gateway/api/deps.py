"""Dependencies shared by the routes: the gateway, and who is asking with which role."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import OAuth2PasswordBearer

from siren_gateway.auth import Principal, Role
from siren_gateway.gateway import Gateway

oauth2 = OAuth2PasswordBearer(tokenUrl="/api/auth/token", auto_error=False)


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(_gateway)]


def require(role: Role) -> Callable[..., Principal]:
    """A dependency that admits a valid bearer token of at least `role`."""

    def check(gateway: GatewayDep, token: Annotated[str | None, Depends(oauth2)]) -> Principal:
        principal = gateway.tokens.resolve(token) if token else None
        if principal is None:
            raise HTTPException(401, "log in first: missing, unknown or expired bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        if principal.role < role:
            raise HTTPException(403, f"this needs the {role.name.lower()} role; "
                                f"{principal.username} is {principal.role.name.lower()}")
        return principal

    return check


Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
