"""Hosted human preference studies: the admin API under /v1/studies and the annotator pages under /a/<token>.

Admin (API key; ``train`` to change, ``read`` to look):

    POST /v1/studies                         create from a benchmark's videos or from video ids (draft or open)
    GET  /v1/studies, /v1/studies/{id}       list, status and counts
    POST /v1/studies/{id}/open | /close
    POST /v1/studies/{id}/annotators         invitation links (per-annotator tokens, shown once)
    GET  /v1/studies/{id}/annotators         progress per annotator;   POST .../annotators/{ann}/revoke
    GET  /v1/studies/{id}/items              the items with their (hidden to annotators) systems
    GET  /v1/studies/{id}/results            win/tie/lose + intervals + sign test, agreement, Bradley-Terry,
                                             Likert means, gold accuracy; ?exclude_flagged=false keeps everyone
    GET  /v1/studies/{id}/results.csv | responses.csv | responses.json | figure.png (MoGAN Fig. 5)

Annotators (``annotator_router``, mounted at the root; the token in the link is the only credential and opens
nothing but the annotator's own items of its own study; it is not an API key):

    GET  /a/{token}                          the annotation page (plain HTML + JS from backend/study_pages)
    GET  /a/{token}/api/state                study instructions, progress, the current item (if any)
    POST /a/{token}/api/next                 the current item, or a new one
    GET  /a/{token}/api/assignments/{asg}/video/{left|right}
    POST /a/{token}/api/assignments/{asg}/events     playback events (play, progress, ended, ...)
    POST /a/{token}/api/assignments/{asg}/answer     one answer; refused without a full watch (with
                                             ``study_verify_watch``: also unless the server sent both videos
                                             whole to this assignment at least their length ago)
    GET  /study-results/{study_id}           results page (fetches /v1 with the API key the viewer enters)
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.api.deps import (
    Page,
    SessionReleasingRoute,
    check_id,
    get_db,
    get_row,
    get_settings_dep,
    get_store,
    pagination,
    require_scope,
)
from backend.api.errors import ApiError, not_found
from backend.api.schemas import In
from backend.core.config import Settings
from backend.crud import studies as crud
from backend.db.models import Annotator, ApiKey, Assignment, PlaybackEvent, Study, StudyItem, utcnow
from backend.db.session import begin_write
from backend.storage import ArtifactStore

router = APIRouter(prefix="/studies", tags=["studies"], route_class=SessionReleasingRoute)
annotator_router = APIRouter(include_in_schema=False, route_class=SessionReleasingRoute)

PAGES = Path(__file__).resolve().parents[2] / "study_pages"
ASSETS = {"annotate.js": "text/javascript", "study.css": "text/css", "results.js": "text/javascript"}
TOKEN_RE = re.compile(r"^ann_[A-Za-z0-9_-]{20,80}$")
MAX_N_BOOT = 10_000  # bootstrap resamples per results request: CPU a read key can ask for
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token is in the URL: never send it to anyone in a Referer
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "script-src 'self'; style-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'",
}


def _err(exc: crud.StudyError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message, field=exc.field, limit=exc.limit)


# --- schemas --------------------------------------------------------------------------------------------------------


class _In(In):
    """A request body (unknown fields and NUL characters rejected)."""


class StudyCreate(_In):
    name: str = Field(min_length=1, max_length=200)
    benchmark_id: str | None = Field(None, description="take the videos of this benchmark")
    video_ids: list[str] | None = Field(
        None, max_length=20_000, description="or: these videos (checkpoint, prompt and seed from each video)"
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="mode, questions, k, items_per_annotator, "
        "gold {count, distortion, source, expect}, gold_every, time_limit_s, "
        "assignment_timeout_s, models, pairs, max_items, seed, instructions",
    )
    open: bool = Field(False, description="open for annotation right away")


class StudyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    status: str
    config: dict[str, Any]
    created_at: Any
    opened_at: Any = None
    closed_at: Any = None
    counts: dict[str, int] | None = None


class AnnotatorsCreate(_In):
    count: int | None = Field(None, ge=1, le=1000)
    names: list[str] | None = Field(None, min_length=1, max_length=1000)
    quota: int | None = Field(None, ge=1, le=10_000, description="items per annotator (default: the study's)")


class EventIn(_In):
    event: str = Field(max_length=20)
    side: str = Field(max_length=10)
    t: float | None = Field(None, description="the video's currentTime (s)")
    duration: float | None = Field(None, description="the video's duration as the page sees it (s)")
    paused: bool | None = None
    client_ms: int | None = None


class EventsIn(_In):
    events: list[EventIn] = Field(min_length=1, max_length=crud.MAX_EVENTS_PER_REQUEST)


class AnswerIn(_In):
    answers: dict[str, Literal["left", "tie", "right"] | int]
    duration_ms: int | None = Field(None, ge=0, le=7 * 24 * 3600 * 1000)


# --- admin API ------------------------------------------------------------------------------------------------------


def _study(db: Session, study_id: str) -> Study:
    return get_row(db, Study, study_id, "study", "study_id")


def _out(db: Session, s: Study) -> dict[str, Any]:
    return {**StudyOut.model_validate(s).model_dump(), "counts": crud.study_counts(db, s.id)}


@router.post("", response_model=StudyOut, status_code=201, summary="Create a human preference study")
def create_study(
    body: StudyCreate,
    db: Session = Depends(get_db),
    store: ArtifactStore = Depends(get_store),
    key: ApiKey = Depends(require_scope("train")),
) -> dict[str, Any]:
    if bool(body.benchmark_id) == bool(body.video_ids):
        raise ApiError(
            422, "validation_error", "benchmark_id: give exactly one of benchmark_id or video_ids", field="benchmark_id"
        )
    if body.benchmark_id:
        check_id(body.benchmark_id, "benchmark_id")
        source: dict[str, Any] = {"benchmark_id": body.benchmark_id}
    else:
        for i, v in enumerate(body.video_ids or []):
            check_id(v, f"video_ids[{i}]")
        source = {"video_ids": list(dict.fromkeys(body.video_ids or []))}
    try:
        study = crud.create_study(
            db, store, name=body.name, config=body.config, source=source, api_key_id=key.id, open_now=body.open
        )
    except crud.StudyError as exc:
        raise _err(exc) from exc
    return _out(db, study)


@router.get("", summary="List studies")
def list_studies(
    page: Page = Depends(pagination()), db: Session = Depends(get_db), _key: ApiKey = Depends(require_scope("read"))
) -> dict[str, Any]:
    rows, total = crud.list_studies(db, page.limit, page.offset)
    return {"items": [_out(db, s) for s in rows], "total": total, "limit": page.limit, "offset": page.offset}


@router.get("/{study_id}", response_model=StudyOut, summary="Study status and counts")
def get_study(
    study_id: str, db: Session = Depends(get_db), _key: ApiKey = Depends(require_scope("read"))
) -> dict[str, Any]:
    return _out(db, _study(db, study_id))


def _set_status(db: Session, study_id: str, status: str) -> dict[str, Any]:
    check_id(study_id, "study_id")
    begin_write(db)
    study = _study(db, study_id)
    try:
        crud.set_status(db, study, status)
    except crud.StudyError as exc:
        raise _err(exc) from exc
    db.commit()
    return _out(db, study)


@router.post("/{study_id}/open", response_model=StudyOut, summary="Open a study for annotation")
def open_study(
    study_id: str, db: Session = Depends(get_db), _key: ApiKey = Depends(require_scope("train"))
) -> dict[str, Any]:
    return _set_status(db, study_id, crud.OPEN)


@router.post("/{study_id}/close", response_model=StudyOut, summary="Close a study (pending items are released)")
def close_study(
    study_id: str, db: Session = Depends(get_db), _key: ApiKey = Depends(require_scope("train"))
) -> dict[str, Any]:
    return _set_status(db, study_id, crud.CLOSED)


@router.post("/{study_id}/annotators", status_code=201, summary="Create annotators and their invitation links")
def create_annotators(
    study_id: str,
    body: AnnotatorsCreate,
    request: Request,
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
    _key: ApiKey = Depends(require_scope("train")),
) -> dict[str, Any]:
    if (body.count is None) == (body.names is None):
        raise ApiError(422, "validation_error", "count: give exactly one of count or names", field="count")
    names: list[str | None] = list(body.names) if body.names else [None] * int(body.count or 0)
    for i, n in enumerate(names):
        if n is not None and not 1 <= len(n) <= 200:
            raise ApiError(422, "limit_exceeded", f"names[{i}]: must be 1-200 characters", field=f"names[{i}]")
    begin_write(db)
    study = _study(db, study_id)
    if study.status == crud.CLOSED:
        raise ApiError(409, "study_closed", f"study_id: study {study_id} is closed", field="study_id")
    made = crud.create_annotators(db, study, names, body.quota, settings.api_key_pepper)
    db.commit()
    base = str(request.base_url).rstrip("/")
    return {
        "items": [
            {"id": a.id, "name": a.name, "token": token, "path": f"/a/{token}", "link": f"{base}/a/{token}"}
            for a, token in made
        ],
        "note": "the tokens are shown only in this reply; each link is one annotator's credential",
    }


@router.get("/{study_id}/annotators", summary="Annotators and their progress")
def list_annotators(
    study_id: str, db: Session = Depends(get_db), _key: ApiKey = Depends(require_scope("read"))
) -> dict[str, Any]:
    return {"items": crud.annotator_rows(db, _study(db, study_id))}


@router.post("/{study_id}/annotators/{annotator_id}/revoke", summary="Revoke an annotator's link")
def revoke_annotator(
    study_id: str, annotator_id: str, db: Session = Depends(get_db), _key: ApiKey = Depends(require_scope("train"))
) -> dict[str, Any]:
    check_id(annotator_id, "annotator_id")
    begin_write(db)
    study = _study(db, study_id)
    ann = db.get(Annotator, annotator_id)
    if ann is None or ann.study_id != study.id:
        raise not_found("annotator", annotator_id, "annotator_id")
    if ann.revoked_at is None:
        ann.revoked_at = utcnow()
    db.commit()
    return {"id": ann.id, "revoked_at": ann.revoked_at}


@router.get("/{study_id}/items", summary="The study's items, with their systems")
def list_items(
    study_id: str,
    page: Page = Depends(pagination(100)),
    db: Session = Depends(get_db),
    _key: ApiKey = Depends(require_scope("read")),
) -> dict[str, Any]:
    study = _study(db, study_id)
    rows = db.scalars(
        select(StudyItem)
        .where(StudyItem.study_id == study.id)
        .order_by(StudyItem.position, StudyItem.id)
        .limit(page.limit)
        .offset(page.offset)
    ).all()
    counts = crud.study_counts(db, study.id)
    return {
        "items": [
            {
                "id": it.id,
                "position": it.position,
                "prompt": it.prompt,
                "system_a": it.system_a,
                "system_b": it.system_b,
                "video_a_id": it.video_a_id,
                "video_b_id": it.video_b_id,
                "is_gold": it.is_attention_check,
                "meta": it.meta,
            }
            for it in rows
        ],
        "total": counts["items"] + counts["gold_items"],
        "limit": page.limit,
        "offset": page.offset,
    }


def _results(db: Session, study_id: str, exclude_flagged: bool, n_boot: int) -> tuple[dict[str, Any], list, Study]:
    study = _study(db, study_id)
    res, rows = crud.results(db, study, exclude_flagged=exclude_flagged, n_boot=n_boot)
    return res, rows, study


@router.get("/{study_id}/results", summary="Study results (rates, intervals, tests, agreement, ranking, gold)")
def study_results(
    study_id: str,
    exclude_flagged: bool = True,
    n_boot: int = Query(1000, ge=0, le=MAX_N_BOOT),
    db: Session = Depends(get_db),
    _key: ApiKey = Depends(require_scope("read")),
) -> Response:
    # heavy: statsmodels and pandas; the API starts without them
    from evaluator.study.export import to_json

    res, _rows, _ = _results(db, study_id, exclude_flagged, n_boot)
    return Response(to_json(res), media_type="application/json")


@router.get("/{study_id}/results.csv", response_class=PlainTextResponse, summary="Results as CSV")
def results_csv(
    study_id: str,
    exclude_flagged: bool = True,
    n_boot: int = Query(1000, ge=0, le=MAX_N_BOOT),
    db: Session = Depends(get_db),
    _key: ApiKey = Depends(require_scope("read")),
) -> Response:
    # heavy: statsmodels and pandas; the API starts without them
    from evaluator.study.export import results_csv as to_csv

    res, _rows, _ = _results(db, study_id, exclude_flagged, n_boot)
    return Response(
        to_csv(res),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{study_id}-results.csv"'},
    )


@router.get("/{study_id}/responses.csv", summary="Raw responses as CSV")
def responses_csv(
    study_id: str, db: Session = Depends(get_db), _key: ApiKey = Depends(require_scope("read"))
) -> Response:
    # heavy: statsmodels and pandas; the API starts without them
    from evaluator.study.export import responses_csv as to_csv

    rows = crud.response_rows(db, _study(db, study_id))
    return Response(
        to_csv(rows),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{study_id}-responses.csv"'},
    )


@router.get("/{study_id}/responses.json", summary="Raw responses as JSON")
def responses_json(
    study_id: str, db: Session = Depends(get_db), _key: ApiKey = Depends(require_scope("read"))
) -> Response:
    # heavy: statsmodels and pandas; the API starts without them
    from evaluator.study.export import to_json

    study = _study(db, study_id)
    return Response(
        to_json({"study_id": study.id, "responses": crud.response_rows(db, study)}), media_type="application/json"
    )


@router.get(
    "/{study_id}/figure.png",
    summary="Stacked win/tie/lose bars (MoGAN Fig. 5)",
    responses={200: {"content": {"image/png": {}}}},
)
def figure(
    study_id: str,
    exclude_flagged: bool = True,
    focus_model: str | None = None,
    db: Session = Depends(get_db),
    _key: ApiKey = Depends(require_scope("read")),
) -> Response:
    # heavy: statsmodels and pandas; the API starts without them
    from evaluator.study.export import results_figure

    res, _rows, _ = _results(db, study_id, exclude_flagged, 0)
    with tempfile.TemporaryDirectory() as tmp:
        path = results_figure(res, Path(tmp) / "figure.png", focus_model=focus_model)
        if path is None:
            raise ApiError(409, "no_results", "study_id: no pairwise answers yet, nothing to draw", field="study_id")
        data = path.read_bytes()
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


# --- annotator pages ------------------------------------------------------------------------------------------------


class AnnotatorCtx:
    def __init__(self, annotator: Annotator, study: Study):
        self.annotator, self.study = annotator, study


def annotator_ctx(token: str, request: Request, db: Session = Depends(get_db)) -> AnnotatorCtx:
    """The annotator behind an invitation token, with its study; 401 for an unknown token, 403 when revoked."""
    if not TOKEN_RE.fullmatch(token or ""):
        raise ApiError(
            401, "invalid_link", "this invitation link is not valid (check that it was copied whole)", field="token"
        )
    ann = crud.annotator_for_token(db, token, request.app.state.settings.api_key_pepper)
    if ann is None:
        raise ApiError(
            401, "invalid_link", "this invitation link is not valid (check that it was copied whole)", field="token"
        )
    if ann.revoked_at is not None:
        raise ApiError(403, "link_revoked", "this invitation link was revoked by the study's organiser", field="token")
    study = db.get(Study, ann.study_id)
    db.commit()
    return AnnotatorCtx(ann, study)


def _require_open(study: Study) -> None:
    if study.status == crud.DRAFT:
        raise ApiError(409, "study_not_open", "this study has not opened yet; try again later", field="study")
    if study.status == crud.CLOSED:
        raise ApiError(409, "study_closed", "this study is closed; thank you for your help", field="study")


def _public_study(study: Study) -> dict[str, Any]:
    """What an annotator may know of the study: never its name, models, items or other annotators."""
    cfg = study.config
    key = "prompt" if cfg["mode"] == "pairwise" else "likert"
    return {
        "mode": cfg["mode"],
        "status": study.status,
        "instructions": cfg.get("instructions", ""),
        "questions": [{"id": q["id"], "label": q["label"], "text": q[key]} for q in cfg["questions"]],
        "likert_scale": [1, 5],
        "time_limit_s": cfg.get("time_limit_s"),
        "min_watch_fraction": cfg.get("min_watch_fraction", 0.97),
    }


def _public_item(db: Session, token: str, study: Study, a: Assignment) -> dict[str, Any]:
    item = db.get(StudyItem, a.item_id)
    sides = crud.side_videos(db, item, a.swap_sides)
    events = db.execute(
        select(PlaybackEvent.side, PlaybackEvent.event, PlaybackEvent.video_time_s).where(
            PlaybackEvent.assignment_id == a.id, PlaybackEvent.event == "ended"
        )
    ).all()
    dur = crud.durations(sides)
    frac = study.config.get("min_watch_fraction", 0.97)
    watched = {s: any(side == s and (t or 0) >= frac * dur[s] - 1e-6 for side, _e, t in events) for s in sides}
    now = utcnow()
    limit = study.config.get("time_limit_s")
    left_s = None
    if limit is not None:
        left_s = max(0.0, limit - (now - crud.aware(a.assigned_at)).total_seconds())
    return {
        "assignment_id": a.id,
        "number": a.order_index + 1,
        "prompt": item.prompt,
        "sides": list(sides),
        "videos": {s: f"/a/{token}/api/assignments/{a.id}/video/{s}" for s in sides},
        "durations": dur,
        "watched": watched,
        "time_left_s": left_s,
    }


def _state(db: Session, token: str, ctx: AnnotatorCtx, a: Assignment | None) -> dict[str, Any]:
    out = {
        "study": _public_study(ctx.study),
        "progress": crud.progress(db, ctx.study, ctx.annotator),
        "item": _public_item(db, token, ctx.study, a) if a is not None else None,
        "finished": a is None and ctx.study.status == crud.OPEN,
    }
    db.commit()
    return out


def _json(data: Any, status: int = 200) -> Response:
    import json

    return Response(
        json.dumps(data, default=str),
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


@annotator_router.get("/a/{token}", response_class=HTMLResponse)
def annotate_page(token: str) -> HTMLResponse:
    # the page is the same for every token (it reads the token from its own URL); the API checks the token
    return HTMLResponse((PAGES / "annotate.html").read_text(), headers=PAGE_HEADERS)


@annotator_router.get("/study-assets/{name}")
def study_asset(name: str) -> Response:
    if name not in ASSETS:
        raise ApiError(404, "not_found", f"name: no study asset {name[:60]!r}", field="name")
    return Response(
        (PAGES / name).read_text(),
        media_type=ASSETS[name],
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


@annotator_router.get("/study-results/{study_id}", response_class=HTMLResponse)
def results_page(study_id: str) -> HTMLResponse:
    check_id(study_id, "study_id")
    return HTMLResponse((PAGES / "results.html").read_text(), headers=PAGE_HEADERS)


@annotator_router.get("/a/{token}/api/state")
def annotator_state(token: str, db: Session = Depends(get_db), ctx: AnnotatorCtx = Depends(annotator_ctx)) -> Response:
    current = None
    if ctx.study.status == crud.OPEN:
        current = db.scalar(
            select(Assignment)
            .where(Assignment.annotator_id == ctx.annotator.id, Assignment.status == crud.PENDING)
            .limit(1)
        )
        if current is not None and crud.aware(current.expires_at) <= utcnow():
            current = None
    state = _state(db, token, ctx, current)
    state["finished"] = False  # not known until the next item is asked for
    return _json(state)


@annotator_router.post("/a/{token}/api/next")
def annotator_next(
    token: str,
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
    ctx: AnnotatorCtx = Depends(annotator_ctx),
) -> Response:
    _require_open(ctx.study)
    a, _created = crud.next_assignment(db, ctx.study.id, ctx.annotator.id, max_hold_s=settings.study_max_hold_s)
    return _json(_state(db, token, ctx, a))


@annotator_router.get("/a/{token}/api/assignments/{assignment_id}/video/{side}")
def annotator_video(
    token: str,
    assignment_id: str,
    side: str,
    request: Request,
    db: Session = Depends(get_db),
    store: ArtifactStore = Depends(get_store),
    ctx: AnnotatorCtx = Depends(annotator_ctx),
) -> Response:
    check_id(assignment_id, "assignment_id")
    if side not in ("left", "right"):
        raise ApiError(404, "not_found", "side: must be 'left' or 'right'", field="side")
    try:
        a = crud.assignment_for(db, ctx.annotator, assignment_id)
    except crud.StudyError as exc:
        raise _err(exc) from exc
    if a.status == crud.EXPIRED:
        raise ApiError(
            409,
            "assignment_expired",
            "assignment_id: this item was released; load the next item",
            field="assignment_id",
        )
    videos = crud.side_videos(db, db.get(StudyItem, a.item_id), a.swap_sides)
    video = videos.get(side)
    if video is None:
        raise ApiError(404, "not_found", f"side: this item has no {side} video", field="side")
    path = store.path_for_key(video.storage_key)
    db.commit()
    if not path.is_file():
        raise ApiError(410, "gone", "the video file is missing from storage", field="side")
    if a.status == crud.PENDING:  # the server's record of what it sent, for the full-watch check
        size = path.stat().st_size
        try:
            crud.record_served(
                db, ctx.annotator, assignment_id, side, crud.range_bytes(request.headers.get("range"), size), size
            )
        except crud.StudyError as exc:
            raise _err(exc) from exc
    # no filename (it would name the video), private caching only: the URL holds the token
    return FileResponse(
        path,
        media_type="video/mp4",
        headers={"Cache-Control": "private, max-age=3600", "Referrer-Policy": "no-referrer"},
    )


@annotator_router.post("/a/{token}/api/assignments/{assignment_id}/events")
def annotator_events(
    token: str,
    assignment_id: str,
    body: EventsIn,
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
    ctx: AnnotatorCtx = Depends(annotator_ctx),
) -> Response:
    check_id(assignment_id, "assignment_id")
    _require_open(ctx.study)
    try:
        n = crud.record_events(
            db,
            ctx.study,
            ctx.annotator,
            assignment_id,
            [e.model_dump() for e in body.events],
            max_hold_s=settings.study_max_hold_s,
        )
    except crud.StudyError as exc:
        raise _err(exc) from exc
    return _json({"stored": n})


@annotator_router.post("/a/{token}/api/assignments/{assignment_id}/answer")
def annotator_answer(
    token: str,
    assignment_id: str,
    body: AnswerIn,
    db: Session = Depends(get_db),
    settings: Settings = Depends(get_settings_dep),
    ctx: AnnotatorCtx = Depends(annotator_ctx),
) -> Response:
    check_id(assignment_id, "assignment_id")
    _require_open(ctx.study)
    try:
        rows = crud.submit_answer(
            db,
            ctx.study,
            ctx.annotator,
            assignment_id,
            body.answers,
            body.duration_ms,
            verify_served=settings.study_verify_watch,
        )
    except crud.StudyError as exc:
        raise _err(exc) from exc
    return _json({"stored": len(rows), "assignment_id": assignment_id}, status=201)
