"""fastbci: the Brain-to-Text '25 baseline phoneme decoder, trained exactly and fast."""
__version__ = "0.1.0"
