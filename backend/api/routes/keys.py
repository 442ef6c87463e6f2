"""/v1/keys: API keys (admin): create (the key is shown once), list, revoke."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.api.deps import SessionReleasingRoute, check_id, get_db, get_settings_dep, require_scope
from backend.api.errors import not_found
from backend.api.schemas import KeyCreate, KeyCreated, KeyList, KeyOut
from backend.core.config import Settings
from backend.db.models import ApiKey
from backend.db.session import begin_write
from backend.security import create_api_key, revoke_api_key

router = APIRouter(prefix="/keys", tags=["keys"], route_class=SessionReleasingRoute)


@router.post("", response_model=KeyCreated, status_code=201, summary="Create an API key (shown only in this reply)")
def create_key(
    body: KeyCreate,
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
    admin: ApiKey = Depends(require_scope("admin")),
) -> dict:
    begin_write(db)
    row, plaintext = create_api_key(db, body.name, body.scopes, pepper=settings.api_key_pepper)
    db.commit()
    return {**KeyOut.model_validate(row).model_dump(), "key": plaintext}


@router.get("", response_model=KeyList, summary="List API keys (never the keys themselves)")
def list_keys(db: Session = Depends(get_db), _admin: ApiKey = Depends(require_scope("admin"))) -> dict:
    return {"items": db.scalars(select(ApiKey).order_by(ApiKey.created_at.desc())).all()}


@router.delete("/{key_id}", response_model=KeyOut, summary="Revoke an API key")
def revoke_key(key_id: str, db: Session = Depends(get_db), _admin: ApiKey = Depends(require_scope("admin"))) -> ApiKey:
    check_id(key_id, "key_id")
    begin_write(db)
    row = revoke_api_key(db, key_id)
    if row is None:
        raise not_found("API key", key_id, "key_id")
    db.commit()
    return row
