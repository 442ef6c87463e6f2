"""Assignment policy of a human preference study (pure): which item next, which slot, when to release, whether a
submitted answer shows a full watch. ``backend.crud.studies`` applies it inside database transactions.

- Evenness: an annotator gets the least-annotated item it has not seen (ties broken by a per-annotator
  permutation of the items' positions, so annotators do not all walk the items in the same order).
- Capacity: a regular item has k slots ``0..k-1``; an assignment holds one (``free_slot``); the database makes
  ``(item, slot)`` unique, so a race can never give an item more than k assignments. Gold items are uncapped.
- Gold: every ``gold_every``-th assignment of an annotator is a gold item it has not seen (``gold_turn``).
- Release: a pending assignment expires ``assignment_timeout_s`` after the annotator's last activity, and never
  later than its time limit, nor than a hard cap after it was handed out (``expiry``); its slot goes back to the
  pool.
- Full watch (``watch_problem``): every side has a ``play`` and an ``ended`` event whose playback position
  reached ``min_watch_fraction`` of the video's duration (the duration the server knows, not the page's), and
  at least that fraction of the longest video's duration has passed on the server's clock since the
  assignment was handed out.

Tests: ``python -m pytest tests/backend/test_study_design.py -q``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Iterable, Mapping

EVENTS = ("load", "play", "pause", "progress", "seeked", "ended", "visibility")
SIDES = ("left", "right")


def annotator_order(annotator_id: str, n_items: int) -> tuple[int, int]:
    """``(mul, add)`` with ``mul`` coprime to ``n_items``: ``(position * mul + add) % n_items`` is a permutation of
    the positions that is fixed per annotator (usable inside an SQL ORDER BY)."""
    n = max(1, int(n_items))
    h = int.from_bytes(hashlib.sha256(annotator_id.encode()).digest()[:8], "big")
    add = h % n
    mul = 1 + (h >> 20) % n if n > 1 else 1
    while math.gcd(mul, n) != 1:
        mul = mul % n + 1
    return mul, add


def gold_turn(n_assigned: int, gold_every: int | None) -> bool:
    """Whether an annotator's next assignment (its ``n_assigned``-th, from 0) should be a gold item."""
    return bool(gold_every) and (int(n_assigned) + 1) % int(gold_every) == 0


def free_slot(taken: Iterable[int | None], k: int) -> int | None:
    """The smallest of the slots ``0..k-1`` not in ``taken``; None when the item is full."""
    used = {int(s) for s in taken if s is not None}
    return next((s for s in range(int(k)) if s not in used), None)


def expiry(
    now: dt.datetime,
    assigned_at: dt.datetime,
    timeout_s: float,
    time_limit_s: float | None,
    grace_s: float = 5.0,
    max_hold_s: float | None = None,
) -> dt.datetime:
    """When a pending assignment is released: ``timeout_s`` after the last activity (``now``), capped at the time
    limit (plus a few seconds of grace for the request in flight) and at ``max(max_hold_s, timeout_s)`` after the
    hand-out (activity extends the lease, but not indefinitely; the first lease is never cut short)."""
    until = now + dt.timedelta(seconds=float(timeout_s))
    if time_limit_s is not None:
        until = min(until, assigned_at + dt.timedelta(seconds=float(time_limit_s) + grace_s))
    if max_hold_s is not None:
        until = min(until, assigned_at + dt.timedelta(seconds=max(float(max_hold_s), float(timeout_s))))
    return until


def over_time_limit(
    now: dt.datetime, assigned_at: dt.datetime, time_limit_s: float | None, grace_s: float = 5.0
) -> bool:
    return time_limit_s is not None and (now - assigned_at).total_seconds() > float(time_limit_s) + grace_s


def watch_problem(
    events: Iterable[Mapping[str, object]], durations: Mapping[str, float], elapsed_s: float, min_fraction: float = 0.97
) -> str | None:
    """None when the playback events show every side in ``durations`` watched to the end, else the reason.

    ``events``: dicts with ``event``, ``side`` and ``video_time_s`` (the page's ``currentTime``).
    ``durations``: side -> the video's duration in seconds as the server knows it (frames / fps).
    ``elapsed_s``: server time since the assignment was handed out.
    """
    if not durations:
        return "no videos to watch"
    played = {side: False for side in durations}
    reached = {side: 0.0 for side in durations}
    for e in events:
        side = e.get("side")
        if side not in durations:
            continue
        if e.get("event") == "play":
            played[side] = True
        elif e.get("event") == "ended":
            t = e.get("video_time_s")
            if isinstance(t, (int, float)) and math.isfinite(float(t)):
                reached[side] = max(reached[side], float(t))
    for side, duration in durations.items():
        need = min_fraction * float(duration)
        if not played[side]:
            return f"the {side} video was never played"
        if reached[side] < need - 1e-6:
            got = "no 'ended' event" if reached[side] == 0.0 else f"it ended at {reached[side]:.2f} s"
            return (
                f"the {side} video was not played to the end ({got}; needs an 'ended' event at >= "
                f"{100 * min_fraction:.0f}% of its {duration:.2f} s)"
            )
    longest = max(float(d) for d in durations.values())
    if elapsed_s < min_fraction * longest - 1e-6:
        return (
            f"answered {elapsed_s:.2f} s after the item was handed out, less than the {longest:.2f} s the "
            "videos take to play"
        )
    return None


__all__ = ["EVENTS", "SIDES", "annotator_order", "expiry", "free_slot", "gold_turn", "over_time_limit", "watch_problem"]
