"""Optional API keys: off unless EBMM_API_KEYS is set; the caller's identity owns its sessions."""
from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .errors import Unauthorized
from .state import AppState, get_state

ANONYMOUS = ""
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="An API key from EBMM_API_KEYS (when keys are on)")
bearer = HTTPBearer(auto_error=False, description="The same key as `Authorization: Bearer <key>`")


def owner_of(key: str) -> str:
    """A stable, non-reversible id for a key: sessions record this, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


async def require_key(state: Annotated[AppState, Depends(get_state)],
                header_key: Annotated[str | None, Security(api_key_header)] = None,
                creds: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None) -> str:
    """-> the caller's owner id; 401 when keys are on and none (or an unknown one) is given. Async because
    it never blocks: FastAPI runs a plain function on its thread pool, a thread hop per request."""
    keys = state.settings.api_keys
    if not keys:
        return ANONYMOUS
    given = header_key or (creds.credentials if creds else None)
    challenge = {"WWW-Authenticate": 'Bearer realm="ebmm"'}
    if not given:
        raise Unauthorized("an API key is required: send X-API-Key or Authorization: Bearer",
                           "X-API-Key", None, headers=challenge)
    if not any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
        raise Unauthorized("unknown API key", "X-API-Key", "<redacted>", headers=challenge)
    return owner_of(given)


Caller = Annotated[str, Depends(require_key)]
State = Annotated[AppState, Depends(get_state)]
