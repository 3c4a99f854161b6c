"""whyrec: recommendations whose product is the explanation."""

__version__ = "0.1.0"
