"""``python -m stream.host --endpoint ipc://DIR/models.sock``: the model host of ``cer-stream
serve`` (its flags are read by :mod:`stream.cli.host`, as every command's are)."""

import sys

from stream.cli.host import main

sys.exit(main())
