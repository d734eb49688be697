"""The command line: flags become options; nothing below this package knows argparse.

``main`` scrubs credentials from this process's own command line (what ``ps`` shows) before
anything else is imported, so no child forked while modules load can show them either.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        from stream.core.redact import redact_process_args

        redact_process_args()
    from stream.cli.main import main as run

    return run(argv)


__all__ = ["main"]
