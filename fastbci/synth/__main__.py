"""``python -m fastbci.synth``: write a synthetic release (see :mod:`fastbci.synth`)."""
import sys

from fastbci.synth.release import main

if __name__ == "__main__":
    sys.exit(main())
