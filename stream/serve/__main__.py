"""``python -m stream.serve ...``: the same as ``cer-stream serve ...``."""

import sys

from stream.core.redact import redact_process_args

redact_process_args()  # a URL password on our command line: `ps` shows *** instead

from stream.cli.offline import serve_main  # noqa: E402

sys.exit(serve_main())
