"""``python -m fastbci.train CONFIG [key=value ...]``: train with the official recipe.

The command line lives in :mod:`fastbci.cli`, the trainer in :mod:`fastbci.training`."""
import os
import sys

from fastbci.cli import exit_worker, main

__all__ = ["main"]

if __name__ == "__main__":
    _code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        exit_worker(_code)
    sys.exit(_code)
