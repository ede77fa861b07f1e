"""Stand-alone experiments that print a table and write JSON + figures (``python -m experiments.<name>``)."""
