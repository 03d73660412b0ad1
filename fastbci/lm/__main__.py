"""``python -m fastbci.lm``: see :mod:`fastbci.lm.cli`."""
import sys

from fastbci.lm.cli import main

if __name__ == "__main__":
    sys.exit(main())
