"""The model host's command line: ``python -m stream.cli.host --endpoint ipc://DIR/models.sock``
(``cer-stream serve`` starts it; :mod:`stream.serve.model_host` is the host).

The supervisor writes one JSON line on stdin, ``{"argv": [...]}``: the analyzer flags every
stream gets (the models they name are loaded before ``ready``); stdin stays open, and its end
(the supervisor is gone) stops the host.  Records (``type: "host"``) go to stdout as JSON lines.
Exit status 0 when stopped (SIGINT, SIGTERM, end of stdin), 2 for bad input.

With ``--own-endpoint-dir`` the endpoint's directory is the host's to remove as it exits, for
whatever reason: the supervisor makes it (:func:`stream.core.wire.private_endpoint`) and removes
it when it stops the host, but a supervisor that was killed (or a Ray actor holding one) cannot,
and its host, which then stops at the end of its stdin, is the last one that knows the directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import signal
import stat
import sys
import threading
from pathlib import Path

#: The name of every directory :func:`stream.core.wire.private_endpoint` makes starts so.
ENDPOINT_DIR_PREFIX = "cer-host-"


def preload_specs(argv: list[str]) -> dict[str, list[bytes]]:
    """The pickled model specs analyzers run with ``argv`` will ask for (``ValueError``: flags the
    analyzer does not take)."""
    import contextlib
    import io

    from stream.cli.flags import pipeline_options
    from stream.cli.main import run_parser
    from stream.runtime.build import host_specs

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = run_parser().parse_args(["--video", "unused.mp4", *argv])
    except SystemExit:
        lines = err.getvalue().strip().splitlines() or ["bad analyzer flags"]
        raise ValueError(lines[-1].split("error: ", 1)[-1]) from None
    # every model the flags name, even with --no-audio: an analyzer prepares its audio and text
    # modalities whether or not its source has sound, and its start would wait for their loading
    specs = host_specs(pipeline_options(args))
    return {kind: [pickle.dumps(s, protocol=5) for s in values] for kind, values in specs.items()}


def owned_endpoint_dir(endpoint: str) -> Path | None:
    """The directory of ``endpoint`` (``ipc://DIR/NAME``) when it is one a supervisor made for
    its host: named ``cer-host-*``, a directory (not a link to one) of this user, mode 0700;
    else None."""
    if not endpoint.startswith("ipc://"):
        return None
    folder = Path(endpoint[len("ipc://") :]).parent
    try:
        st = os.lstat(folder)
    except OSError:
        return None
    if (
        folder.name.startswith(ENDPOINT_DIR_PREFIX)
        and stat.S_ISDIR(st.st_mode)
        and st.st_uid == os.getuid()
        and stat.S_IMODE(st.st_mode) == 0o700
    ):
        return folder
    return None


def remove_endpoint_dir(endpoint: str) -> bool:
    """Remove the socket file of ``endpoint`` and then its directory, if that directory is still
    one :func:`owned_endpoint_dir` accepts; never anything else (a directory that holds other
    files is left as it is).  Whether the directory is gone."""
    folder = owned_endpoint_dir(endpoint)
    if folder is None:
        return False
    sock = Path(endpoint[len("ipc://") :])
    try:
        if stat.S_ISSOCK(os.lstat(sock).st_mode):
            os.unlink(sock)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    try:
        os.rmdir(folder)
    except OSError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stream.cli.host", description="cer-stream serve's model host")
    p.add_argument("--endpoint", required=True, help="the ZeroMQ endpoint to bind (ipc://PATH)")
    p.add_argument("--no-stdin", action="store_true", help="read no flags from stdin and preload nothing")
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=None,
        help="longest wait of a request for others to batch with (default 3)",
    )
    p.add_argument(
        "--own-endpoint-dir",
        action="store_true",
        help="remove the endpoint's socket and private directory (cer-host-*, 0700) on exit",
    )
    args = p.parse_args(argv)
    if args.own_endpoint_dir and owned_endpoint_dir(args.endpoint) is None:
        sys.stderr.write(
            f"cer-stream model host: error: --own-endpoint-dir: {args.endpoint} is not in a private "
            f"{ENDPOINT_DIR_PREFIX}* directory (0700, this user's)\n"
        )
        return 2
    try:
        return _run(args)
    finally:
        if args.own_endpoint_dir:
            remove_endpoint_dir(args.endpoint)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    from stream.serve.child import _read_line

    flags: list[str] = []
    fd = sys.stdin.fileno()
    if not args.no_stdin:
        try:
            flags = json.loads(_read_line(fd))["argv"]
            if not isinstance(flags, list) or not all(isinstance(a, str) for a in flags):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            sys.stderr.write('cer-stream model host: error: expected a JSON line {"argv": [...]} on stdin\n')
            return 2
    try:
        preload = preload_specs(flags)
    except ValueError as exc:
        sys.stderr.write(f"cer-stream model host: error: analyzer flags: {exc}\n")
        return 2

    from stream.serve.model_host import BATCH_WAIT_MS, ModelHost

    wait = BATCH_WAIT_MS if args.batch_wait_ms is None else args.batch_wait_ms
    if not 0 <= wait <= 1000:
        sys.stderr.write("cer-stream model host: error: --batch-wait-ms must be in [0, 1000]\n")
        return 2
    try:
        host = ModelHost(args.endpoint, preload=preload, batch_wait_ms=wait)
    except Exception as exc:  # the endpoint cannot be bound
        sys.stderr.write(f"cer-stream model host: error: cannot listen on {args.endpoint}: {exc}\n")
        return 2

    def stop(*_: object) -> None:
        host.stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if not args.no_stdin:

        def watch() -> None:
            try:
                while os.read(fd, 4096):
                    pass
            except OSError:
                pass
            host.stop()

        threading.Thread(target=watch, name="cer-host-stdin", daemon=True).start()
    return host.serve()


__all__ = ["main", "owned_endpoint_dir", "preload_specs", "remove_endpoint_dir"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
