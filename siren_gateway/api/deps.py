from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from siren_gateway.gateway import Gateway


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(_gateway)]
