"""What keeps secrets out of audit records: a deny-list of extra keys and a text scrubber.

Defence in depth, not the first line: callers never pass a token, key or secret to the audit
trail; these checks make an accident fail loudly (a denied key raises) or harmlessly (text that
looks like a bearer token, a compact JWS/JWT or a PEM private key becomes ``[redacted]``).
"""

from __future__ import annotations

import functools
import re

REDACTED = "[redacted]"

# Substrings of a normalized extra key (lowercase, without "_", "-", "."): never allowed.
_DENIED_KEY_PARTS = (
    "token",
    "secret",
    "passw",
    "passphrase",
    "privatekey",
    "privkey",
    "authorization",
    "bearer",
    "apikey",
    "accesskey",
    "sessionkey",
    "signingkey",
    "keymaterial",
    "rawkey",
    "cookie",
    "jwt",
    "jws",
)
# Whole normalized extra keys that are never allowed.
_DENIED_KEYS = frozenset(
    {"key", "keys", "pwd", "pin", "otp", "jwk", "pem", "auth", "cred", "creds", "credential"}
)

# Text that looks like a credential: a bearer header value, a compact JWS/JWT, a PEM private key.
_SECRET_TEXT = re.compile(
    r"(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}"
    r"|eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*"
    r"|-----BEGIN[A-Z ]*PRIVATE KEY-----(?:.|\n)*?(?:-----END[A-Z ]*PRIVATE KEY-----|\Z)"
)


_DENIED_PART_RE = re.compile("|".join(_DENIED_KEY_PARTS))


@functools.lru_cache(maxsize=1024)
def is_denied_extra_key(key: str) -> bool:
    """True when ``key`` names something secret-ish (token, secret, password, key material...)."""
    norm = key.lower().replace("_", "").replace("-", "").replace(".", "")
    return norm in _DENIED_KEYS or _DENIED_PART_RE.search(norm) is not None


def looks_like_secret(text: str) -> bool:
    """True when ``text`` holds something ``redact`` would replace."""
    return _SECRET_TEXT.search(text) is not None


def redact(text: str) -> str:
    """Replace anything in ``text`` that looks like a credential with ``[redacted]``."""
    return _SECRET_TEXT.sub(REDACTED, text)
