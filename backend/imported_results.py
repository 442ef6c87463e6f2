"""Results shipped with the checkpoints, imported as benchmarks: the tiny zoo's Table 1 from ``checkpoints/README.md``.

The shipped tiny checkpoints come with the Table 1 that ``motionlab recipe tiny`` measured (16 held-out prompts x
5 seeds, and rows of ablation runs whose checkpoints are not shipped), so it is imported, not recomputed: the
numbers cannot be re-measured here for the ablation rows, and the rest would cost many minutes of CPU on
every fresh server. ``motionlab serve`` and ``motionlab api`` call ``import_shipped_table1`` on start.

The imported benchmark is marked: ``config.source == "imported"`` (``Benchmark.source``, ``source`` in the API),
with the file and section it came from; it is created ``succeeded`` and never queued, and has no scores, videos or
per-prompt rows. Its id is derived from the parsed table, so restarting imports nothing twice (a changed table is a
new import, shown next to the old one).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from backend.core.config import Settings, get_settings
from backend.crud import benchmarks as crud
from backend.db.models import IMPORTED, Benchmark
from backend.db.session import session_scope
from backend.storage import ArtifactStore
from evaluator.table_import import parse_table1_markdown
from trainer.zoo import zoo_dir

log = logging.getLogger("motionlab.imported")

SHIPPED_FILE = "README.md"  # next to the shipped checkpoint folders
SHIPPED_SECTION = "Table 1"
SHIPPED_NAME = "Shipped tiny checkpoints: Table 1 (imported)"


def shipped_table1(zoo: Path | None = None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(table, config) of the zoo's Table 1, or None when the zoo has no README with one."""
    zoo = Path(zoo) if zoo is not None else zoo_dir()
    path = zoo / SHIPPED_FILE
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    if SHIPPED_SECTION.lower() not in text.lower():
        return None
    names = sorted(d.name for d in zoo.iterdir() if (d / "model_index.json").is_file())
    table = parse_table1_markdown(text, section=SHIPPED_SECTION, checkpoints=names)
    digest = hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()
    rows = table["rows"]
    backend = next((b for c in table["columns"] for b in c["backends"]), None)
    config = {
        "source": IMPORTED,
        "source_file": f"{zoo.name}/{SHIPPED_FILE}",
        "section": table["heading"],
        "checkpoints": [r["checkpoint"] for r in rows if r["checkpoint"]],
        "models": [r["model"] for r in rows],
        "n_seeds": table["n_seeds"],
        "n_prompts": table["n_prompts"],
        "options": {"backend": backend} if backend else {},
        "table_sha256": digest,
    }
    return table, config


def imported_id(config: dict[str, Any]) -> str:
    """``bench_<16 hex>`` from the file's name and table: the same table always gets the same id."""
    return "bench_" + hashlib.sha256(f"{config['source_file']}:{config['table_sha256']}".encode()).hexdigest()[:16]


def import_shipped_table1(settings: Settings | None = None, zoo: Path | None = None) -> str | None:
    """Import the zoo's Table 1 as a benchmark (into a migrated database); its id when imported now, None when
    there is none or it is in already."""
    settings = settings or get_settings()
    found = shipped_table1(zoo)
    if found is None:
        return None
    table, config = found
    bench_id = imported_id(config)
    store = ArtifactStore(settings.storage_root)
    try:
        with session_scope(settings) as db:
            if db.get(Benchmark, bench_id) is not None:
                return None
            store.write_text("reports", bench_id, json.dumps({"table": table, "source": config}, indent=2), ".json")
            crud.create_imported_benchmark(
                db,
                bench_id=bench_id,
                name=SHIPPED_NAME,
                config=config,
                summary={"source": IMPORTED, "rows": len(table["rows"]), "checkpoints": config["checkpoints"]},
                report_key=store.key("reports", bench_id, ".json"),
            )
    except IntegrityError:  # another process imported it at the same moment
        return None
    return bench_id


def import_on_start(settings: Settings) -> str | None:
    """``import_shipped_table1`` for a server start: a message when it imported, a warning (not a crash) when the
    shipped file cannot be read."""
    try:
        bench_id = import_shipped_table1(settings)
    except (OSError, ValueError) as exc:
        log.warning("the shipped checkpoints' Table 1 was not imported: %s", exc)
        return None
    if bench_id:
        print(
            f"MotionLab: imported the shipped checkpoints' Table 1 from {zoo_dir() / SHIPPED_FILE} as benchmark "
            f"{bench_id} (Dashboard tab)",
            flush=True,
        )
    return bench_id


__all__ = ["SHIPPED_NAME", "import_on_start", "import_shipped_table1", "imported_id", "shipped_table1"]
