"""``python -m so8t_core.serve``: the /think server of ``so8t_core.serving.server``."""

import sys

from so8t_core.serving.server import main

if __name__ == "__main__":
    sys.exit(main())
