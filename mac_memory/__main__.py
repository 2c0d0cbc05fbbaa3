"""``python -m mac_memory`` = the ``mac-memory`` command."""

import sys

from .cli import main

sys.exit(main())
