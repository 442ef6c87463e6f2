"""Server paths in training-run configs: over the API a config names checkpoints and datasets, never directories.

    check_api_config(db, overrides)          # RunConfigError naming the field (the API answers 422)
    to_server_paths(db, store, overrides)    # registered names -> the directories the trainer reads
    redact_paths(text)                       # absolute paths in a message -> "<path>"

``init``/``teacher`` take a zoo name (the trainer resolves it) or a registered checkpoint's id or name;
``data.root`` takes a registered dataset's id or name (``POST /v1/datasets``, admin). No other string of an API
config may look like a path. The command line (``motionlab train``) calls the trainer directly and keeps full paths;
``to_server_paths`` leaves whatever is not a registered name as it is, so a config written there still runs.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from sqlalchemy.orm import Session

from backend.crud import checkpoints as ckpt_crud
from backend.crud import datasets as ds_crud
from backend.storage import ArtifactStore

CHECKPOINT_FIELDS = ("init", "teacher")
OPERATOR_FIELDS = (("method_cfg", "flow_weights"),)  # files only the operator's deployment sets
# an absolute (or home-relative) path: '/' or '~/' not inside a word, URL or relative path
_PATH_RE = re.compile(r"(?<![\w/.:~-])~?/[^\s'\"`(),;<>\[\]{}]*")
# the API's own paths, which messages name on purpose
_API_PATHS = ("/v1/", "/a/", "/docs", "/openapi.json", "/healthz", "/readyz", "/ui/", "/study-")


class RunConfigError(ValueError):
    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


def zoo_names() -> set[str]:
    try:
        from trainer.zoo import list_checkpoints  # heavy: torch; the API starts without the model code

        return {str(c["name"]) for c in list_checkpoints()}
    except Exception:  # noqa: BLE001 - no trainer or a broken zoo: only registered names
        return set()


def check_api_config(db: Session, overrides: dict[str, Any]) -> None:
    """Raise ``RunConfigError`` for a server path anywhere in an API config, or an unknown checkpoint/dataset."""
    zoo = None
    for name in CHECKPOINT_FIELDS:
        ref = overrides.get(name)
        if ref is None:
            continue
        if zoo is None:
            zoo = zoo_names()
        if not (
            isinstance(ref, str)
            and ckpt_crud.NAME_RE.fullmatch(ref)
            and (ref in zoo or ckpt_crud.get_checkpoint(db, ref) is not None)
        ):
            raise RunConfigError(
                f"config.{name}",
                f"config.{name}: must be a zoo or registered checkpoint name (see "
                f"GET /v1/checkpoints); server paths are not accepted over the "
                f"API (got {str(ref)[:60]!r})",
            )
    data = overrides.get("data")
    root = data.get("root") if isinstance(data, dict) else None
    if root is not None and not (
        isinstance(root, str) and ckpt_crud.NAME_RE.fullmatch(root) and ds_crud.get_dataset(db, root) is not None
    ):
        raise RunConfigError(
            "config.data.root",
            "config.data.root: must be a registered dataset name (see GET "
            "/v1/datasets; an admin registers one with POST /v1/datasets); "
            f"server paths are not accepted over the API (got {str(root)[:60]!r})",
        )
    for section, name in OPERATOR_FIELDS:
        sub = overrides.get(section)
        if isinstance(sub, dict) and sub.get(name) is not None:
            raise RunConfigError(
                f"config.{section}.{name}",
                f"config.{section}.{name}: a file on the server, set by the operator; not accepted over the API",
            )
    skip = {("init",), ("teacher",), ("data", "root")}
    for path, value in _strings(overrides, ()):
        if path not in skip and ("/" in value or "\\" in value or value.startswith("~")):
            field = "config." + ".".join(str(p) for p in path)
            raise RunConfigError(field, f"{field}: must not be a path (server paths are not accepted over the API)")


def _strings(value: Any, path: tuple) -> list[tuple[tuple, str]]:
    if isinstance(value, str):
        return [(path, value)]
    out: list[tuple[tuple, str]] = []
    if isinstance(value, dict) and len(path) < 20:
        for k, v in value.items():
            out += _strings(v, (*path, k))
    elif isinstance(value, list) and len(path) < 20:
        for i, v in enumerate(value):
            out += _strings(v, (*path, i))
    return out


def to_server_paths(db: Session, store: ArtifactStore, overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``overrides`` with registered checkpoint and dataset names replaced by their directories (zoo
    names and anything else unchanged: the trainer resolves those)."""
    out = copy.deepcopy(overrides)
    for name in CHECKPOINT_FIELDS:
        ref = out.get(name)
        if isinstance(ref, str) and ckpt_crud.NAME_RE.fullmatch(ref):
            row = ckpt_crud.get_checkpoint(db, ref)
            if row is not None:
                out[name] = str(ckpt_crud.location_path(row, store))
    data = out.get("data")
    if isinstance(data, dict) and isinstance(data.get("root"), str) and ckpt_crud.NAME_RE.fullmatch(data["root"]):
        row = ds_crud.get_dataset(db, data["root"])
        if row is not None:
            data["root"] = row.path
    return out


def with_names(resolved: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The resolved config with the names the client gave where ``to_server_paths`` put directories."""
    out = dict(resolved)
    for name in CHECKPOINT_FIELDS:
        if overrides.get(name) is not None:
            out[name] = overrides[name]
    root = (overrides.get("data") or {}).get("root") if isinstance(overrides.get("data"), dict) else None
    if root is not None and isinstance(out.get("data"), dict):
        out["data"] = {**out["data"], "root": root}
    return out


def redact_paths(text: str | None) -> str | None:
    """``text`` with every absolute server path replaced by ``<path>`` (the API's own paths are kept)."""
    if not text:
        return text
    return _PATH_RE.sub(
        lambda m: m.group(0) if m.group(0) == "/" or m.group(0).startswith(_API_PATHS) else "<path>", text
    )
