"""``python -m fastbci.lm`` = ``fastbci lm`` (:mod:`fastbci.commands.lm`)."""
from fastbci.commands import entry

if __name__ == "__main__":
    entry("lm")
