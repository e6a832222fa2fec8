"""The jaxrel version (one place; recorded in every explanation)."""

__version__ = "0.1.0"
