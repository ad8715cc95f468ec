"""The shared training core: one loop for every method (see ``train.py``)."""
