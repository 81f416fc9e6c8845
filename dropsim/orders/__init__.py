"""The order service: atomic inventory in Redis, idempotent orders, reservations, settlement."""
