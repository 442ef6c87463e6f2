"""Human preference studies in the database: create (items, gold videos), annotators and their tokens, the
concurrency-safe hand-out of items, playback events, answers, raw responses and results.

The policy (which item, which slot, full watch) is pure and lives in ``evaluator.study.assignment``; the design
(items, gold, sides) in ``evaluator.study.design``; this module applies them in transactions:

- ``next_assignment`` runs in one write transaction. On PostgreSQL the annotator's row is locked (``FOR UPDATE``:
  two tabs of one annotator get the same item) and the candidate item row is taken with ``FOR UPDATE SKIP
  LOCKED`` (concurrent annotators take different items instead of waiting); on SQLite the transaction holds the
  write lock from its start (``BEGIN IMMEDIATE``), so hand-outs are serial. Either way the unique constraints
  ``(annotator, item)`` and ``(item, slot)`` are the last line of defence; a violation rolls back and retries.
- ``submit_answer`` locks the assignment and flips it ``pending -> done`` with a conditional UPDATE, so exactly one
  of two concurrent submissions wins; ``(assignment, question)`` is unique too.

Errors are ``StudyError(status, code, message, field)``; the routes turn them into JSON errors.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from backend.db.models import (
    Annotator,
    Assignment,
    Benchmark,
    PlaybackEvent,
    Response,
    Score,
    Study,
    StudyItem,
    Video,
    new_id,
    utcnow,
)
from backend.db.session import begin_write
from backend.security import hash_token, new_token
from backend.storage import ArtifactStore
from evaluator.study import assignment as policy
from evaluator.study import design
from trainer.data.synthetic import sample_clips
from trainer.data.video_io import VideoReadError, encode_mp4, read_video

TOKEN_PREFIX = "ann_"
PENDING, DONE, EXPIRED = "pending", "done", "expired"
DRAFT, OPEN, CLOSED = "draft", "open", "closed"
MAX_EVENTS_PER_ASSIGNMENT = 2000
MAX_EVENTS_PER_REQUEST = 50
MAX_VIDEO_TIME_S = 36_000.0


class StudyError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None, limit: Any = None):
        self.status, self.code, self.message, self.field, self.limit = status, code, message, field, limit
        super().__init__(message)


def aware(t: dt.datetime | None) -> dt.datetime | None:
    """SQLite gives naive datetimes back; every stored time is UTC."""
    if t is not None and t.tzinfo is None:
        return t.replace(tzinfo=dt.UTC)
    return t


# --- creating a study --------------------------------------------------------------------------------------------


@dataclass
class _PreparedVideo:
    """A video the study will reference: an existing row, or a file to register as a new row."""

    ref: design.VideoRef
    video_id: str
    row: Video | None = None  # a new row to insert


def _sha256(path: Any) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def probe_video(path: Any) -> tuple[int, int, int, float]:
    """``(frames, height, width, fps)`` of a video file from its container (no decoding; decodes only when the
    container does not record its frame count)."""
    import av  # heavy: FFmpeg's bindings, for the few requests that add videos

    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoReadError(path, "no video stream")
            st = c.streams.video[0]
            n, h, w = int(st.frames or 0), int(st.codec_context.height), int(st.codec_context.width)
            fps = float(st.average_rate or st.guessed_rate or 0)
    except VideoReadError:
        raise
    except Exception as exc:  # decoders raise many types; name the file
        raise VideoReadError(path, f"{type(exc).__name__}: {exc}") from exc
    if n <= 0 or fps <= 0 or h <= 0 or w <= 0:
        frames, fps = read_video(path)
        n, h, w = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    return n, h, w, fps


def _register_file(
    store: ArtifactStore, src: Any, ref: design.VideoRef, benchmark_id: str | None, params: dict[str, Any]
) -> Video:
    """Copy a video file into the store (``videos/<id>.mp4``) and describe it as a Video row (not yet added)."""
    n, h, w, fps = probe_video(src)
    vid = new_id("vid")
    with store.atomic_file("videos", vid, ".mp4") as tmp:
        shutil.copyfile(src, tmp)
    path = store.path("videos", vid, ".mp4")
    return Video(
        id=vid,
        benchmark_id=benchmark_id,
        checkpoint=ref.model,
        prompt=ref.prompt,
        seed=ref.seed,
        params=params,
        num_frames=n,
        height=h,
        width=w,
        fps=fps,
        storage_key=store.key("videos", vid, ".mp4"),
        size_bytes=path.stat().st_size,
        sha256=_sha256(path),
    )


def _write_frames(store: ArtifactStore, frames: Any, fps: float, ref: design.VideoRef, params: dict[str, Any]) -> Video:
    """Encode frames for browsers (``encode_mp4(quality="web")``) into the store; a Video row (not yet added)."""
    vid = new_id("vid")
    data = encode_mp4(frames, fps, quality="web")
    store.write_bytes("videos", vid, data, ".mp4")
    return Video(
        id=vid,
        checkpoint=ref.model,
        prompt=ref.prompt,
        seed=ref.seed,
        params=params,
        num_frames=int(frames.shape[0]),
        height=int(frames.shape[1] + frames.shape[1] % 2),
        width=int(frames.shape[2] + frames.shape[2] % 2),
        fps=float(fps),
        storage_key=store.key("videos", vid, ".mp4"),
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _source_videos(
    db: Session, store: ArtifactStore, source: Mapping[str, Any]
) -> tuple[list[design.VideoRef], str | None]:
    """The candidate videos of a study: a benchmark's output (refs keyed by file path) or existing video rows
    (refs keyed by video id)."""
    if source.get("benchmark_id"):
        bid = source["benchmark_id"]
        bench = db.get(Benchmark, bid)
        if bench is None:
            raise StudyError(404, "not_found", f"benchmark_id: no benchmark {bid!r}", "benchmark_id")
        records = [
            {"model": s.checkpoint, "prompt": s.prompt, "seed": s.seed}
            for s in db.scalars(select(Score).where(Score.benchmark_id == bid))
        ]
        out_dir = store.path("reports", bid)
        if not records:
            records = design.read_records(out_dir)
        refs = design.benchmark_videos(records, out_dir)
        if not refs:
            raise StudyError(
                409,
                "no_videos",
                f"benchmark_id: benchmark {bid} has no videos yet (status {bench.status})",
                "benchmark_id",
            )
        return refs, bid
    ids = list(source.get("video_ids") or [])
    if not ids:
        raise StudyError(422, "validation_error", "source: give a benchmark_id or video_ids", "benchmark_id")
    rows = {v.id: v for v in db.scalars(select(Video).where(Video.id.in_(ids)))}
    missing = [i for i in ids if i not in rows]
    if missing:
        raise StudyError(404, "not_found", f"video_ids: no video {missing[0]!r}", "video_ids")
    return [design.VideoRef(rows[i].checkpoint, rows[i].prompt, int(rows[i].seed), i) for i in ids], None


def create_study(
    db: Session,
    store: ArtifactStore,
    *,
    name: str,
    config: Mapping[str, Any] | None,
    source: Mapping[str, Any],
    api_key_id: str | None,
    open_now: bool = False,
) -> Study:
    """Validate the design, build the items (and gold videos), register the videos and write the study.

    Video files are prepared before the write transaction (so SQLite's write lock is not held while encoding);
    ``source``: ``{"benchmark_id": ...}`` or ``{"video_ids": [...]}``. Commits.
    """
    try:
        cfg = design.validate_config(config)
        refs, benchmark_id = _source_videos(db, store, source)
        items = design.build_items(refs, cfg)
        models = design.study_models(refs, cfg)
    except design.DesignError as exc:
        raise StudyError(422, "invalid_study", str(exc), exc.field, exc.limit) from exc
    db.rollback()  # end the read transaction before the (slow) file work

    by_model_refs = [r for r in refs if r.model in models]
    used: dict[design.VideoRef, _PreparedVideo] = {}

    def prepared(ref: design.VideoRef) -> _PreparedVideo:
        if ref not in used:
            if benchmark_id is not None:
                row = _register_file(store, ref.key, ref, benchmark_id, {"source": "benchmark"})
                used[ref] = _PreparedVideo(ref, row.id, row)
            else:
                used[ref] = _PreparedVideo(ref, ref.key)
        return used[ref]

    gold_specs: list[tuple[design.ItemSpec, list[Video]]] = []
    try:
        for it in items:
            for v in it.videos:
                prepared(v)
        if cfg["gold"]["count"]:
            _gold_items(db, store, cfg, by_model_refs, prepared, benchmark_id, len(items), gold_specs)
        return _insert_study(db, name, cfg, models, source, api_key_id, open_now, items, used, gold_specs)
    except BaseException as exc:
        # nothing half-made stays behind: the files written for this study go with it
        db.rollback()
        for row in [p.row for p in used.values() if p.row is not None] + [r for _, rs in gold_specs for r in rs]:
            store.delete(*_kind_id(row.storage_key))
        if isinstance(exc, design.DesignError):
            raise StudyError(422, "invalid_study", str(exc), exc.field, exc.limit) from exc
        raise


def _kind_id(key: str) -> tuple[str, str, str]:
    kind, _, name = key.partition("/")
    stem, dot, suffix = name.partition(".")
    return kind, stem, dot + suffix


def _insert_study(
    db: Session,
    name: str,
    cfg: dict[str, Any],
    models: list[str],
    source: Mapping[str, Any],
    api_key_id: str | None,
    open_now: bool,
    items: list[design.ItemSpec],
    used: dict[design.VideoRef, _PreparedVideo],
    gold_specs: list[tuple[design.ItemSpec, list[Video]]],
) -> Study:
    begin_write(db)
    study = Study(
        name=name,
        status=OPEN if open_now else DRAFT,
        api_key_id=api_key_id,
        config={**cfg, "models": models, "source": dict(source), "n_items": len(items), "n_gold": len(gold_specs)},
        opened_at=utcnow() if open_now else None,
    )
    db.add(study)
    for p in used.values():
        if p.row is not None:
            db.add(p.row)
    for _, rows in gold_specs:
        for r in rows:
            db.add(r)
    db.flush()
    for it in items:
        vids = [used[v].video_id for v in it.videos]
        db.add(
            StudyItem(
                study_id=study.id,
                position=it.position,
                prompt=it.prompt,
                video_a_id=vids[0],
                video_b_id=vids[1] if len(vids) > 1 else None,
                system_a=it.videos[0].model,
                system_b=it.videos[1].model if len(vids) > 1 else None,
                is_attention_check=False,
                meta={"seed": it.seed},
            )
        )
    for it, _rows in gold_specs:
        db.add(
            StudyItem(
                study_id=study.id,
                position=it.position,
                prompt=it.prompt,
                video_a_id=it.videos[0].key,
                video_b_id=it.videos[1].key,
                system_a=it.videos[0].model,
                system_b=it.videos[1].model,
                is_attention_check=True,
                meta={"seed": it.seed, "gold": it.gold},
            )
        )
    db.commit()
    return study


def _gold_items(
    db: Session,
    store: ArtifactStore,
    cfg: Mapping[str, Any],
    refs: Sequence[design.VideoRef],
    prepared: Any,
    benchmark_id: str | None,
    n_items: int,
    out: list[tuple[design.ItemSpec, list[Video]]],
) -> None:
    """Gold items, appended to ``out`` as they are made: an original video (a study video, or a synthetic
    real-motion clip) against its distorted copy, written with ``write_video(quality="web")``. Keys of the
    ItemSpecs' videos are video ids."""
    g = cfg["gold"]
    if g["source"] == "synthetic":
        sample = db.get(Video, prepared(refs[0]).video_id) or prepared(refs[0]).row
        h, w = (sample.height, sample.width) if sample is not None else (32, 32)
        frames_n = max(10, sample.num_frames if sample is not None else 17)
        fps = sample.fps if sample is not None else 8.0
        clips = sample_clips(g["count"], seed=cfg["seed"] + 101, frames=frames_n, height=h, width=w, fps=fps)
        for i, (frames, caption, _meta) in enumerate(clips):
            ref = design.VideoRef(design.GOLD_ORIGINAL, caption, i, "")
            orig = _write_frames(store, frames, fps, ref, {"gold": "original", "source": "synthetic"})
            distorted = design.make_gold_video(frames, g["distortion"], cfg["seed"] + i, g["max_frac"])
            bad = _write_frames(
                store,
                distorted,
                fps,
                design.VideoRef(f"gold:{g['distortion']}", caption, i, ""),
                {"gold": g["distortion"], "of": orig.id},
            )
            spec = design.gold_item(
                n_items + i,
                design.VideoRef(design.GOLD_ORIGINAL, caption, i, orig.id),
                bad.id,
                g["distortion"],
                g["expect"],
            )
            out.append((spec, [orig, bad]))
        return
    sources = design.pick_gold_sources(refs, g["count"], cfg["seed"])
    for i, src in enumerate(sources):
        p = prepared(src)
        row = p.row or db.get(Video, p.video_id)
        frames, fps = read_video(store.path_for_key(row.storage_key))
        distorted = design.make_gold_video(frames, g["distortion"], cfg["seed"] + i, g["max_frac"])
        bad = _write_frames(
            store,
            distorted,
            fps,
            design.VideoRef(f"gold:{g['distortion']}", src.prompt, src.seed, ""),
            {"gold": g["distortion"], "of": p.video_id},
        )
        original = design.VideoRef(design.GOLD_ORIGINAL, src.prompt, src.seed, p.video_id)
        out.append((design.gold_item(n_items + i, original, bad.id, g["distortion"], g["expect"]), [bad]))


def set_status(db: Session, study: Study, status: str) -> Study:
    if status == OPEN:
        if study.status == CLOSED:
            raise StudyError(409, "study_closed", f"study_id: study {study.id} is closed; it cannot reopen", "study_id")
        if study.status != OPEN:
            study.status, study.opened_at = OPEN, utcnow()
    elif status == CLOSED and study.status != CLOSED:
        study.status, study.closed_at = CLOSED, utcnow()
        db.execute(
            update(Assignment)
            .where(Assignment.study_id == study.id, Assignment.status == PENDING)
            .values(status=EXPIRED, slot=None)
            .execution_options(synchronize_session=False)
        )
    return study


def list_studies(db: Session, limit: int, offset: int) -> tuple[Sequence[Study], int]:
    total = db.scalar(select(func.count()).select_from(Study)) or 0
    rows = db.scalars(select(Study).order_by(Study.created_at.desc(), Study.id).limit(limit).offset(offset)).all()
    return rows, total


def study_counts(db: Session, study_id: str) -> dict[str, int]:
    items = dict(
        db.execute(
            select(StudyItem.is_attention_check, func.count())
            .where(StudyItem.study_id == study_id)
            .group_by(StudyItem.is_attention_check)
        ).all()
    )
    by_status = dict(
        db.execute(
            select(Assignment.status, func.count()).where(Assignment.study_id == study_id).group_by(Assignment.status)
        ).all()
    )
    return {
        "items": int(items.get(False, 0)),
        "gold_items": int(items.get(True, 0)),
        "annotators": int(db.scalar(select(func.count()).where(Annotator.study_id == study_id)) or 0),
        "assignments_pending": int(by_status.get(PENDING, 0)),
        "assignments_done": int(by_status.get(DONE, 0)),
        "assignments_expired": int(by_status.get(EXPIRED, 0)),
        "responses": int(db.scalar(select(func.count()).where(Response.study_id == study_id)) or 0),
    }


# --- annotators ----------------------------------------------------------------------------------------------------


def create_annotators(
    db: Session, study: Study, names: Sequence[str | None], quota: int | None, pepper: str | None
) -> list[tuple[Annotator, str]]:
    """One annotator per name; returns (row, plaintext token). Tokens start with ``ann_`` and are never API keys."""
    out = []
    for name in names:
        token = new_token(TOKEN_PREFIX)
        row = Annotator(
            study_id=study.id,
            name=name,
            token_hash=hash_token(token, pepper),
            meta={"quota": quota} if quota is not None else None,
        )
        db.add(row)
        out.append((row, token))
    db.flush()
    return out


def annotator_for_token(db: Session, token: str, pepper: str | None) -> Annotator | None:
    if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
        return None
    return db.scalar(select(Annotator).where(Annotator.token_hash == hash_token(token, pepper)))


def quota_of(study: Study, annotator: Annotator) -> int | None:
    q = (annotator.meta or {}).get("quota")
    return int(q) if q is not None else study.config.get("items_per_annotator")


def progress(db: Session, study: Study, annotator: Annotator) -> dict[str, Any]:
    counts = dict(
        db.execute(
            select(Assignment.status, func.count())
            .where(Assignment.annotator_id == annotator.id)
            .group_by(Assignment.status)
        ).all()
    )
    done = int(counts.get(DONE, 0))
    quota = quota_of(study, annotator)
    cfg = study.config
    n_regular, n_gold, every = cfg.get("n_items", 0), cfg.get("n_gold", 0), cfg.get("gold_every")
    reachable = n_regular + (min(n_gold, n_regular // max(1, every - 1)) if every else 0)
    target = min(quota, reachable) if quota is not None else reachable
    return {"done": done, "target": int(target), "quota": quota}


def annotator_rows(db: Session, study: Study) -> list[dict[str, Any]]:
    rows = db.scalars(
        select(Annotator).where(Annotator.study_id == study.id).order_by(Annotator.created_at, Annotator.id)
    ).all()
    counts: dict[tuple[str, str], int] = {
        (a, s): int(n)
        for a, s, n in db.execute(
            select(Assignment.annotator_id, Assignment.status, func.count())
            .where(Assignment.study_id == study.id)
            .group_by(Assignment.annotator_id, Assignment.status)
        ).all()
    }
    return [
        {
            "id": a.id,
            "name": a.name,
            "created_at": a.created_at,
            "last_seen_at": a.last_seen_at,
            "revoked_at": a.revoked_at,
            "quota": quota_of(study, a),
            "done": counts.get((a.id, DONE), 0),
            "pending": counts.get((a.id, PENDING), 0),
        }
        for a in rows
    ]


# --- hand-out -----------------------------------------------------------------------------------------------------


def release_expired(db: Session, study_id: str, now: dt.datetime) -> int:
    """Expire pending assignments past their deadline and free their slots (rows others hold are skipped)."""
    ids = (
        select(Assignment.id)
        .where(Assignment.study_id == study_id, Assignment.status == PENDING, Assignment.expires_at < now)
        .limit(500)
        .with_for_update(skip_locked=True)
    )
    res = db.execute(
        update(Assignment)
        .where(Assignment.id.in_(ids))
        .values(status=EXPIRED, slot=None)
        .execution_options(synchronize_session=False)
    )
    return int(res.rowcount or 0)


def _pending(db: Session, annotator_id: str) -> Assignment | None:
    return db.scalar(
        select(Assignment)
        .where(Assignment.annotator_id == annotator_id, Assignment.status == PENDING)
        .order_by(Assignment.assigned_at.desc())
        .limit(1)
    )


def _pick(
    db: Session, study: Study, annotator: Annotator, gold: bool, tried: set[str]
) -> tuple[StudyItem, int | None] | None:
    k = int(study.config["k"])
    n_items = int(study.config.get("n_items", 0)) + int(study.config.get("n_gold", 0))
    mul, add = policy.annotator_order(annotator.id, max(1, n_items))
    taken = (
        select(func.count())
        .select_from(Assignment)
        .where(Assignment.item_id == StudyItem.id, Assignment.slot.is_not(None))
        .correlate(StudyItem)
        .scalar_subquery()
    )
    seen = exists().where(Assignment.annotator_id == annotator.id, Assignment.item_id == StudyItem.id)
    q = select(StudyItem).where(StudyItem.study_id == study.id, StudyItem.is_attention_check == gold, ~seen)
    if tried:
        q = q.where(StudyItem.id.not_in(tried))
    order = (StudyItem.position * mul + add) % max(1, n_items)
    q = q.order_by(order) if gold else q.where(taken < k).order_by(taken, order)
    for _ in range(8):
        # PostgreSQL: skip items another hand-out holds; when every candidate is held, wait for one rather than
        # telling the annotator there is nothing left (the holder may fill only one of its free slots)
        item = db.scalar(q.limit(1).with_for_update(of=StudyItem, skip_locked=True))
        if item is None and db.bind.dialect.name == "postgresql":
            item = db.scalar(q.limit(1).with_for_update(of=StudyItem))
        if item is None:
            return None
        if gold:
            return item, None
        # the row lock is ours: count again (the candidate query's snapshot may predate another commit)
        slots = db.scalars(
            select(Assignment.slot).where(Assignment.item_id == item.id, Assignment.slot.is_not(None))
        ).all()
        slot = policy.free_slot(slots, k)
        if slot is not None:
            return item, slot
        tried.add(item.id)
        q = q.where(StudyItem.id != item.id)
    return None


def _new_assignment(db: Session, study: Study, annotator: Annotator, now: dt.datetime) -> Assignment | None:
    cfg = study.config
    n_assigned = int(db.scalar(select(func.count()).where(Assignment.annotator_id == annotator.id)) or 0)
    live = int(
        db.scalar(
            select(func.count()).where(Assignment.annotator_id == annotator.id, Assignment.status.in_((PENDING, DONE)))
        )
        or 0
    )
    quota = quota_of(study, annotator)
    if quota is not None and live >= quota:
        return None
    tried: set[str] = set()
    picked = None
    if policy.gold_turn(live, cfg.get("gold_every")):
        picked = _pick(db, study, annotator, True, tried)
    if picked is None:
        picked = _pick(db, study, annotator, False, tried)
    if picked is None:
        return None
    item, slot = picked
    swap = item.video_b_id is not None and design.side_swap(int(cfg.get("seed", 0)), annotator.id, item.id)
    a = Assignment(
        study_id=study.id,
        annotator_id=annotator.id,
        item_id=item.id,
        order_index=n_assigned,
        swap_sides=swap,
        status=PENDING,
        assigned_at=now,
        slot=slot,
        expires_at=policy.expiry(now, now, cfg["assignment_timeout_s"], cfg.get("time_limit_s")),
    )
    db.add(a)
    db.flush()
    return a


def next_assignment(
    db: Session, study_id: str, annotator_id: str, retries: int = 6, max_hold_s: float | None = None
) -> tuple[Assignment | None, bool]:
    """The annotator's current item, or a new one. Returns ``(assignment or None when finished, created)``.

    Runs (and commits) its own write transaction; retried on a unique-constraint race or a deadlock. ``max_hold_s``:
    the hard cap on the current item's lease (``policy.expiry``).
    """
    for attempt in range(retries):
        try:
            begin_write(db)
            annotator = db.scalar(select(Annotator).where(Annotator.id == annotator_id).with_for_update())
            study = db.get(Study, study_id)
            now = utcnow()
            annotator.last_seen_at = now
            current = _pending(db, annotator_id)
            if current is not None and aware(current.expires_at) > now:
                current.expires_at = policy.expiry(
                    now,
                    aware(current.assigned_at),
                    study.config["assignment_timeout_s"],
                    study.config.get("time_limit_s"),
                    max_hold_s=max_hold_s,
                )
                db.commit()
                return current, False
            release_expired(db, study_id, now)
            a = _new_assignment(db, study, annotator, now)
            db.commit()
            return a, a is not None
        except (IntegrityError, OperationalError) as exc:
            db.rollback()
            if attempt == retries - 1 or (isinstance(exc, OperationalError) and not _retryable(exc)):
                raise
            time.sleep(0.01 * (attempt + 1))
    return None, False


def _retryable(exc: OperationalError) -> bool:
    text = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    return any(s in text for s in ("deadlock", "could not serialize", "database is locked", "lock timeout"))


def assignment_for(db: Session, annotator: Annotator, assignment_id: str, lock: bool = False) -> Assignment:
    q = select(Assignment).where(Assignment.id == assignment_id)
    if lock:  # a locked read is a fresh read: the session keeps loaded rows (expire_on_commit=False)
        q = q.with_for_update().execution_options(populate_existing=True)
    a = db.scalar(q)
    if a is None or a.annotator_id != annotator.id:
        raise StudyError(
            404,
            "not_assigned",
            "assignment_id: this item is not assigned to you (no such assignment for this invitation link)",
            "assignment_id",
        )
    return a


def side_videos(db: Session, item: StudyItem, swap: bool) -> dict[str, Video]:
    """side -> Video as the annotator sees them (Likert: only "left")."""
    a = db.get(Video, item.video_a_id) if item.video_a_id else None
    b = db.get(Video, item.video_b_id) if item.video_b_id else None
    if b is None:
        return {"left": a}
    return {"left": b, "right": a} if swap else {"left": a, "right": b}


def durations(videos: Mapping[str, Video]) -> dict[str, float]:
    return {side: float(v.num_frames) / float(v.fps) for side, v in videos.items() if v is not None}


def range_bytes(range_header: str | None, size: int) -> int:
    """How many bytes of a ``size``-byte file a request with this Range header gets (all of it without one)."""
    if not range_header:
        return size
    unit, _, spec = range_header.partition("=")
    if unit.strip().lower() != "bytes":
        return 0
    total = 0
    for part in spec.split(",")[:16]:
        first, _, last = part.strip().partition("-")
        try:
            if not first:  # the last N bytes
                total += min(int(last), size)
            else:
                start = int(first)
                end = min(int(last), size - 1) if last else size - 1
                total += max(0, end - start + 1)
        except ValueError:
            return 0
    return min(total, size)


def record_served(db: Session, annotator: Annotator, assignment_id: str, side: str, n_bytes: int, size: int) -> None:
    """Count ``n_bytes`` of the ``side`` video as sent to the assignment: note when its first bytes went out
    (``first``) and when the count reached the file's ``size`` (``at``), the server's record of a fetched video for
    ``submit_answer``'s watch check. Commits."""
    begin_write(db)
    a = assignment_for(db, annotator, assignment_id, lock=True)
    served = dict(a.served or {})
    rec = dict(served.get(side) or {"bytes": 0, "first": None, "at": None})
    if rec.get("at") is None and n_bytes > 0:
        rec["bytes"] = int(rec.get("bytes", 0)) + int(n_bytes)
        rec["first"] = rec.get("first") or utcnow().isoformat()
        if rec["bytes"] >= size:
            rec["at"] = utcnow().isoformat()
        served[side] = rec
        a.served = served  # a new dict: the JSON column sees the change
    db.commit()


def served_problem(a: Assignment, durs: Mapping[str, float], now: dt.datetime, fraction: float) -> str | None:
    """Why the server's own record does not show a full watch of every side (None when it does): each video must
    have been sent whole to this assignment, its first bytes at least its duration (times ``fraction``) ago. A
    browser streams a clip while it plays it (range requests), so the last bytes may leave mid-playback; no one can
    have played a clip to its end sooner than its duration after the first bytes reached them."""
    recs = {side: (a.served or {}).get(side, {}) for side in durs}
    for side in sorted(durs):
        if not recs[side].get("at"):
            return f"the {side} video was never loaded for this item"
    for side, dur in sorted(durs.items()):
        first = recs[side].get("first") or recs[side]["at"]
        elapsed = (now - aware(dt.datetime.fromisoformat(first))).total_seconds()
        if elapsed < fraction * dur - 1e-6:
            return f"the {side} video was loaded {elapsed:.1f} s ago and lasts {dur:.1f} s"
    return None


# --- playback events and answers -----------------------------------------------------------------------------------


def _check_pending(a: Assignment, study: Study, now: dt.datetime) -> None:
    if a.status == DONE:
        raise StudyError(
            409,
            "duplicate_answer",
            "assignment_id: you already answered this item; each item takes one answer per annotator",
            "assignment_id",
        )
    if a.status == EXPIRED:
        raise StudyError(
            409,
            "assignment_expired",
            f"assignment_id: this item was released after {study.config['assignment_timeout_s']} s "
            "without activity (or its time limit passed); load the next item",
            "assignment_id",
        )


def record_events(
    db: Session,
    study: Study,
    annotator: Annotator,
    assignment_id: str,
    events: Sequence[Mapping[str, Any]],
    max_hold_s: float | None = None,
) -> int:
    """Store playback events of a pending assignment and push its release deadline back, at most to ``max_hold_s``
    after its hand-out (``policy.expiry``). Commits."""
    if len(events) > MAX_EVENTS_PER_REQUEST:
        raise StudyError(
            422,
            "limit_exceeded",
            f"events: at most {MAX_EVENTS_PER_REQUEST} per request",
            "events",
            MAX_EVENTS_PER_REQUEST,
        )
    clean = []
    for i, e in enumerate(events):
        if e.get("event") not in policy.EVENTS:
            raise StudyError(
                422,
                "validation_error",
                f"events[{i}].event: must be one of {list(policy.EVENTS)}",
                f"events[{i}].event",
            )
        if e.get("side") not in policy.SIDES:
            raise StudyError(
                422, "validation_error", f"events[{i}].side: must be one of {list(policy.SIDES)}", f"events[{i}].side"
            )
        t = e.get("t")
        if t is not None and (
            not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 <= t <= MAX_VIDEO_TIME_S
        ):
            raise StudyError(
                422,
                "limit_exceeded",
                f"events[{i}].t: must be a time in [0, {MAX_VIDEO_TIME_S:g}] s",
                f"events[{i}].t",
                MAX_VIDEO_TIME_S,
            )
        clean.append(e)
    begin_write(db)
    a = assignment_for(db, annotator, assignment_id, lock=True)
    now = utcnow()
    _check_pending(a, study, now)
    have = int(db.scalar(select(func.count()).where(PlaybackEvent.assignment_id == a.id)) or 0)
    if have + len(clean) > MAX_EVENTS_PER_ASSIGNMENT:
        raise StudyError(
            429,
            "too_many_events",
            f"events: at most {MAX_EVENTS_PER_ASSIGNMENT} per item",
            "events",
            MAX_EVENTS_PER_ASSIGNMENT,
        )
    for e in clean:
        meta = {
            k: e[k]
            for k in ("duration", "paused")
            if isinstance(e.get(k), (int, float, bool)) and (not isinstance(e.get(k), float) or math.isfinite(e[k]))
        }
        client = e.get("client_ms")
        db.add(
            PlaybackEvent(
                study_id=study.id,
                assignment_id=a.id,
                annotator_id=annotator.id,
                event=e["event"],
                side=e["side"],
                video_time_s=None if e.get("t") is None else float(e["t"]),
                client_time_ms=int(client)
                if isinstance(client, (int, float)) and math.isfinite(client) and abs(client) < 2**62
                else None,
                meta=meta or None,
                created_at=now,
            )
        )
    a.expires_at = policy.expiry(
        now,
        aware(a.assigned_at),
        study.config["assignment_timeout_s"],
        study.config.get("time_limit_s"),
        max_hold_s=max_hold_s,
    )
    annotator.last_seen_at = now
    db.commit()
    return len(clean)


def _validate_answers(study: Study, answers: Mapping[str, Any]) -> dict[str, str]:
    q_ids = [q["id"] for q in study.config["questions"]]
    if not isinstance(answers, Mapping):
        raise StudyError(422, "validation_error", "answers: must map each question to an answer", "answers")
    missing = [q for q in q_ids if q not in answers]
    if missing:
        raise StudyError(
            422,
            "incomplete_answer",
            f"answers.{missing[0]}: required (every question needs an answer)",
            f"answers.{missing[0]}",
        )
    extra = [q for q in answers if q not in q_ids]
    if extra:
        raise StudyError(
            422,
            "validation_error",
            f"answers.{extra[0]}: not a question of this study (questions: {q_ids})",
            f"answers.{extra[0]}",
        )
    out = {}
    for q in q_ids:
        v = answers[q]
        if study.config["mode"] == "pairwise":
            if v not in ("left", "tie", "right"):
                raise StudyError(
                    422,
                    "validation_error",
                    f"answers.{q}: must be 'left', 'tie' or 'right' (got {str(v)[:20]!r})",
                    f"answers.{q}",
                )
            out[q] = v
        else:
            lo, hi = design.LIKERT_SCALE
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise StudyError(
                    422,
                    "validation_error",
                    f"answers.{q}: must be an integer rating {lo}-{hi} (got {str(v)[:20]!r})",
                    f"answers.{q}",
                )
            out[q] = str(v)
    return out


def submit_answer(
    db: Session,
    study: Study,
    annotator: Annotator,
    assignment_id: str,
    answers: Mapping[str, Any],
    duration_ms: int | None = None,
    verify_served: bool = False,
) -> list[Response]:
    """Accept one answer (all questions) for a pending assignment whose playback events show a full watch (and, with
    ``verify_served``, whose videos the server sent whole at least their duration ago: ``served_problem``).

    Rejects (StudyError, nothing stored): another annotator's or unknown assignment (404 not_assigned), an answered
    one (409 duplicate_answer), a released one (409 assignment_expired), one past its time limit (409
    time_limit_exceeded, released), incomplete answers (422), no full watch (422 playback_incomplete). Commits.
    """
    clean = _validate_answers(study, answers)
    begin_write(db)
    a = assignment_for(db, annotator, assignment_id, lock=True)
    now = utcnow()
    _check_pending(a, study, now)
    assigned_at = aware(a.assigned_at)
    if policy.over_time_limit(now, assigned_at, study.config.get("time_limit_s")):
        a.status, a.slot = EXPIRED, None
        db.commit()
        raise StudyError(
            409,
            "time_limit_exceeded",
            f"assignment_id: the time limit of "
            f"{study.config['time_limit_s']} s for this item has passed; "
            "load the next item",
            "assignment_id",
        )
    item = db.get(StudyItem, a.item_id)
    events = [
        {"event": e.event, "side": e.side, "video_time_s": e.video_time_s}
        for e in db.scalars(select(PlaybackEvent).where(PlaybackEvent.assignment_id == a.id))
    ]
    durs = durations(side_videos(db, item, a.swap_sides))
    fraction = study.config.get("min_watch_fraction", 0.97)
    problem = policy.watch_problem(events, durs, (now - assigned_at).total_seconds(), fraction)
    if problem is None and verify_served:
        problem = served_problem(a, durs, now, fraction)
    if problem:
        db.rollback()
        raise StudyError(
            422,
            "playback_incomplete",
            f"answer rejected: {problem}. Play the videos to the end, then answer.",
            "events",
        )
    res = db.execute(
        update(Assignment)
        .where(Assignment.id == a.id, Assignment.status == PENDING)
        .values(status=DONE, completed_at=now)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # lost a race with another submission or the release (only possible without row locks)
        db.rollback()
        raise StudyError(
            409, "duplicate_answer", "assignment_id: this item was answered or released meanwhile", "assignment_id"
        )
    from evaluator.study.export import system_choice  # heavy: statsmodels and pandas, for study answers only

    rows = []
    for q, v in clean.items():
        choice = system_choice(v, a.swap_sides) if study.config["mode"] == "pairwise" else v
        r = Response(
            study_id=study.id,
            assignment_id=a.id,
            annotator_id=annotator.id,
            item_id=a.item_id,
            question=q,
            choice=choice,
            duration_ms=duration_ms,
            meta={"answer": v},
            created_at=now,
        )
        db.add(r)
        rows.append(r)
    annotator.last_seen_at = now
    try:
        db.commit()
    except IntegrityError as exc:
        db.rollback()
        raise StudyError(
            409, "duplicate_answer", "assignment_id: you already answered this item", "assignment_id"
        ) from exc
    return rows


# --- responses and results -----------------------------------------------------------------------------------------


def response_rows(db: Session, study: Study) -> list[dict[str, Any]]:
    """Every response of the study as raw rows (``evaluator.study.export.RESPONSE_COLUMNS``)."""
    from evaluator.study.export import side_answer  # heavy: statsmodels and pandas, for study answers only

    q = (
        select(Response, Assignment, StudyItem)
        .join(Assignment, Assignment.id == Response.assignment_id)
        .join(StudyItem, StudyItem.id == Response.item_id)
        .where(Response.study_id == study.id)
        .order_by(Response.created_at, Response.id)
    )
    pairwise = study.config["mode"] == "pairwise"
    out = []
    for r, a, it in db.execute(q).all():
        if pairwise:
            left, right = (it.system_b, it.system_a) if a.swap_sides else (it.system_a, it.system_b)
            answer: Any = side_answer(r.choice, a.swap_sides)
        else:
            left, right, answer = it.system_a, None, int(r.choice)
        out.append(
            {
                "response_id": r.id,
                "study_id": study.id,
                "item_id": it.id,
                "annotator_id": r.annotator_id,
                "assignment_id": a.id,
                "question": r.question,
                "is_gold": bool(it.is_attention_check),
                "prompt": it.prompt,
                "seed": (it.meta or {}).get("seed"),
                "system_a": it.system_a,
                "system_b": it.system_b,
                "swap_sides": bool(a.swap_sides),
                "model_left": left,
                "model_right": right,
                "choice": r.choice,
                "answer": answer,
                "duration_ms": r.duration_ms,
                "created_at": aware(r.created_at).isoformat(),
            }
        )
    return out


def gold_expectations(db: Session, study: Study) -> dict[str, dict[str, str]]:
    rows = db.scalars(
        select(StudyItem).where(StudyItem.study_id == study.id, StudyItem.is_attention_check == True)
    ).all()
    return {it.id: dict((it.meta or {}).get("gold", {}).get("expect", {})) for it in rows}


def results(
    db: Session, study: Study, *, exclude_flagged: bool = True, n_boot: int = 1000, gold_threshold: float = 0.75
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(results, raw rows) of the study, from ``evaluator.study.export.study_results``."""
    from evaluator.study.export import study_results  # heavy: statsmodels and pandas, for study results only

    rows = response_rows(db, study)
    res = study_results(
        rows,
        mode=study.config["mode"],
        questions=[q["id"] for q in study.config["questions"]],
        gold_expect=gold_expectations(db, study),
        exclude_flagged=exclude_flagged,
        gold_threshold=gold_threshold,
        n_boot=n_boot,
        seed=int(study.config.get("seed", 0)),
    )
    res["study"] = {
        "id": study.id,
        "name": study.name,
        "status": study.status,
        "models": study.config.get("models"),
        "k": study.config.get("k"),
        "question_labels": {q["id"]: q["label"] for q in study.config["questions"]},
    }
    return res, rows
