"""fastbci.data."""
