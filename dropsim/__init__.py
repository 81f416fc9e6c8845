"""dropsim: a creator-drop commerce system, run for real and proven under a celebrity-sized rush."""

__version__ = "0.1.0"
