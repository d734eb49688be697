"""The command line: flags become options; nothing below this package knows argparse."""

from stream.cli.main import main

__all__ = ["main"]
