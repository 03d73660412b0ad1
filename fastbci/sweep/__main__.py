"""``python -m fastbci.sweep`` = ``fastbci sweep`` (:mod:`fastbci.commands.sweep`)."""
from fastbci.commands import entry

if __name__ == "__main__":
    entry("sweep")
