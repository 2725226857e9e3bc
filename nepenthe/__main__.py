"""``python -m nepenthe ...``: the same as the ``nepenthe`` console script."""

import sys

from .cli import main

sys.exit(main())
