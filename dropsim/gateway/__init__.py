"""The gateway in front of every service: authentication, problem responses (and, next, rate
limiting and API composition)."""
