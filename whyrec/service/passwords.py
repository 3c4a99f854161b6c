"""Staff passwords are kept only as salted PBKDF2-SHA256 hashes (standard library, no extra dependency)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

ALGORITHM = "pbkdf2_sha256"
ITERATIONS = 200_000


def hash_password(password: str, iterations: int = ITERATIONS) -> str:
    """`pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>`: what WHYREC_STAFF_PASSWORD_HASH holds."""
    if not password:
        raise ValueError("the password is empty")
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{ALGORITHM}${iterations}${salt.hex()}${digest.hex()}"


def verify_password(password: str, hashed: str | None) -> bool:
    """False for a wrong password, and for an unset or malformed hash (a login that cannot succeed)."""
    if not hashed or not password:
        return False
    try:
        algorithm, iterations, salt, expected = hashed.split("$")
        if algorithm != ALGORITHM:
            return False
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(digest.hex(), expected)
