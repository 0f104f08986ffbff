"""``python -m runtime.predlog``: the prediction log's writer (started by the router)."""

import sys

from .process import main

sys.exit(main())
