"""A tiny application run through its real entry points by tests/test_cli.py (``python train.py``, ``python -m``)."""
