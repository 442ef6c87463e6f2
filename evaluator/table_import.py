"""A Table-1-shaped markdown table written by people (``checkpoints/README.md``) -> the dict of ``reports.table1``.

The shipped tiny checkpoints come with their Table 1 only as markdown: one row per model, one column per metric,
cells ``mean ± std`` (optionally ``[lo, hi]``) or a dash. Parsing it into the same shape ``table1`` returns lets the
dashboard, its plots and the API serve it like a measured table, while its rows keep the text of the file::

    table = parse_table1_markdown(Path("checkpoints/README.md").read_text(), section="Table 1",
                                  checkpoints=["tiny-teacher", "tiny-dmd"])

A row names a checkpoint when its label reads ``<name>, <N> steps...`` and ``<name>`` is that checkpoint's name
without its ``tiny-``-style prefix (``DMD, 3 steps`` -> ``tiny-dmd``); other rows (ablations, references) keep
their label as the model name. Anything the parser cannot read raises ``ValueError`` naming the line and the cell.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from evaluator.reports import NA, TABLE1_COLUMNS

_NUM = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_CELL_RE = re.compile(rf"^({_NUM})\s*(?:(?:±|\+/-)\s*({_NUM}))?\s*(?:\[\s*({_NUM})\s*,\s*({_NUM})\s*\])?$")
_EMPTY_CELLS = {"", "-", "–", "—", "n/a", "na"}
_HEADING_RE = re.compile(r"^(#{1,6})\s+(.*\S)\s*$")


def _norm(text: str) -> str:
    """Lower-case words only: ``"Visual SWD (lower better)"`` -> ``"visual swd"``."""
    text = re.sub(r"\([^)]*\)", " ", text.lower()).replace("_", " ")
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text).split())


def _column_names() -> dict[str, tuple[str, str, float]]:
    out: dict[str, tuple[str, str, float]] = {}
    for metric, label, scale in TABLE1_COLUMNS:
        out[_norm(label)] = out[_norm(metric)] = (metric, label, scale)
    out["aesthetic quality"] = next(c for c in TABLE1_COLUMNS if c[0] == "aesthetic_quality")
    return out


def _plain(text: str) -> str:
    """A cell without markdown code/emphasis marks."""
    return " ".join(re.sub(r"[`*]", "", text).split())


def _split_row(line: str) -> list[str]:
    body = line.strip()
    body = body.removeprefix("|")
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    return [c.replace("\\|", "|").strip() for c in re.split(r"(?<!\\)\|", body)]


def _find_table(lines: list[str], section: str | None) -> tuple[str, int]:
    """(heading text, index of the table's header line): the first table under the first heading containing
    ``section`` (case-insensitive), or the first table of the text without ``section``."""
    start, heading, level = 0, "", 7
    if section:
        for i, line in enumerate(lines):
            m = _HEADING_RE.match(line)
            if m and section.lower() in m.group(2).lower():
                start, heading, level = i + 1, m.group(2), len(m.group(1))
                break
        else:
            raise ValueError(f"section: no markdown heading contains {section!r}")
    for i in range(start, len(lines)):
        m = _HEADING_RE.match(lines[i])
        if m and len(m.group(1)) <= level:
            break
        if lines[i].lstrip().startswith("|"):
            return heading, i
    raise ValueError(f"section {heading or section!r}: no markdown table under it")


def _cell(
    metric: str, label: str, scale: float, text: str, backend: str | None, n_seeds: int | None, where: str
) -> dict[str, Any]:
    base = {
        "metric": metric,
        "label": label,
        "scale": scale,
        "ci95": None,
        "n_videos": None,
        "n_unavailable": 0,
        "unavailable_reasons": [],
        "source_text": text,
    }
    plain = _plain(text)
    if plain.lower() in _EMPTY_CELLS:
        return {**base, "backend": None, "mean": None, "std": None, "n_seeds": 0, "display": NA}
    m = _CELL_RE.match(plain)
    if not m:
        raise ValueError(f"{where}: {text!r} is not 'mean', 'mean ± std', 'mean ± std [lo, hi]' or a dash")
    mean, std, lo, hi = (float(g) if g is not None else None for g in m.groups())
    return {
        **base,
        "backend": backend,
        "mean": mean,
        "std": std,
        "ci95": [lo, hi] if lo is not None else None,
        "n_seeds": n_seeds if std is not None else None,
        "display": plain,
    }


def match_checkpoint(label: str, checkpoints: Iterable[str]) -> str | None:
    """The checkpoint a row label names (``"DF-DPO (hybrid), 50 steps + CFG"`` -> ``tiny-dfdpo``), else None."""
    m = re.match(r"^(.*?),\s*\d+[\s-]*steps?\b", label.lower())
    if not m:
        return None
    head = re.sub(r"[^a-z0-9]", "", re.sub(r"\([^)]*\)", "", m.group(1)))
    if not head:
        return None
    hits = [
        c
        for c in checkpoints
        if head in {re.sub(r"[^a-z0-9]", "", c.lower()), re.sub(r"[^a-z0-9]", "", c.split("-", 1)[-1].lower())}
    ]
    return hits[0] if len(hits) == 1 else None


def parse_table1_markdown(
    text: str, *, section: str | None = "Table 1", checkpoints: Sequence[str] = (), backend: str | None = None
) -> dict[str, Any]:
    """The first markdown table under the heading containing ``section``, in ``reports.table1``'s shape.

    Each row has ``model`` (the matched checkpoint's name, else the row's label without a bracketed command),
    ``label`` (the row's text),
    ``checkpoint`` (or None) and ``cells`` for every Table-1 metric (``display`` is the file's own text; a metric
    the file lacks is ``n/a``). ``backend`` defaults to the one the heading names (``lite`` / ``vbench``);
    ``n_seeds`` and ``n_prompts`` come from a heading like ``16 ... prompts x 5 ... seeds`` when present.
    """
    lines = text.splitlines()
    heading, at = _find_table(lines, section)
    low = heading.lower()
    if backend is None:
        backend = next((b for b in ("vbench", "lite") if b in low), None)
    m = re.search(r"(\d+)\s[^;,()]*?prompts?\s*[x×]\s*(\d+)\s[^;,()]*?seeds?", low)
    n_prompts, n_seeds = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    header = _split_row(lines[at])
    if len(header) < 2:
        raise ValueError(f"line {at + 1}: a table needs a model column and at least one metric column")
    if at + 1 >= len(lines) or not re.fullmatch(r"\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?", lines[at + 1].strip()):
        raise ValueError(f"line {at + 2}: expected the table's |---|---| separator line")
    names = _column_names()
    cols: list[tuple[str, str, float]] = []
    for h in header[1:]:
        col = names.get(_norm(h))
        if col is None:
            raise ValueError(
                f"line {at + 1}: column {h!r} is not a Table 1 metric (known: "
                f"{', '.join(label for _m, label, _s in TABLE1_COLUMNS)})"
            )
        if col in cols:
            raise ValueError(f"line {at + 1}: column {h!r} appears twice")
        cols.append(col)
    known = {c[0] for c in cols}
    rows: list[dict[str, Any]] = []
    used: set[str] = set()
    for i in range(at + 2, len(lines)):
        if not lines[i].lstrip().startswith("|"):
            break
        cells = _split_row(lines[i])
        if len(cells) != len(header):
            raise ValueError(f"line {i + 1}: {len(cells)} cells, the header has {len(header)}")
        label = _plain(cells[0])
        short = " ".join(re.sub(r"\([^)]*`[^)]*\)", " ", cells[0]).split())  # without a `command` in brackets
        if not label:
            raise ValueError(f"line {i + 1}: the model cell is empty")
        ckpt = match_checkpoint(label, [c for c in checkpoints if c not in used])
        if ckpt:
            used.add(ckpt)
        out_cells = {
            metric: _cell(metric, lab, scale, cells[j + 1], backend, n_seeds, f"line {i + 1}, column {header[j + 1]!r}")
            for j, (metric, lab, scale) in enumerate(cols)
        }
        for metric, lab, scale in TABLE1_COLUMNS:
            if metric not in known:
                out_cells[metric] = _cell(metric, lab, scale, "", backend, n_seeds, "")
        rows.append(
            {
                "model": ckpt or _plain(short) or label,
                "label": label,
                "checkpoint": ckpt,
                "cells": {m: out_cells[m] for m, _l, _s in TABLE1_COLUMNS},
            }
        )
    if not rows:
        raise ValueError(f"line {at + 1}: the table has no rows")
    models = [r["model"] for r in rows]
    dup = next((m for m in models if models.count(m) > 1), None)
    if dup:
        raise ValueError(f"model {dup!r} has two rows")
    columns = [
        {"metric": m, "label": lab, "scale": s, "backends": [backend] if backend and m in known else []}
        for m, lab, s in TABLE1_COLUMNS
    ]
    notes = [
        "mean ± std over seeds"
        + (f" ({n_seeds} seeds, {n_prompts} prompts)" if n_seeds else "")
        + ", as written in the source; it holds no per-prompt scores, intervals or videos."
    ]
    if backend == "lite":
        notes.append("lite = weight-free OpenCV-flow backend; its numbers are not VBench numbers.")
    return {
        "columns": columns,
        "rows": rows,
        "models": models,
        "prompts": [],
        "per_prompt": [],
        "notes": notes,
        "heading": heading,
        "n_seeds": n_seeds,
        "n_prompts": n_prompts,
    }


__all__ = ["match_checkpoint", "parse_table1_markdown"]
