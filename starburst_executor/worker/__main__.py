"""``python -m starburst_executor.worker``: serve one session, configured by environment."""

import sys

from .runner import main

if __name__ == "__main__":
    sys.exit(main())
