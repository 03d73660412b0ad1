"""fastbci.ops."""
