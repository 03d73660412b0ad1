"""``python -m fastbci.sweep ...`` = ``fastbci sweep ...``."""
import sys

from fastbci.commands.sweep import main

if __name__ == "__main__":
    sys.exit(main())
