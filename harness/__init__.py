"""A harness to train and compare preference-optimization methods on one shared core."""
__version__ = "0.1.0"
