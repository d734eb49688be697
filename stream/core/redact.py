"""Keep credentials out of anything printed or logged, and out of every command line.

Three layers, because a password may hold any character (a space, quotes, ``/``, ``@``, ``%``):

* A string known to BE one URL (a source, a command-line argument) is parsed by its structure
  (:func:`split_credentials`): the user information is everything between ``://`` and the URL's
  last ``@``, so no character of the password can end it early.  :func:`redact_url` masks it,
  :func:`ffmpeg_url` rebuilds the URL with user and password percent-encoded for FFmpeg.
* Free text (an FFmpeg error, a log line) cannot be parsed that way: where a URL's password
  holds a space, nothing in the text says where it ends.  So every password this process is
  given is remembered (:func:`remember_secret`, :func:`remember_url`: raw, percent-decoded and
  percent-encoded forms) and :func:`redact` always replaces those, wherever they appear.
  Each process registers its own: the analyzer when it builds its ``RtspSource``, ``serve``
  when it loads its streams, a capture process from its ``CaptureConfig``.
* A pattern catches URLs with user information in free text whose password was never given to
  this process (up to the first space or quote).

Everything stays linear in the text's length (a warning may carry a 20 kB payload).
"""

from __future__ import annotations

import re
import threading
from typing import NamedTuple
from urllib.parse import quote, unquote, unquote_to_bytes

# The user information runs to the LAST "@" of the URL (a password may hold "@", ":" or "/"); the
# user name stops at the first ":" or "/" ("/" first: an "@" in the path, no user information).
# A match can begin only at "://", so the time is linear in the text's length: a pattern that
# began with the scheme tried every letter of a long word as a scheme's first (0.5 s for one
# 20 kB warning).
_USERINFO = re.compile(r"(?<=[a-zA-Z0-9+.-])://(?P<user>[^\s\"'<>/:]*):(?P<password>[^\s\"'<>]*)@")
_SECRET_QUERY = re.compile(r"(?i)([?&](?:password|passwd|pwd|token|key|apikey|api_key)=)[^&\s]*")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")

#: What stands for a password.
MASK = "***"
#: Remembered secrets shorter than this are replaced only where they sit between ":" and "@"
#: (a password of one or two letters, replaced everywhere, would eat words of every message).
MIN_BARE_SECRET = 4


class Credentials(NamedTuple):
    """A URL cut at its user information: ``scheme://user[:password]@rest``, each part as written
    (``password`` is ``None`` when there is no ``:``)."""

    scheme: str
    user: str
    password: str | None
    rest: str


def split_credentials(url: str) -> Credentials | None:
    """``url``'s parts when it has user information, else ``None``.

    ``url`` must be one URL and nothing else.  The user information is everything between
    ``://`` and the LAST ``@``, the user name everything before its first ``:``: a password may
    hold any character, ``@``, ``/``, ``#``, ``?`` and spaces included.  An ``@`` after a user
    name that holds ``/``, ``?`` or ``#`` is in the path or query: no user information.  (So in
    a URL with a password or a port, an ``@`` of the path must be written ``%40``:
    ``rtsp://cam:554/a@b`` reads as user ``cam``, password ``554/a``.)"""
    scheme, sep, after = url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return None
    userinfo, at, rest = after.rpartition("@")
    if not at:
        return None
    user, colon, password = userinfo.partition(":")
    if any(c in user for c in "/?#"):
        return None
    return Credentials(scheme, user, password if colon else None, rest)


def _encode(part: str) -> str:
    """``part`` as FFmpeg wants it in a URL: ``%XX`` sequences stand for their bytes, everything
    else but letters, digits and ``-._~`` is percent-encoded (FFmpeg decodes it back)."""
    return quote(unquote_to_bytes(part), safe="")


def ffmpeg_url(url: str, password: str | None = None) -> str:
    """``url`` with its user name and password percent-encoded, so FFmpeg finds the host
    whatever the password holds (it splits a URL at the first ``/``, ``?`` or ``#``, then
    decodes the user information).  ``password`` (taken literally, e.g. from an environment
    variable) is put in when the URL has a user and no password.  A URL without user
    information is returned as it is.  Every password met is remembered (:func:`redact`)."""
    parts = split_credentials(url)
    if parts is None:
        return url
    written = parts.password
    if written is None and password:
        written = quote(password, safe="")
    if written is None:
        return url
    remember_secret(written)
    if password:
        remember_secret(password)
    return f"{parts.scheme}://{_encode(parts.user)}:{_encode(written)}@{parts.rest}"


def redact_url(url: str, mask: str = MASK) -> str:
    """``url`` (one URL, nothing else) with its password replaced by ``mask``, whatever
    characters it holds; a URL without a password is returned as it is."""
    parts = split_credentials(url)
    if parts is None or parts.password is None:
        return url
    return f"{parts.scheme}://{parts.user}:{mask}@{parts.rest}"


# --------------------------------------------------------------------------- remembered secrets
_lock = threading.Lock()
_secrets: set[str] = set()
# (the forms replaced wherever they appear, longest first; a pattern for the short ones)
_known: tuple[tuple[str, ...], re.Pattern[str] | None] = ((), None)


def remember_secret(secret: str) -> None:
    """From now on :func:`redact` replaces ``secret`` in any text, in each of the forms it may
    take there: as given, percent-decoded and percent-encoded."""
    global _known
    forms = {secret, unquote(secret), quote(secret, safe=""), _encode(secret)} - {""}
    with _lock:
        if forms <= _secrets:
            return
        _secrets.update(forms)
        ordered = sorted(_secrets, key=len, reverse=True)  # the longest form first
        bare = tuple(s for s in ordered if len(s) >= MIN_BARE_SECRET)
        short = "|".join(re.escape(s) for s in ordered if len(s) < MIN_BARE_SECRET)
        # a literal ":" first: the regular expression engine skips to each ":" of the text
        _known = (bare, re.compile(f":(?:{short})@") if short else None)


def remember_url(url: str) -> None:
    """Remember the password of ``url`` (one URL), if it has one."""
    parts = split_credentials(url.strip())
    if parts is not None and parts.password:
        remember_secret(parts.password)


def _userinfo(m: re.Match[str]) -> str:
    return f"://{m['user']}:{MASK}@"


def redact(text: str) -> str:
    """Replace every remembered secret, URL passwords (``rtsp://user:pw@host``) and secret
    query values with ``***``."""
    bare, short = _known
    for secret in bare:  # str.replace: one fast scan of the text per form
        if secret in text:
            text = text.replace(secret, MASK)
    if short is not None:
        text = short.sub(f":{MASK}@", text)
    text = _USERINFO.sub(_userinfo, text)
    return _SECRET_QUERY.sub(rf"\1{MASK}", text)


# --------------------------------------------------------------------------- command lines
def redact_arg(arg: str, mask: str = MASK) -> str:
    """One command-line argument with its password masked: a whole URL or ``--flag=URL`` is
    parsed by its structure (any character in the password), anything else is free text."""
    flag, eq, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
    # free text first: what it masks inside the user information is masked again, as a whole
    return redact(flag) + eq + redact_url(redact(value), mask)


def _masked_arg(arg: str) -> str:
    """:func:`redact_arg` no longer than ``arg`` (the memory of a command line cannot grow): a
    shorter mask for a short password, the whole argument masked as a last resort."""
    for mask in (MASK, "*"):
        new = redact_arg(arg, mask)
        if len(new.encode("utf-8", "surrogateescape")) <= len(arg.encode("utf-8", "surrogateescape")):
            return new
    return "*" * len(arg)


def redact_process_args() -> bool:
    """Redact this process's command line as other processes see it (``ps``,
    ``/proc/PID/cmdline``): the argument memory is rewritten in place, so a URL
    password given on the command line does not stay readable by other users.
    The passwords found are remembered (:func:`redact`).  Linux only; returns whether
    anything changed.  ``sys.argv`` is left as it is."""
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
    args = [a.decode("utf-8", "surrogateescape") for a in old.split(b"\0")]
    for a in args:
        remember_url(a.partition("=")[2] if a.startswith("-") else a)
    new = b"\0".join(_masked_arg(a).encode("utf-8", "surrogateescape") for a in args)
    if new == old or len(new) > len(old):
        return False
    import ctypes

    ctypes.memmove(start, new + b"\0" * (len(old) - len(new)), len(old))
    return True


#: The environment variable an RTSP password can come from, so it never appears on a command line.
RTSP_PASSWORD_ENV = "CER_STREAM_RTSP_PASSWORD"


def with_env_password(url: str, env: str = RTSP_PASSWORD_ENV) -> str:
    """:func:`ffmpeg_url` of ``url`` with the password of the environment variable ``env``
    (taken literally) for a URL that names a user and no password."""
    import os

    return ffmpeg_url(url, os.environ.get(env) or None)


__all__ = [
    "MASK",
    "RTSP_PASSWORD_ENV",
    "Credentials",
    "ffmpeg_url",
    "redact",
    "redact_arg",
    "redact_process_args",
    "redact_url",
    "remember_secret",
    "remember_url",
    "split_credentials",
    "with_env_password",
]
