"""Values bound for JSON columns: numbers from torch/numpy as plain floats/ints, NaN/inf as None, paths as text."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, (str, bool)) or v is None:
        return v
    if isinstance(v, Path):
        return str(v)
    try:
        f = float(v.item() if hasattr(v, "item") else v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(f):
        return None  # JSON and JSONB reject them
    return int(f) if isinstance(v, int) else f
