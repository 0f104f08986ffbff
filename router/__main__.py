"""``python -m router``: same as the ``router`` command."""

import sys

from .cli import main

sys.exit(main())
