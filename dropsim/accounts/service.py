"""Account use cases: sign up, log in, look up, change role. Passwords are hashed with Argon2id."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from dropsim.accounts.models import Role, User
from dropsim.accounts.store import AccountStore
from dropsim.errors import AuthenticationFailed, Conflict, NotFound
from dropsim.ids import new_id

# Hashed once so a log-in for an unknown e-mail costs as much as a wrong password (no user probing).
_DUMMY_HASH = PasswordHasher().hash("not a real password")


class AccountService:
    """Users and their credentials. Argon2 runs in a worker thread: it is slow on purpose."""

    def __init__(self, store: AccountStore, hasher: PasswordHasher | None = None) -> None:
        self._store = store
        self._hasher = hasher or PasswordHasher()

    async def sign_up(self, email: str, password: str, handle: str) -> User:
        """Create a buyer; raises Conflict if the e-mail is registered already."""
        email = email.strip().lower()
        user = User(
            id=new_id("usr"), handle=handle, role=Role.BUYER, created_at=time.time(), email=email
        )
        password_hash = await asyncio.to_thread(self._hasher.hash, password)
        if not await self._store.claim_email(email, user.id, password_hash):
            raise Conflict(f"{email} is already registered", code="email_taken")
        await self._store.insert_users([user])
        return user

    async def log_in(self, email: str, password: str) -> User:
        """The user with these credentials; AuthenticationFailed otherwise (same error for both)."""
        email = email.strip().lower()
        found = await self._store.credentials(email)
        stored_hash = found[1] if found else _DUMMY_HASH
        try:
            await asyncio.to_thread(self._hasher.verify, stored_hash, password)
        except (VerificationError, InvalidHashError):
            found = None
        if found is None:
            raise AuthenticationFailed("wrong e-mail or password", code="bad_credentials")
        if self._hasher.check_needs_rehash(stored_hash):
            await self._store.replace_password_hash(
                email, await asyncio.to_thread(self._hasher.hash, password)
            )
        return await self.user(found[0])

    async def user(self, user_id: str) -> User:
        user = await self._store.user(user_id)
        if user is None:
            raise NotFound(f"no user {user_id}", code="user_not_found")
        return user

    async def promote(self, user_id: str, role: Role) -> User:
        """Give `user_id` the role `role` (creators are made by the creator service)."""
        user = await self.user(user_id)
        if user.role != role and user.role != Role.ADMIN:
            await self._store.set_role(user_id, role)
        return await self.user(user_id)

    async def add_seeded_users(self, users: list[User]) -> None:
        """Insert users made by the seeder (no credentials: they get minted tokens)."""
        await self._store.insert_users(users)

    async def add_seeded_users_in_bulk(
        self, users: Sequence[tuple[str, str]], role: Role, created_at: float
    ) -> int:
        """Insert many `(id, handle)` seeded users at once (existing ids are left alone); return
        how many were new. For crowds of fans: no `User` object per row, no per-row statement."""
        return await self._store.insert_users_in_bulk(users, role, created_at)
