"""Command-line tools (entry points in setup.py). Each module has a tiny ``main``."""
