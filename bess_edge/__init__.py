"""bess-edge: edge gateway daemon for battery energy storage sites."""

__version__ = "0.1.0"
