"""The hosted human study over HTTP, on both stacks (SQLite + embedded broker; PostgreSQL + Redis): creating a study
from benchmark videos, the annotator API (full-watch check, duplicates, unassigned items, quotas, release of
abandoned items, time limits, resume), what an annotator token can reach, results and exports.

    python -m pytest tests/backend/test_study_api.py -q
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import threading
import time

import numpy as np
import pytest
from sqlalchemy import func, select

from backend.crud.studies import aware
from backend.db.models import Annotator, Assignment, PlaybackEvent, Response, Study, StudyItem, Video
from backend.db.session import get_sessionmaker, session_scope
from backend.storage import ArtifactStore
from tests.backend.backend_helpers import auth
from tests.conftest import load_bench

QUESTIONS = ["visual_quality", "motion_quality", "text_alignment"]
ANSWERS = {"visual_quality": "left", "motion_quality": "tie", "text_alignment": "right"}


@pytest.fixture(scope="module")
def bench_id(stack, app) -> str:
    """A finished benchmark of three models x three prompts x two seeds (9 frames at 8 fps)."""
    return load_bench("study_load").make_benchmark(stack)


def make_study(client, keys, bench_id, config=None, open_=True, name="study") -> dict:
    r = client.post(
        "/v1/studies",
        json={"name": name, "benchmark_id": bench_id, "config": config or {}, "open": open_},
        headers=auth(keys["train"]),
    )
    assert r.status_code == 201, r.text
    return r.json()


def invite(client, keys, study_id, n=1, **kw) -> list[str]:
    r = client.post(f"/v1/studies/{study_id}/annotators", json={"count": n, **kw}, headers=auth(keys["train"]))
    assert r.status_code == 201, r.text
    return [a["token"] for a in r.json()["items"]]


def nxt(client, token) -> dict:
    r = client.post(f"/a/{token}/api/next")
    assert r.status_code == 200, r.text
    return r.json()


def watch(client, token, item, sides=None, fraction=1.0, fetch=True) -> None:
    """What the annotator page does: load the videos (``fetch``) and report playing them."""
    events = [
        {"event": e, "side": s, "t": item["durations"][s] * fraction if e == "ended" else 0.0}
        for s in (sides or item["sides"])
        for e in ("play", "ended")
    ]
    for side in (sides or item["sides"]) if fetch else ():
        v = client.get(f"/a/{token}/api/assignments/{item['assignment_id']}/video/{side}")
        assert v.status_code == 200, v.text
    r = client.post(f"/a/{token}/api/assignments/{item['assignment_id']}/events", json={"events": events})
    assert r.status_code == 200, r.text


def age(settings, assignment_id: str, seconds: float) -> None:
    """Move an assignment's hand-out time and its videos' serve times into the past (instead of waiting for the
    videos to play)."""
    with session_scope(settings) as db:
        a = db.get(Assignment, assignment_id)
        a.assigned_at = a.assigned_at - dt.timedelta(seconds=seconds)
        if a.served:
            a.served = {
                side: {
                    **v,
                    **{
                        k: v[k] and (dt.datetime.fromisoformat(v[k]) - dt.timedelta(seconds=seconds)).isoformat()
                        for k in ("first", "at")
                        if k in v
                    },
                }
                for side, v in a.served.items()
            }


def answer(client, token, item, answers=None):
    return client.post(
        f"/a/{token}/api/assignments/{item['assignment_id']}/answer",
        json={"answers": answers or ANSWERS, "duration_ms": 1234},
    )


def complete(client, settings, token, answers=None) -> dict | None:
    """Fetch, watch and answer one item; returns the item (None when finished)."""
    item = nxt(client, token)["item"]
    if item is None:
        return None
    watch(client, token, item)
    age(settings, item["assignment_id"], 5)
    r = answer(client, token, item, answers)
    assert r.status_code == 201, r.text
    return item


# --- creating a study ------------------------------------------------------------------------------------------------


def test_create_study_from_benchmark_registers_videos_and_gold_items(client, keys, stack, bench_id):
    s = make_study(
        client, keys, bench_id, {"k": 3, "gold": {"count": 2, "distortion": "reverse"}, "gold_every": 4}, open_=False
    )
    assert s["status"] == "draft" and s["counts"]["items"] == 3 * 3 * 2 and s["counts"]["gold_items"] == 2
    assert s["config"]["models"] == ["alpha", "beta", "gamma"] and s["config"]["gold"]["distortion"] == "reverse"
    store = ArtifactStore(stack.storage_root)
    from trainer.data.video_io import read_video

    with session_scope(stack, write=False) as db:
        items = db.scalars(select(StudyItem).where(StudyItem.study_id == s["id"])).all()
        regular = [it for it in items if not it.is_attention_check]
        assert {(it.system_a, it.system_b) for it in regular} == {
            ("alpha", "beta"),
            ("alpha", "gamma"),
            ("beta", "gamma"),
        }
        for it in regular:
            va, vb = db.get(Video, it.video_a_id), db.get(Video, it.video_b_id)
            assert (va.checkpoint, vb.checkpoint) == (it.system_a, it.system_b)
            assert va.prompt == vb.prompt == it.prompt and va.seed == vb.seed == it.meta["seed"]
            assert va.benchmark_id == bench_id and store.path_for_key(va.storage_key).is_file()
        gold = [it for it in items if it.is_attention_check]
        for it in gold:
            assert (it.system_a, it.system_b) == ("gold:original", "gold:reverse")
            assert it.meta["gold"]["expect"] == {"motion_quality": "gold:original"}
            orig, _ = read_video(store.path_for_key(db.get(Video, it.video_a_id).storage_key))
            bad, _ = read_video(store.path_for_key(db.get(Video, it.video_b_id).storage_key))
            assert orig.shape == bad.shape
            # reversed copy (decoded: allow codec noise)
            assert np.abs(bad.astype(int) - orig[::-1].astype(int)).mean() < 3
            assert np.abs(bad.astype(int) - orig.astype(int)).mean() > 3
    r = client.get(f"/v1/studies/{s['id']}/items?limit=100", headers=auth(keys["read"]))
    assert r.status_code == 200 and r.json()["total"] == 20


def test_study_from_video_ids_and_synthetic_gold(client, keys, stack, bench_id):
    first = make_study(client, keys, bench_id, {"models": ["alpha", "beta"]}, open_=False)
    with session_scope(stack, write=False) as db:
        vids = [
            v
            for it in db.scalars(select(StudyItem).where(StudyItem.study_id == first["id"]))
            for v in (it.video_a_id, it.video_b_id)
        ]
    r = client.post(
        "/v1/studies",
        json={"name": "from ids", "video_ids": vids, "config": {"gold": {"count": 1, "source": "synthetic"}}},
        headers=auth(keys["train"]),
    )
    assert r.status_code == 201, r.text
    assert r.json()["counts"] == {**r.json()["counts"], "items": 6, "gold_items": 1}


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"config": {"k": 0}}, 422, "k"),
        ({"config": {"gold": {"count": 999}}}, 422, "gold.count"),
        ({"config": {"gold": {"count": 100}}}, 422, "gold.count"),  # more than the 18 videos: after files were copied
        ({"config": {"models": ["alpha", "nobody"]}}, 422, "models"),
        ({"config": {"mode": "likert", "gold": {"count": 1}}}, 422, "gold.count"),
        ({"benchmark_id": "bench_0123456789abcdef"}, 404, "benchmark_id"),
        ({"benchmark_id": "../../etc"}, 422, "benchmark_id"),
        ({"video_ids": ["vid_0123456789abcdef"], "benchmark_id": None}, 404, "video_ids"),
    ],
)
def test_bad_study_is_rejected_naming_the_field_and_changes_nothing(client, keys, stack, bench_id, body, status, field):
    def snapshot():
        with session_scope(stack, write=False) as db:
            return (
                db.scalar(select(func.count()).select_from(Study)),
                db.scalar(select(func.count()).select_from(Video)),
                sorted(p.name for p in (stack.storage_root / "videos").glob("*")),
            )

    before = snapshot()
    payload = {"name": "bad", "benchmark_id": bench_id, **body}
    r = client.post("/v1/studies", json=payload, headers=auth(keys["train"]))
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field and r.json()["error"]["message"].startswith(field)
    assert snapshot() == before  # no row and no file left behind


def test_study_endpoints_need_the_right_scope(client, keys, bench_id):
    assert client.post("/v1/studies", json={"name": "x", "benchmark_id": bench_id}).status_code == 401
    assert (
        client.post("/v1/studies", json={"name": "x", "benchmark_id": bench_id}, headers=auth(keys["read"])).status_code
        == 403
    )
    s = make_study(client, keys, bench_id)
    for path in ("", "/results", "/results.csv", "/responses.csv", "/responses.json", "/annotators", "/items"):
        assert client.get(f"/v1/studies/{s['id']}{path}").status_code == 401
    assert (
        client.post(f"/v1/studies/{s['id']}/annotators", json={"count": 1}, headers=auth(keys["read"])).status_code
        == 403
    )


# --- annotating ---------------------------------------------------------------------------------------------------


def test_answers_need_a_full_watch_and_are_stored_once(client, keys, stack, bench_id):
    s = make_study(client, keys, bench_id, {"k": 2})
    (tok,) = invite(client, keys, s["id"])
    state = client.get(f"/a/{tok}/api/state").json()
    assert state["item"] is None and state["progress"]["done"] == 0 and state["study"]["status"] == "open"
    item = nxt(client, tok)["item"]
    assert item["sides"] == ["left", "right"] and item["durations"] == {"left": 9 / 8, "right": 9 / 8}
    aid = item["assignment_id"]

    r = answer(client, tok, item)  # nothing played
    assert r.status_code == 422 and r.json()["error"]["code"] == "playback_incomplete"
    assert "left video was never played" in r.json()["error"]["message"]
    watch(client, tok, item, sides=["left"])
    r = answer(client, tok, item)
    assert r.status_code == 422 and "right video was never played" in r.json()["error"]["message"]
    watch(client, tok, item, sides=["right"], fraction=0.5)  # stopped half way
    r = answer(client, tok, item)
    assert r.status_code == 422 and "right video was not played to the end" in r.json()["error"]["message"]
    watch(client, tok, item, sides=["right"])
    r = answer(client, tok, item)  # events complete, but answered faster than the videos can play
    assert r.status_code == 422 and "less than the 1.12 s" in r.json()["error"]["message"]
    r = answer(client, tok, item, {"visual_quality": "left"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "answers.motion_quality"
    r = answer(client, tok, item, {**ANSWERS, "visual_quality": "up"})
    assert r.status_code == 422
    with session_scope(stack, write=False) as db:
        assert db.scalar(select(func.count()).where(Response.assignment_id == aid)) == 0

    age(stack, aid, 5)
    assert answer(client, tok, item).status_code == 201
    r = answer(client, tok, item)
    assert r.status_code == 409 and r.json()["error"]["code"] == "duplicate_answer"
    r = client.post(f"/a/{tok}/api/assignments/{aid}/events", json={"events": [{"event": "play", "side": "left"}]})
    assert r.status_code == 409  # a finished item takes no more events
    with session_scope(stack, write=False) as db:
        rows = db.scalars(select(Response).where(Response.assignment_id == aid)).all()
        a = db.get(Assignment, aid)
        assert a.status == "done" and a.completed_at is not None
        assert sorted(r.question for r in rows) == sorted(QUESTIONS)
        got = {r.question: r.choice for r in rows}
        # left/tie/right as seen, stored about systems: "left" is system a unless the sides were swapped
        a_side, b_side = ("b", "a") if a.swap_sides else ("a", "b")
        assert got == {"visual_quality": a_side, "motion_quality": "tie", "text_alignment": b_side}
        assert all(r.duration_ms == 1234 and r.meta == {"answer": ANSWERS[r.question]} for r in rows)
        assert db.scalar(select(func.count()).where(PlaybackEvent.assignment_id == aid)) == 6
    nxt_item = nxt(client, tok)
    assert nxt_item["item"]["assignment_id"] != aid and nxt_item["progress"]["done"] == 1


def test_a_full_watch_needs_the_server_to_have_sent_both_videos_long_enough_ago(client, keys, stack, bench_id):
    """With ``study_verify_watch``: invented playback events are not enough; the server must have sent each video
    whole to this assignment at least its duration ago."""
    from fastapi.testclient import TestClient

    from backend.api.main import create_app

    s = make_study(client, keys, bench_id, {"k": 2})
    (tok,) = invite(client, keys, s["id"])
    with TestClient(create_app(stack.model_copy(update={"study_verify_watch": True}), migrate=False)) as c:
        item = nxt(c, tok)["item"]
        aid = item["assignment_id"]
        watch(c, tok, item, fetch=False)
        age(stack, aid, 5)  # events complete and old enough: all a client alone can fake
        r = answer(c, tok, item)
        assert r.status_code == 422 and r.json()["error"]["code"] == "playback_incomplete", r.text
        assert "left video was never loaded" in r.json()["error"]["message"]
        url = f"/a/{tok}/api/assignments/{aid}/video/"
        left = c.get(url + "left")
        assert left.status_code == 200 and left.content[4:8] == b"ftyp"
        part = c.get(url + "right", headers={"Range": "bytes=0-99"})  # a sliver is not the video
        assert part.status_code == 206 and len(part.content) == 100
        size = int(part.headers["content-range"].rsplit("/", 1)[1])
        with session_scope(stack, write=False) as db:
            served = db.get(Assignment, aid).served
        assert served["left"]["at"] and served["right"]["bytes"] == 100 and served["right"]["at"] is None
        assert served["right"]["first"]  # the first bytes' time: the clip cannot end sooner than its length after
        r = answer(c, tok, item)
        assert r.status_code == 422 and "right video was never loaded" in r.json()["error"]["message"], r.text
        assert c.get(url + "right", headers={"Range": "bytes=100-"}).status_code == 206  # the rest of it
        r = answer(c, tok, item)  # sent whole just now: the 1.12 s clip cannot have been watched yet
        assert r.status_code == 422 and "loaded 0." in r.json()["error"]["message"], r.text
        assert "lasts 1.1 s" in r.json()["error"]["message"]
        with session_scope(stack, write=False) as db:
            served = db.get(Assignment, aid).served
            assert served["right"]["bytes"] == size and served["right"]["at"]
            assert db.scalar(select(func.count()).where(Response.assignment_id == aid)) == 0
        time.sleep(9 / 8)
        assert answer(c, tok, item).status_code == 201
        r = c.get(url + "left")  # a finished item's videos are still served, and change nothing
        assert r.status_code == 200
        with session_scope(stack, write=False) as db:
            assert db.get(Assignment, aid).served == served


def test_unassigned_and_foreign_items_are_rejected(client, keys, stack, bench_id):
    s = make_study(client, keys, bench_id)
    other = make_study(client, keys, bench_id, name="other")
    t1, t2 = invite(client, keys, s["id"], 2)
    (t3,) = invite(client, keys, other["id"])
    i1 = nxt(client, t1)["item"]
    watch(client, t1, i1)
    age(stack, i1["assignment_id"], 5)
    for tok in (t2, t3):  # another annotator of the same study, and one of another study
        r = answer(client, tok, i1)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_assigned"
        r = client.post(
            f"/a/{tok}/api/assignments/{i1['assignment_id']}/events",
            json={"events": [{"event": "play", "side": "left", "t": 0}]},
        )
        assert r.status_code == 404
        r = client.get(f"/a/{tok}/api/assignments/{i1['assignment_id']}/video/left")
        assert r.status_code == 404
    fake = {**i1, "assignment_id": "asg_0123456789abcdef"}
    r = answer(client, t1, fake)
    assert r.status_code == 404 and "not assigned to you" in r.json()["error"]["message"]
    assert answer(client, t1, i1).status_code == 201  # the owner still can
    with session_scope(stack, write=False) as db:
        assert db.scalar(select(func.count()).where(Response.study_id == s["id"])) == 3


def test_annotator_token_reaches_nothing_outside_its_own_items(client, keys, stack, bench_id):
    s = make_study(client, keys, bench_id, {"gold": {"count": 1}}, name="Secret: DMD vs MoGAN")
    (tok,) = invite(client, keys, s["id"])
    item = complete(client, stack, tok)
    for path in (
        "",
        "/results",
        "/results.csv",
        "/responses.csv",
        "/responses.json",
        "/annotators",
        "/items",
        "/figure.png",
    ):
        for headers in ({"Authorization": f"Bearer {tok}"}, {"X-API-Key": tok}):
            r = client.get(f"/v1/studies/{s['id']}{path}", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
    assert client.get("/v1/studies", headers={"Authorization": f"Bearer {tok}"}).status_code == 401
    with session_scope(stack, write=False) as db:
        vid = db.scalars(select(Video.id).where(Video.benchmark_id == bench_id)).first()
    assert client.get(f"/v1/videos/{vid}", headers={"Authorization": f"Bearer {tok}"}).status_code == 401
    # nothing the annotator API returns names a model, a video or another annotator
    texts = [
        client.get(f"/a/{tok}/api/state").text,
        client.post(f"/a/{tok}/api/next").text,
        client.get(f"/a/{tok}").text,
    ]
    secret = ["alpha", "beta", "gamma", "gold:", bench_id, "vid_", "system", s["name"]]
    for text in texts:
        for word in secret:
            assert word not in text, word
    video = client.get(item["videos"]["left"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert "content-disposition" not in video.headers  # no file name
    assert item["videos"]["left"].endswith("/video/left")
    # the page itself and its API are private: no caching, no referrer
    page = client.get(f"/a/{tok}")
    assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    bad = client.get("/a/ann_" + "x" * 43 + "/api/state")
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_link"
    assert client.get("/a/not-a-token/api/state").status_code == 401
    assert client.get("/study-assets/../main.py").status_code == 404
    assert client.get("/study-assets/annotate.js").status_code == 200


def test_revoked_links_and_draft_or_closed_studies(client, keys, stack, bench_id):
    s = make_study(client, keys, bench_id, open_=False)
    made = client.post(
        f"/v1/studies/{s['id']}/annotators", json={"names": ["one", "two"]}, headers=auth(keys["train"])
    ).json()["items"]
    (t1, t2), ann_id = [a["token"] for a in made], made[1]["id"]
    assert made[0]["link"].endswith(f"/a/{t1}") and made[0]["name"] == "one"
    r = client.post(f"/a/{t1}/api/next")
    assert r.status_code == 409 and r.json()["error"]["code"] == "study_not_open"
    assert client.get(f"/a/{t1}/api/state").json()["study"]["status"] == "draft"
    assert client.post(f"/v1/studies/{s['id']}/open", headers=auth(keys["train"])).json()["status"] == "open"
    pending = nxt(client, t1)["item"]
    assert (
        client.post(f"/v1/studies/{s['id']}/annotators/{ann_id}/revoke", headers=auth(keys["train"])).status_code == 200
    )
    r = client.post(f"/a/{t2}/api/next")
    assert r.status_code == 403 and r.json()["error"]["code"] == "link_revoked"
    closed = client.post(f"/v1/studies/{s['id']}/close", headers=auth(keys["train"])).json()
    assert closed["status"] == "closed" and closed["counts"]["assignments_pending"] == 0
    r = answer(client, t1, pending)
    assert r.status_code == 409 and r.json()["error"]["code"] == "study_closed"
    assert client.post(f"/v1/studies/{s['id']}/open", headers=auth(keys["train"])).status_code == 409


def test_leaving_and_coming_back_resumes_the_same_item(client, keys, stack, bench_id):
    s = make_study(client, keys, bench_id)
    (tok,) = invite(client, keys, s["id"])
    item = nxt(client, tok)["item"]
    watch(client, tok, item, sides=["left"])
    state = client.get(f"/a/{tok}/api/state").json()  # the page is reloaded
    assert state["item"]["assignment_id"] == item["assignment_id"]
    assert state["item"]["watched"] == {"left": True, "right": False}
    assert nxt(client, tok)["item"]["assignment_id"] == item["assignment_id"]  # no second item meanwhile
    with session_scope(stack, write=False) as db:
        assert db.scalar(select(func.count()).where(Assignment.study_id == s["id"])) == 1


# --- assignment ---------------------------------------------------------------------------------------------------


def test_items_get_k_annotations_evenly_and_never_twice_per_annotator(client, keys, stack, bench_id):
    s = make_study(client, keys, bench_id, {"k": 2, "models": ["alpha", "beta"]})  # one item per benchmark video pair
    tokens = invite(client, keys, s["id"], 4)
    rounds = 0
    active = list(tokens)
    while active:  # annotators take turns, one item each, until none gets an item
        for tok in list(active):
            if complete(client, stack, tok) is None:
                active.remove(tok)
        rounds += 1
        assert rounds < 20
        if rounds == 1:
            with session_scope(stack, write=False) as db:  # evenness: 4 items touched once, none twice
                counts = dict(
                    db.execute(
                        select(Assignment.item_id, func.count())
                        .where(Assignment.study_id == s["id"])
                        .group_by(Assignment.item_id)
                    ).all()
                )
                assert sorted(counts.values()) == [1, 1, 1, 1]
    with session_scope(stack, write=False) as db:
        counts = db.execute(
            select(Assignment.item_id, func.count()).where(Assignment.study_id == s["id"]).group_by(Assignment.item_id)
        ).all()
        assert len(counts) == 6 and all(n == 2 for _i, n in counts)
        pairs = db.execute(
            select(Assignment.annotator_id, Assignment.item_id).where(Assignment.study_id == s["id"])
        ).all()
        assert len(pairs) == len(set(pairs)) == 12
        slots = db.execute(select(Assignment.item_id, Assignment.slot).where(Assignment.study_id == s["id"])).all()
        assert len(set(slots)) == 12 and {sl for _i, sl in slots} == {0, 1}
    state = nxt(client, tokens[0])
    assert state["item"] is None and state["finished"]


def test_quota_limits_items_per_annotator(client, keys, stack, bench_id):
    s = make_study(client, keys, bench_id, {"items_per_annotator": 2})
    (tok,) = invite(client, keys, s["id"])
    (tok3,) = invite(client, keys, s["id"], quota=3)
    assert complete(client, stack, tok) and complete(client, stack, tok)
    state = nxt(client, tok)
    assert state["item"] is None and state["progress"] == {"done": 2, "target": 2, "quota": 2}
    assert all(complete(client, stack, tok3) for _ in range(3)) and complete(client, stack, tok3) is None


def test_gold_items_come_every_nth_assignment(client, keys, stack, bench_id):
    s = make_study(client, keys, bench_id, {"gold": {"count": 2}, "gold_every": 3, "models": ["alpha", "beta"]})
    (tok,) = invite(client, keys, s["id"])
    for _ in range(7):
        complete(client, stack, tok)
    with session_scope(stack, write=False) as db:
        seq = db.execute(
            select(Assignment.order_index, StudyItem.is_attention_check)
            .join(StudyItem, StudyItem.id == Assignment.item_id)
            .where(Assignment.study_id == s["id"])
            .order_by(Assignment.order_index)
        ).all()
    assert [g for _o, g in seq] == [False, False, True, False, False, True, False]


def test_abandoned_items_are_released_and_their_slot_reused(client, keys, stack, bench_id):
    s = make_study(client, keys, bench_id, {"k": 1, "models": ["alpha", "beta"], "assignment_timeout_s": 60})
    tokens = invite(client, keys, s["id"], 7)
    leaver = tokens[0]
    abandoned = nxt(client, leaver)["item"]
    for tok in tokens[1:6]:  # the other five items are taken and answered
        complete(client, stack, tok)
    assert nxt(client, tokens[6])["item"] is None  # everything taken
    with session_scope(stack) as db:  # an hour passes without activity
        a = db.get(Assignment, abandoned["assignment_id"])
        a.expires_at = a.expires_at - dt.timedelta(hours=1)
    late = nxt(client, tokens[6])["item"]
    with session_scope(stack, write=False) as db:
        old, new = db.get(Assignment, abandoned["assignment_id"]), db.get(Assignment, late["assignment_id"])
        assert old.status == "expired" and old.slot is None
        assert new.item_id == old.item_id and new.slot == 0
    r = client.post(
        f"/a/{leaver}/api/assignments/{abandoned['assignment_id']}/events",
        json={"events": [{"event": "play", "side": "left", "t": 0}]},
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "assignment_expired"
    r = answer(client, leaver, abandoned)
    assert r.status_code == 409 and r.json()["error"]["code"] == "assignment_expired"
    assert nxt(client, leaver)["item"] is None  # it does not get the same item again


def test_activity_cannot_hold_an_item_past_the_hard_cap(client, keys, stack, bench_id):
    s = make_study(client, keys, bench_id, {"k": 1, "models": ["alpha", "beta"], "assignment_timeout_s": 600})
    tok, other = invite(client, keys, s["id"], 2)
    item = nxt(client, tok)["item"]
    cap = dt.timedelta(seconds=stack.study_max_hold_s)
    play = {"events": [{"event": "play", "side": "left", "t": 0}]}
    url = f"/a/{tok}/api/assignments/{item['assignment_id']}/events"

    def lease() -> tuple[dt.datetime, dt.datetime]:
        with session_scope(stack, write=False) as db:
            a = db.get(Assignment, item["assignment_id"])
            return aware(a.assigned_at), aware(a.expires_at)

    age(stack, item["assignment_id"], stack.study_max_hold_s - 100)  # active for almost the whole cap
    assert client.post(url, json=play).status_code == 200
    assigned, expires = lease()
    assert expires == assigned + cap  # not the usual 600 s from now
    assert nxt(client, tok)["item"]["assignment_id"] == item["assignment_id"]  # /next extends no further
    assert lease()[1] == assigned + cap
    age(stack, item["assignment_id"], 200)  # past the cap: activity no longer keeps it
    assert client.post(url, json=play).status_code == 200
    assigned, expires = lease()
    assert expires == assigned + cap < dt.datetime.now(dt.UTC)
    assert client.get(f"/a/{tok}/api/state").json()["item"] is None
    nxt(client, other)  # the next hand-out releases it: its slot is free again
    with session_scope(stack, write=False) as db:
        old = db.get(Assignment, item["assignment_id"])
        assert old.status == "expired" and old.slot is None


def test_time_limit_refuses_late_answers(client, keys, stack, bench_id):
    s = make_study(client, keys, bench_id, {"time_limit_s": 30})
    (tok,) = invite(client, keys, s["id"])
    state = nxt(client, tok)
    assert 29 <= state["item"]["time_left_s"] <= 30 and state["study"]["time_limit_s"] == 30
    item = state["item"]
    watch(client, tok, item)
    age(stack, item["assignment_id"], 120)
    r = answer(client, tok, item)
    assert r.status_code == 409 and r.json()["error"]["code"] == "time_limit_exceeded"
    with session_scope(stack, write=False) as db:
        assert db.get(Assignment, item["assignment_id"]).status == "expired"
    assert nxt(client, tok)["item"]["assignment_id"] != item["assignment_id"]


def test_concurrent_handouts_never_exceed_k(stack, app, client, keys, bench_id):
    """Threads asking for items at once (same code path as the route): at most k per item, one item per annotator
    at a time, each (annotator, item) once."""
    from backend.crud import studies as crud

    s = make_study(client, keys, bench_id, {"k": 2, "models": ["alpha", "beta"]})  # k slots per item
    invite(client, keys, s["id"], 16)
    with session_scope(stack, write=False) as db:
        ann_ids = db.scalars(select(Annotator.id).where(Annotator.study_id == s["id"])).all()
    maker = get_sessionmaker(stack)
    got: dict[str, list] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(ann_ids) * 2)

    def worker(ann_id: str) -> None:
        db = maker()
        try:
            barrier.wait(30)
            a, _created = crud.next_assignment(db, s["id"], ann_id)
            got.setdefault(ann_id, []).append(a.item_id if a else None)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=worker, args=(a,)) for a in ann_ids for _ in range(2)]  # double clicks
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for ann, items in got.items():
        assert len(set(items)) == 1, (ann, items)  # both requests of one annotator got the same (or no) item
    with session_scope(stack, write=False) as db:
        rows = db.execute(
            select(Assignment.item_id, Assignment.annotator_id, Assignment.slot).where(Assignment.study_id == s["id"])
        ).all()
    per_item: dict[str, int] = {}
    for item_id, _ann, _slot in rows:
        per_item[item_id] = per_item.get(item_id, 0) + 1
    assert len(rows) == 12 and all(n == 2 for n in per_item.values()) and len(per_item) == 6
    assert len({(i, a) for i, a, _ in rows}) == 12 and len({(i, sl) for i, _, sl in rows}) == 12


# --- results ------------------------------------------------------------------------------------------------------


def test_results_exports_and_gold_flagging(client, keys, stack, bench_id):
    s = make_study(
        client, keys, bench_id, {"k": 3, "gold": {"count": 1}, "gold_every": 2, "items_per_annotator": 4, "seed": 5}
    )
    tokens = invite(client, keys, s["id"], 3)

    def prefer(tok, pick_gold_correctly: bool):
        """Answer like someone who always prefers gamma > beta > alpha (and the gold original, or not)."""
        while True:
            state = nxt(client, tok)
            item = state["item"]
            if item is None:
                return
            with session_scope(stack, write=False) as db:
                a = db.get(Assignment, item["assignment_id"])
                it = db.get(StudyItem, a.item_id)
                left, right = (it.system_b, it.system_a) if a.swap_sides else (it.system_a, it.system_b)
            if it.is_attention_check:
                good = "left" if left == "gold:original" else "right"
                side = good if pick_gold_correctly else ("right" if good == "left" else "left")
            else:
                side = "left" if left > right else "right"  # "gamma" > "beta" > "alpha"
            watch(client, tok, item)
            age(stack, item["assignment_id"], 5)
            assert answer(client, tok, item, {q: side for q in QUESTIONS}).status_code == 201

    prefer(tokens[0], True)
    prefer(tokens[1], True)
    prefer(tokens[2], False)
    res = client.get(f"/v1/studies/{s['id']}/results?n_boot=200", headers=auth(keys["read"]))
    assert res.status_code == 200
    res = res.json()
    ann = {
        a["name"] or a["id"]: a
        for a in client.get(f"/v1/studies/{s['id']}/annotators", headers=auth(keys["read"])).json()["items"]
    }
    assert all(a["done"] == 4 for a in ann.values())
    flagged = res["flagged"]
    assert len(flagged) == 1 and res["excluded_annotators"] == flagged
    # every annotator saw the one gold item, checked on motion quality only
    assert sum(g["n_gold"] for g in res["gold"].values()) == 3
    assert all(r["counts"]["tie"] == 0 for r in res["pairwise"])
    for r in res["pairwise"]:  # later names always preferred: model_b (sorted second) wins everything
        assert r["rates"]["lose"] == 1.0 and r["counts"]["win"] == 0
        assert r["sign_test_p"] == pytest.approx(2 * 0.5 ** r["n"])
    assert {r["question"] for r in res["pairwise"]} == set(QUESTIONS)
    n_used = sum(r["n"] for r in res["pairwise"])
    assert n_used == 2 * 3 * 3  # two kept annotators x three regular items x three questions
    if {(r["model_a"], r["model_b"]) for r in res["pairwise"]} >= {("alpha", "beta"), ("beta", "gamma")}:
        assert res["ranking"]["motion_quality"][0]["model"] == "gamma"  # transitively the best
    kept = client.get(
        f"/v1/studies/{s['id']}/results?n_boot=0&exclude_flagged=false", headers=auth(keys["read"])
    ).json()
    assert kept["excluded_annotators"] == [] and sum(r["n"] for r in kept["pairwise"]) == 3 * 3 * 3

    raw = client.get(f"/v1/studies/{s['id']}/responses.csv", headers=auth(keys["read"]))
    rows = list(csv.DictReader(io.StringIO(raw.text)))
    assert len(rows) == 3 * 4 * 3 and raw.headers["content-type"].startswith("text/csv")
    assert {r["annotator_id"] for r in rows} == {a["id"] for a in ann.values()}
    js = client.get(f"/v1/studies/{s['id']}/responses.json", headers=auth(keys["read"])).json()
    assert len(js["responses"]) == len(rows)
    assert {(r["response_id"], r["answer"]) for r in js["responses"]} == {(r["response_id"], r["answer"]) for r in rows}
    table = list(
        csv.DictReader(
            io.StringIO(client.get(f"/v1/studies/{s['id']}/results.csv?n_boot=100", headers=auth(keys["read"])).text)
        )
    )
    assert {r["kind"] for r in table} >= {"pairwise"} and len([r for r in table if r["kind"] == "pairwise"]) == len(
        res["pairwise"]
    )
    png = client.get(f"/v1/studies/{s['id']}/figure.png", headers=auth(keys["read"]))
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    json.dumps(res)


def test_likert_study(client, keys, stack, bench_id):
    s = make_study(
        client, keys, bench_id, {"mode": "likert", "k": 1, "models": ["alpha", "beta"], "questions": ["motion_quality"]}
    )
    (tok,) = invite(client, keys, s["id"])
    state = nxt(client, tok)
    assert state["item"]["sides"] == ["left"] and state["study"]["mode"] == "likert"
    assert state["study"]["questions"][0]["text"].startswith("How natural")
    item = state["item"]
    assert answer(client, tok, item, {"motion_quality": 6}).status_code == 422
    assert answer(client, tok, item, {"motion_quality": "left"}).status_code == 422
    ratings = {"alpha": 2, "beta": 4}
    n = 0
    while item is not None:
        with session_scope(stack, write=False) as db:
            model = db.get(StudyItem, db.get(Assignment, item["assignment_id"]).item_id).system_a
        watch(client, tok, item)
        age(stack, item["assignment_id"], 5)
        assert answer(client, tok, item, {"motion_quality": ratings[model]}).status_code == 201
        n += 1
        item = nxt(client, tok)["item"]
    assert n == 12
    res = client.get(f"/v1/studies/{s['id']}/results", headers=auth(keys["read"])).json()
    by = {r["model"]: r for r in res["likert"]}
    assert by["alpha"]["mean"] == 2.0 and by["beta"]["mean"] == 4.0 and by["alpha"]["n"] == 6
    assert res["pairwise"] == [] and res["ranking"] == {}
    assert client.get(f"/v1/studies/{s['id']}/figure.png", headers=auth(keys["read"])).status_code == 409
