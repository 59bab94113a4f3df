"""dfl: deep feature learning on MNIST — the lab reproduced faithfully, then better."""

__version__ = "0.1.0"
