"""Data preparation: corpus readers and the `prepare.py` CLI (run it as a script)."""
