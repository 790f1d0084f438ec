"""``python -m quiesce``: the same as the ``quiesce`` command."""

import sys

from quiesce.cli import main

sys.exit(main())
