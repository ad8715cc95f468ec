"""Preference data: embedded generated tasks, loaders for real formats, tokenization."""
from .pairs import PreferencePair

__all__ = ["PreferencePair"]
