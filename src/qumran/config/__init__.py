"""Typed VM specs: the definition format, its validation and its files."""
