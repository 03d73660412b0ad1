"""``python -m fastbci.doctor`` = ``fastbci doctor`` (:mod:`fastbci.commands.doctor`)."""
from fastbci.commands import entry

if __name__ == "__main__":
    entry("doctor")
