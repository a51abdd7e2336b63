"""``python -m so8t_core.safety``: the command line in ``so8t_core.safety.cli``."""

import sys

from so8t_core.safety.cli import main

sys.exit(main())
