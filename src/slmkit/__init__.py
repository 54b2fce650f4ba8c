"""slmkit: the whole life of a small language model."""

__version__ = "0.1.0"
