"""Payments: charges at an external provider, its signed callbacks, retries and timeouts."""
