"""What the API's routes share: the service and settings of the app, staff logins by role, the
per-client rate limit, the path and query parameters, and the error body every 4xx/5xx has."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, BeforeValidator

from whyrec.core.config import Settings
from whyrec.core.protocol import NO_CONTROL
from whyrec.service.accounts import Role, StaffAccount, authenticate
from whyrec.service.ratelimit import RateLimiter, retry_after_header
from whyrec.service.service import WhyrecService

MAX_K = 50


def _iso_time(value):
    """The schema says date-time: a bare number ("0.5") is refused rather than read as Unix seconds."""
    if isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit():
        raise ValueError("expected an ISO 8601 date-time such as 2026-11-24T15:30:00Z")
    return value


IsoTime = Annotated[datetime, BeforeValidator(_iso_time)]

class ErrorOut(BaseModel):
    detail: str




def get_service(request: Request) -> WhyrecService:
    return request.app.state.service


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


_basic = HTTPBasic(auto_error=False, description="Staff login: an account of WHYREC_STAFF_ACCOUNTS, or WHYREC_STAFF_USER / WHYREC_STAFF_PASSWORD_HASH")


def require_role(role: Role):
    """A dependency: the logged-in staff account when it has `role`; 401 without a valid login, 403 without the role."""

    def staff_with_role(request: Request, credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)]) -> StaffAccount:
        accounts: dict[str, StaffAccount] = request.app.state.accounts
        if not accounts:
            detail = "staff login is not configured on this server (set WHYREC_STAFF_ACCOUNTS or WHYREC_STAFF_PASSWORD_HASH; `whyrec hash-password` makes a hash)"
        elif credentials is None:
            detail = f"this endpoint is for staff with the '{role.value}' role: log in with HTTP Basic credentials"
        elif (account := authenticate(accounts, credentials.username, credentials.password)) is None:
            detail = "wrong staff user name or password"
        elif role not in account.roles:
            have = ", ".join(sorted(r.value for r in account.roles))
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"staff account '{account.name}' lacks the '{role.value}' role this endpoint needs (it has: {have})")
        else:
            return account
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": 'Basic realm="whyrec staff"'})

    return staff_with_role


def rate_limited(request: Request) -> None:
    """Per client address, on the public shopper endpoints: 429 with Retry-After beyond the configured rate."""
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is None:
        return
    client = request.client.host if request.client else "unknown"
    wait = limiter.acquire(client)
    if wait > 0:
        settings: Settings = request.app.state.settings
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many requests from {client}: at most {settings.rate_limit_per_minute} a minute (bursts of {settings.rate_limit_burst}); retry in {retry_after_header(wait)} s",
            headers={"Retry-After": retry_after_header(wait)},
        )


Service = Annotated[WhyrecService, Depends(get_service)]
SupportStaff = Annotated[StaffAccount, Depends(require_role(Role.SUPPORT))]
PromptEngineer = Annotated[StaffAccount, Depends(require_role(Role.PROMPT_ENGINEER))]
RateLimited = [Depends(rate_limited)]
UserId = Annotated[str, Path(min_length=1, max_length=200, pattern=NO_CONTROL, description="shopper id")]
ItemId = Annotated[str, Path(min_length=1, max_length=200, pattern=NO_CONTROL, description="item id")]
Words = Annotated[str, Query(max_length=500, pattern=NO_CONTROL, description="the shopper's words, e.g. 'something for my desk'")]
K = Annotated[int, Query(ge=1, le=MAX_K, description="slate size")]
ERRORS = {404: {"model": ErrorOut}, 422: {"model": ErrorOut}}
PUBLIC = {**ERRORS, 429: {"model": ErrorOut, "description": "rate limit for this client address reached (see Retry-After)"}}
STAFF = {401: {"model": ErrorOut}, 403: {"model": ErrorOut}}
