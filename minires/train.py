"""``python -m minires.train``: the same as the ``minires-train`` command."""

import sys

from minires.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
