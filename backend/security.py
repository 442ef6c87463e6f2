"""API keys and access tokens.

A key is a random token (``ml_`` + 43 url-safe characters, 256 bits) shown once at creation; the database
keeps only its SHA-256 (HMAC-SHA-256 with ``MOTIONLAB_API_KEY_PEPPER`` when set) and a short prefix to
recognise it in listings. Keys carry scopes and can be revoked.

Scopes: ``read`` (GET anything), ``generate`` (submit generations), ``train`` (runs and benchmarks),
``admin`` (keys, checkpoint registration; implies every other scope).

    row, plaintext = create_api_key(db, "ci", ["read", "generate"])
    key = authenticate(db, plaintext)      # ApiKey row or None (unknown or revoked)
    has_scope(key.scopes, "generate")

Annotator tokens of human studies use the same ``new_token``/``hash_token`` but live in their own table
(``annotators``), so an annotator token is never a valid API key and reaches nothing but its study pages.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Iterable

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from backend.core.config import get_settings
from backend.db.models import ApiKey, utcnow
from backend.db.session import begin_write

SCOPES = ("read", "generate", "train", "admin")
KEY_PREFIX = "ml_"
_LAST_USED_RESOLUTION = dt.timedelta(seconds=60)  # don't turn every read into a write


class ScopeError(ValueError):
    def __init__(self, message: str):
        self.field = "scopes"
        super().__init__(message)


def new_token(prefix: str = KEY_PREFIX) -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str, pepper: str | None = None) -> str:
    pepper = pepper if pepper is not None else get_settings().api_key_pepper
    if pepper:
        return hmac.new(pepper.encode(), token.encode(), hashlib.sha256).hexdigest()
    return hashlib.sha256(token.encode()).hexdigest()


def normalize_scopes(scopes: Iterable[str]) -> list[str]:
    scopes = list(dict.fromkeys(str(s).strip().lower() for s in scopes))
    if not scopes:
        raise ScopeError(f"scopes must name at least one of {list(SCOPES)}")
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise ScopeError(f"unknown scope(s) {bad}; allowed: {list(SCOPES)}")
    return [s for s in SCOPES if s in scopes]


def has_scope(granted: Iterable[str], needed: str) -> bool:
    granted = set(granted or ())
    return "admin" in granted or needed in granted


def create_api_key(db: Session, name: str, scopes: Iterable[str], *, pepper: str | None = None) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the plaintext token (the only time it exists outside the caller)."""
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise ValueError("name: must be 1-200 characters")
    plaintext = new_token()
    row = ApiKey(
        name=name, prefix=plaintext[:10], key_hash=hash_token(plaintext, pepper), scopes=normalize_scopes(scopes)
    )
    db.add(row)
    db.flush()
    return row, plaintext


def authenticate(db: Session, token: str | None, *, pepper: str | None = None) -> ApiKey | None:
    """The active key for ``token``, or None. Updates ``last_used_at`` at most once a minute."""
    if not token or not token.startswith(KEY_PREFIX) or len(token) > 200:
        return None
    row = db.scalar(select(ApiKey).where(ApiKey.key_hash == hash_token(token, pepper)))
    if row is None or row.revoked_at is not None:
        return None
    now = utcnow()
    last = row.last_used_at
    if last is not None and last.tzinfo is None:  # SQLite returns naive datetimes
        last = last.replace(tzinfo=dt.UTC)
    if last is None or now - last > _LAST_USED_RESOLUTION:
        # a separate short write transaction; the condition keeps concurrent requests from all writing
        begin_write(db)
        db.execute(
            update(ApiKey)
            .where(
                ApiKey.id == row.id,
                or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - _LAST_USED_RESOLUTION),
            )
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
        db.commit()
        set_committed_value(row, "last_used_at", now)  # reflect it without marking the row dirty
    return row


def revoke_api_key(db: Session, key_id: str) -> ApiKey | None:
    row = db.get(ApiKey, key_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
    return row
