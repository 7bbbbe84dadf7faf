"""Other installations' accounts are never sysops and do not take the first-user rule."""

from __future__ import annotations

import uuid
from pathlib import Path

from rentahal.federation.routing import account_guid, ensure_account
from rentahal.storage.database import Storage


async def test_a_federation_account_first_leaves_sysop_to_the_first_person(tmp_path: Path) -> None:
    storage = Storage(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    try:
        await storage.migrate()
        guid = await ensure_account(storage, "lighthouse")
        assert guid == account_guid("lighthouse")
        account = await storage.get_user(guid)
        assert account is not None and not account.is_sysop
        assert account.nickname == "federation:lighthouse"
        first = await storage.get_or_create_user(str(uuid.uuid4()))
        second = await storage.get_or_create_user(str(uuid.uuid4()))
        assert first.is_sysop and not second.is_sysop
    finally:
        await storage.close()
