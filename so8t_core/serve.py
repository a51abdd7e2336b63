"""``python -m so8t_core.serve``: the /think server of ``so8t_core.ops.server``."""

import sys

from so8t_core.ops.server import main

if __name__ == "__main__":
    sys.exit(main())
