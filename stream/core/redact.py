"""Keep credentials out of anything printed or logged."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@\s:]*)(?::[^/@\s]*)?@")
_SECRET_QUERY = re.compile(r"(?i)([?&](?:password|passwd|pwd|token|key|apikey|api_key)=)[^&\s]*")


def redact(text: str) -> str:
    """Replace URL passwords (``rtsp://user:pw@host``) and secret query values with ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@" if m["user"] else f"{m['scheme']}***@", text)
    return _SECRET_QUERY.sub(r"\1***", text)
