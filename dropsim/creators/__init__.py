"""The creator service: creator profiles, products, and drops with their clock-driven lifecycle."""
