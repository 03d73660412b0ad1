"""``python -m fastbci.demo`` = ``fastbci demo`` (:mod:`fastbci.commands.demo`)."""
from fastbci.commands import entry

if __name__ == "__main__":
    entry("demo")
