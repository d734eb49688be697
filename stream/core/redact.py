"""Keep credentials out of anything printed or logged."""

from __future__ import annotations

import re

# The user information runs to the LAST "@" of the URL (a password may hold "@", ":" or "/"); the
# user name stops at the first ":" or "/" ("/" first: an "@" in the path, no user information).
# A match can begin only at "://", so the time is linear in the text's length: a pattern that
# began with the scheme tried every letter of a long word as a scheme's first (0.5 s for one
# 20 kB warning).
_USERINFO = re.compile(r"(?<=[a-zA-Z0-9+.-])://(?P<user>[^\s\"'<>/:]*)(?::[^\s\"'<>]*)?@")
_SECRET_QUERY = re.compile(r"(?i)([?&](?:password|passwd|pwd|token|key|apikey|api_key)=)[^&\s]*")


def _userinfo(m: re.Match[str]) -> str:
    return f"://{m['user']}:***@" if m["user"] else "://***@"


def redact(text: str) -> str:
    """Replace URL passwords (``rtsp://user:pw@host``) and secret query values with ``***``."""
    text = _USERINFO.sub(_userinfo, text)
    return _SECRET_QUERY.sub(r"\1***", text)


def redact_process_args() -> bool:
    """Redact this process's command line as other processes see it (``ps``,
    ``/proc/PID/cmdline``): the argument memory is rewritten in place, so a URL
    password given on the command line does not stay readable by other users.
    Linux only; returns whether anything changed.  ``sys.argv`` is left as it is."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        # fields after the command name start at field 3 (state); arg_start/arg_end are 48/49
        start, end = int(fields[47 - 2]), int(fields[48 - 2])
        with open("/proc/self/cmdline", "rb") as f:
            old = f.read()
    except (OSError, IndexError, ValueError):
        return False
    if end <= start or len(old) != end - start:
        return False
    new = b"\0".join(
        redact(a.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape") for a in old.split(b"\0")
    )
    if new == old or len(new) > len(old):
        return False
    import ctypes

    ctypes.memmove(start, new + b"\0" * (len(old) - len(new)), len(old))
    return True


#: The environment variable an RTSP password can come from, so it never appears on a command line.
RTSP_PASSWORD_ENV = "CER_STREAM_RTSP_PASSWORD"


def with_env_password(url: str, env: str = RTSP_PASSWORD_ENV) -> str:
    """``rtsp://user@host/...`` with the password from the environment variable ``env`` put in
    (percent-encoded); a URL that already has a password, has no user, or runs without the
    variable set is returned as it is."""
    import os
    from urllib.parse import quote

    password = os.environ.get(env)
    scheme, sep, rest = url.partition("://")
    if not password or not sep:
        return url
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not at or ":" in userinfo:
        return url
    return f"{scheme}://{userinfo}:{quote(password, safe='')}@{host}{slash}{path}"


__all__ = ["RTSP_PASSWORD_ENV", "redact", "redact_process_args", "with_env_password"]
