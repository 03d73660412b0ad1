"""``python -m fastbci.evaluate`` = ``fastbci evaluate`` (:mod:`fastbci.commands.evaluate`)."""
from fastbci.commands import entry

if __name__ == "__main__":
    entry("evaluate")
