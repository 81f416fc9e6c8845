"""The gateway: authentication, (later) rate limiting and API composition, in front of every service."""
