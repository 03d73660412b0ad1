"""``python -m fastbci.train CONFIG [key=value ...]`` = ``fastbci train`` (:mod:`fastbci.commands.train`);
also the module ``torchrun -m fastbci.train`` starts on every rank."""
from fastbci.commands import entry

if __name__ == "__main__":
    entry("train")
