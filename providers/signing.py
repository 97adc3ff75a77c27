"""Standard Webhooks signatures (https://www.standardwebhooks.com), as
OpenAI signs its webhooks: `webhook-id`, `webhook-timestamp` (Unix
seconds) and `webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">`, the key being the secret's bytes after its
`whsec_` prefix (base64), or the secret's own bytes without one.

ftctl signs what its URL hooks send with it, and the emulators sign the
webhooks they deliver; receiving ones are verified with the provider's own
SDK (providers.openai).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time

PREFIX = "whsec_"


def secret_bytes(secret: str) -> bytes:
    if secret.startswith(PREFIX):
        try:
            return base64.b64decode(secret[len(PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a whsec_ secret must be base64 after its prefix") from None
    return secret.encode()


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(msg_id: str, body: bytes, secret: str | None, timestamp: int | None = None) -> dict[str, str]:
    """The Standard Webhooks headers for one delivery (a retry keeps its id
    and takes a new timestamp); unsigned without a secret."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    out = {"webhook-id": msg_id, "webhook-timestamp": str(ts)}
    if secret:
        out["webhook-signature"] = signature(secret, msg_id, ts, body)
    return out
