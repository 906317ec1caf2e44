"""``python -m nlpcal`` is the ``nlpcal`` command."""

import sys

from nlpcal.cli import main

sys.exit(main())
