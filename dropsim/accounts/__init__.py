"""Accounts: users, their roles and credentials (the gateway authenticates against this)."""
