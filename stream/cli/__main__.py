"""`python -m stream.cli`."""

import sys

from stream.cli.main import main

sys.exit(main())
