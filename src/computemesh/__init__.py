"""computemesh: an open decentralized compute network."""

__version__ = "0.1.0"
