"""The command line: flags become options; nothing below this package knows argparse.

``main`` scrubs credentials from this process's own command line (what ``ps`` shows) before
anything else is imported, so no child forked while modules load can show them either.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        from stream.core.redact import redact_process_args

        redact_process_args()
    try:
        from stream.cli.main import main as run

        return run(argv)
    except KeyboardInterrupt:  # Ctrl-C before the run's own handler is in place (imports, model loading)
        import sys

        sys.stderr.write("cer-stream: interrupted\n")
        return 130


__all__ = ["main"]
