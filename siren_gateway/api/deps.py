"""Dependencies shared by the routes: the gateway, and who is asking with which role."""

from __future__ import annotations

import csv
import io
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Response
from fastapi.security import OAuth2PasswordBearer

from siren_gateway.cluster.remote import CLIENT_HEADER, TOKEN_HEADER, token_matches
from siren_gateway.gateway import Gateway
from siren_gateway.security.auth import Principal, Role

oauth2 = OAuth2PasswordBearer(tokenUrl="/api/auth/token", auto_error=False)
# A refused (403) request is audited at most once per user and path in this period.
DENIED_AUDIT_PERIOD_S = 60.0
_denied_seen: OrderedDict[tuple[str, str], float] = OrderedDict()


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(_gateway)]
BearerToken = Annotated[str | None, Depends(oauth2)]


def client_address(request: Request) -> str:
    """The peer's address (the real client's when a trusted proxy forwarded it: uvicorn
    rewrites the scope from X-Forwarded-For only for `api.trusted_proxies`; or when another
    node of the cluster did, proven by the cluster secret)."""
    forwarded = request.headers.get(CLIENT_HEADER)
    if forwarded and token_matches(request.headers.get(TOKEN_HEADER),
                                   _gateway(request).cluster_secret):
        return forwarded[:100]
    return request.client.host if request.client else "unknown"


def user_agent(request: Request) -> str:
    return request.headers.get("user-agent", "")[:200]


def require(role: Role, needs: str | None = None) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits a valid bearer token of at least `role`; `needs` says what the
    refusal names, where the least role is not the whole story."""

    async def check(request: Request, gateway: GatewayDep, token: BearerToken) -> Principal:
        principal = await gateway.sessions.resolve(token) if token else None
        if principal is None:
            raise HTTPException(401, "log in first: missing, unknown or expired bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        if principal.role < role:
            await _audit_denied(request, gateway, principal, role)
            raise HTTPException(403, f"this needs the {needs or role.name.lower() + ' role'}; "
                                f"{principal.username} is {principal.role.name.lower()}")
        return principal

    return check


async def _audit_denied(request: Request, gateway: Gateway, principal: Principal,
                        needed: Role) -> None:
    key = (principal.username, f"{request.method} {request.url.path}"[:200])
    now = time.monotonic()
    last = _denied_seen.get(key)
    if last is not None and now - last < DENIED_AUDIT_PERIOD_S:
        return
    _denied_seen[key] = now
    _denied_seen.move_to_end(key)
    while len(_denied_seen) > 10_000:
        _denied_seen.popitem(last=False)
    await gateway.audit.record(principal, "access.denied", f"refused: needs {needs_name(needed)}",
                               target=key[1], source=client_address(request),
                               user_agent=user_agent(request))


def csv_download(rows: Iterable[Iterable[object]], filename: str) -> Response:
    """Rows as a CSV attachment, with a BOM so that spreadsheet programs read the Chinese names
    as UTF-8."""
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return Response("\ufeff" + out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def needs_name(role: Role) -> str:
    return role.name.lower()


Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Technician = Annotated[Principal, Depends(require(Role.TECHNICIAN))]
# Activations: operators; technicians only for silent tests of the sirens they work on.
Activator = Annotated[Principal, Depends(require(
    Role.TECHNICIAN, "operator role (a technician: silent tests of its own sirens only)"))]
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
