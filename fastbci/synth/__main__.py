"""``python -m fastbci.synth`` = ``fastbci synth`` (:mod:`fastbci.commands.synth`)."""
from fastbci.commands import entry

if __name__ == "__main__":
    entry("synth")
