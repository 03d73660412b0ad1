"""``python -m fastbci.calibrate`` = ``fastbci calibrate`` (:mod:`fastbci.commands.calibrate`)."""
from fastbci.commands import entry

if __name__ == "__main__":
    entry("calibrate")
