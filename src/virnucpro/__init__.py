"""virnucpro: the VirNucPro viral sequence identification method, fast and dependable."""

__version__ = "0.1.0"
