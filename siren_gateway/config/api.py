"""The API's listener, sessions, login throttling, and its users."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from siren_gateway.config.common import Port, StrictModel


class LoginConfig(StrictModel):
    """Throttling of failed logins (per source address and per username)."""

    free_failures: int = Field(default=5, ge=1, le=1000)  # before any delay
    base_delay_s: float = Field(default=1.0, gt=0, le=3600)  # doubles with each failure
    max_delay_s: float = Field(default=60.0, gt=0, le=86400)
    # A source address with this many failures in the window is locked out for lockout_s
    # (usernames only get the growing delay: a lockout would let anyone lock an operator out).
    lockout_after: int = Field(default=50, ge=2, le=100_000)
    lockout_s: float = Field(default=900.0, ge=1, le=7 * 86400)
    window_s: float = Field(default=900.0, ge=10, le=7 * 86400)
    alert_after: int = Field(default=20, ge=1, le=100_000)  # login_attack alert


class ApiConfig(StrictModel):
    host: str = "127.0.0.1"
    port: Port = 8080
    # A session's absolute lifetime, and how long it may go unused.
    token_ttl_s: float = Field(default=8 * 3600, ge=60, le=7 * 86400)
    token_idle_s: float = Field(default=2 * 3600, ge=60, le=7 * 86400)
    tokens_per_user: int = Field(default=20, ge=1, le=10_000)
    # Request bodies larger than this are refused (413) while being read, before anything else.
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=1 << 30)
    # HTTPS: the API serves TLS itself when both are given (PEM files).
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Reverse proxies whose X-Forwarded-For / -Proto are believed (addresses, or "*").
    trusted_proxies: list[Annotated[str, Field(max_length=64)]] = []
    login: LoginConfig = LoginConfig()

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self


class UserConfig(StrictModel):
    username: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
    # technician: viewer, plus its own work orders and silent tests of their sirens
    role: Literal["viewer", "technician", "operator", "admin"]
    # argon2id hash from `siren-gateway hash-password` (scrypt hashes of earlier versions are
    # still accepted and upgraded at login); never a plain password
    password_hash: Annotated[str, Field(
        max_length=512,
        pattern=r"^(\$argon2id\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"
                r"|scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+)$")]
