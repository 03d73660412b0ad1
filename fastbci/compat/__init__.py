"""fastbci.compat."""
