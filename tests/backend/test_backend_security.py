"""API keys: random, shown once, stored hashed, scoped, revocable.

python -m pytest tests/backend/test_backend_security.py -q
"""

from __future__ import annotations

import hashlib
import hmac

import pytest

from backend.core.config import Settings
from backend.db.migrate import upgrade_to_head
from backend.db.session import session_scope
from backend.security import (
    ScopeError,
    authenticate,
    create_api_key,
    has_scope,
    normalize_scopes,
    revoke_api_key,
)


@pytest.fixture
def settings(tmp_path) -> Settings:
    s = Settings(storage_root=tmp_path)
    upgrade_to_head(s)
    return s


def test_keys_are_random_and_stored_as_sha256(settings):
    with session_scope(settings) as db:
        row, key = create_api_key(db, "a", ["read"], pepper="")
        _row2, key2 = create_api_key(db, "b", ["read"], pepper="")
        assert key != key2 and key.startswith("ml_") and len(key) >= 40
        assert row.key_hash == hashlib.sha256(key.encode()).hexdigest() and key not in row.key_hash
        assert row.prefix == key[:10]
        assert authenticate(db, key, pepper="").id == row.id
        assert authenticate(db, key + "x", pepper="") is None
        assert authenticate(db, None, pepper="") is None
        assert authenticate(db, "not-a-key", pepper="") is None


def test_pepper_makes_the_hash_an_hmac(settings):
    with session_scope(settings) as db:
        row, key = create_api_key(db, "a", ["read"], pepper="s3cret")
        assert row.key_hash == hmac.new(b"s3cret", key.encode(), hashlib.sha256).hexdigest()
        assert authenticate(db, key, pepper="s3cret") is not None
        assert authenticate(db, key, pepper="other") is None


def test_revoked_keys_stop_working(settings):
    with session_scope(settings) as db:
        row, key = create_api_key(db, "a", ["admin"], pepper="")
    with session_scope(settings) as db:
        assert authenticate(db, key, pepper="") is not None
        assert authenticate(db, key, pepper="").last_used_at is not None
        revoke_api_key(db, row.id)
    with session_scope(settings) as db:
        assert authenticate(db, key, pepper="") is None


def test_scopes():
    assert normalize_scopes(["train", "read", "read"]) == ["read", "train"]
    with pytest.raises(ScopeError, match="unknown scope"):
        normalize_scopes(["read", "root"])
    with pytest.raises(ScopeError, match="at least one"):
        normalize_scopes([])
    assert has_scope(["admin"], "train") and has_scope(["read"], "read")
    assert not has_scope(["read"], "generate") and not has_scope(["generate", "train"], "admin")


def test_serve_creates_a_bootstrap_admin_key_only_on_first_start(settings):
    from backend.server import ensure_admin_key

    key = ensure_admin_key(settings)
    assert key and key.startswith("ml_")
    assert ensure_admin_key(settings) is None
    with session_scope(settings) as db:
        assert authenticate(db, key, pepper=settings.api_key_pepper).scopes == ["admin"]
