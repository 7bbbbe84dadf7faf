"""KeyCache: bounded, short-lived, and forgets revoked keys and banned users."""

from __future__ import annotations

import time

from rentahal.api.key_cache import KeyCache


def test_hit_then_expiry() -> None:
    cache = KeyCache(ttl_s=0.05)
    cache.put("rah_abcdefgh-one", "guid-1")
    assert cache.get("rah_abcdefgh-one") == "guid-1"
    assert cache.get("rah_abcdefgh-two") is None
    time.sleep(0.06)
    assert cache.get("rah_abcdefgh-one") is None
    assert len(cache) == 0


def test_bounded_least_recently_used_go_first() -> None:
    cache = KeyCache(max_entries=3)
    for i in range(3):
        cache.put(f"rah_key{i:05d}-x", f"guid-{i}")
    assert cache.get("rah_key00000-x") == "guid-0"  # now the most recent
    cache.put("rah_key00003-x", "guid-3")
    assert len(cache) == 3
    assert cache.get("rah_key00001-x") is None
    assert cache.get("rah_key00000-x") == "guid-0"


def test_forget_prefix_and_user() -> None:
    cache = KeyCache()
    cache.put("rah_AAAAAAAA-1", "alice")
    cache.put("rah_BBBBBBBB-2", "alice")
    cache.put("rah_CCCCCCCC-3", "bob")
    cache.forget_prefix("rah_AAAAAAAA")
    assert cache.get("rah_AAAAAAAA-1") is None
    assert cache.get("rah_BBBBBBBB-2") == "alice"
    cache.forget_user("alice")
    assert cache.get("rah_BBBBBBBB-2") is None
    assert cache.get("rah_CCCCCCCC-3") == "bob"
