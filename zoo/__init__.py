"""zoo: an experiment-tracking model zoo for large training sweeps."""

__version__ = "0.1.0"
