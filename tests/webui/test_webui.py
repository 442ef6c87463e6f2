"""The web UI's pieces without a browser: the in-process API client against the real app (limits, scopes and error
sentences), the mount, the run form's overrides, the dashboard's figures and tables, and the video work.

    python -m pytest tests/webui/test_webui.py -x -q
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from webui import media, plots
from webui.client import ApiClient, ApiError
from webui.common import error_text, whoami
from webui.runs import build_overrides, diff, method_defaults, parse_json_object

# --- the API client and the mount -------------------------------------------------------------------------------


@pytest.fixture
def app(tmp_path, tiny_zoo, monkeypatch):
    from backend.api.main import create_app
    from backend.core.config import Settings

    monkeypatch.setenv("MOTIONLAB_ZOO_DIR", str(tiny_zoo))
    return create_app(Settings(storage_root=tmp_path / "storage"), mount_ui=True)


def make_key(app, scopes: list[str]) -> str:
    from backend.security import create_api_key

    db = app.state.sessionmaker()
    try:
        _row, key = create_api_key(db, f"test-{'-'.join(scopes)}", scopes, pepper=app.state.settings.api_key_pepper)
        db.commit()
        return key
    finally:
        db.close()


def test_client_gets_the_api_answers_limits_and_scopes(app):
    admin, viewer = make_key(app, ["admin"]), make_key(app, ["read"])

    async def scenario():
        names = [i["name"] for i in await ApiClient(app, admin).checkpoints()]
        assert {"tiny-teacher", "tiny-dmd", "tiny-mogan"} <= set(names)
        with pytest.raises(ApiError) as missing:
            await ApiClient(app, "").checkpoints()
        with pytest.raises(ApiError) as unknown:
            await ApiClient(app, "ml_not-a-real-key").checkpoints()
        with pytest.raises(ApiError) as too_many:
            await ApiClient(app, admin).post(
                "/v1/generations", {"checkpoint": "tiny-dmd", "prompt": "a ball", "num_frames": 100000, "mode": "job"}
            )
        with pytest.raises(ApiError) as scope:
            await ApiClient(app, viewer).post(
                "/v1/generations", {"checkpoint": "tiny-dmd", "prompt": "a ball", "mode": "job"}
            )
        with pytest.raises(ApiError) as no_such:
            await ApiClient(app, admin).post(
                "/v1/generations", {"checkpoint": "nope", "prompt": "a ball", "mode": "job"}
            )
        return missing.value, unknown.value, too_many.value, scope.value, no_such.value

    missing, unknown, too_many, scope, no_such = asyncio.run(scenario())
    assert (missing.status, missing.code) == (401, "missing_api_key")
    assert "paste one into the 'API key' field" in error_text(missing)
    assert (unknown.status, unknown.code) == (401, "invalid_api_key") and "unknown or revoked" in error_text(unknown)
    assert (too_many.status, too_many.field, too_many.limit) == (422, "num_frames", 121)
    assert error_text(too_many) == "num_frames: must be <= 121 (got 100000)"
    assert scope.status == 403 and error_text(scope).startswith(
        "Your API key may not do this: this endpoint needs scope 'generate'"
    )
    assert no_such.status == 422 and "no checkpoint or zoo entry named 'nope'" in error_text(no_such)


def test_whoami_uses_the_backend_authentication(app):
    key = make_key(app, ["read", "generate"])
    ok, text = whoami(app, key)
    assert ok and "scopes: read, generate" in text and key[:10] in text
    assert whoami(app, "ml_nope") == (False, "This API key is unknown or revoked.")
    assert whoami(app, "  ")[0] is False


def test_the_ui_is_mounted_into_the_api_app(app):
    import httpx

    async def get(path):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.get(path, follow_redirects=True)

    page = asyncio.run(get("/ui/"))
    assert page.status_code == 200 and "<html" in page.text.lower(), (page.status_code, page.text[:500])
    assert asyncio.run(get("/healthz")).status_code in (200, 503)  # the API still answers next to it
    assert app.state.webui.title == "MotionLab"


def test_unexpected_errors_are_not_shown_as_tracebacks():
    assert (
        error_text(ValueError("frames: must be a whole number (got 'x')")) == "frames: must be a whole number (got 'x')"
    )
    msg = error_text(RuntimeError("boom at /secret/path.py line 3"))
    assert msg == "Unexpected error (RuntimeError); the server log has the details."


# --- the run form -------------------------------------------------------------------------------------------------


def test_run_form_sends_only_what_differs_from_the_method_defaults():
    d = method_defaults("dmd", "tiny")
    assert d["steps"] == 300 and d["method_cfg"]["critic_steps"] == 4  # the trainer's own defaults
    values = [
        d["steps"],
        d["batch_size"],
        d["optim"]["lr"],
        d["optim"]["warmup_steps"],
        d["checkpoint_every"],
        d["log_every"],
        d["seed"],
        d["data"]["num_videos"],
    ]
    import json

    mc = json.dumps(d["method_cfg"])
    assert build_overrides("dmd", "tiny", None, None, values, mc, "{}") == {}
    values[0], values[2] = 50, 1e-4
    mc2 = json.dumps({**d["method_cfg"], "critic_steps": 2})
    got = build_overrides("dmd", "tiny", None, "tiny-teacher", values, mc2, '{"data": {"num_frames": 9}}')
    assert got == {
        "steps": 50,
        "optim": {"lr": 1e-4},
        "teacher": "tiny-teacher",
        "method_cfg": {"critic_steps": 2},
        "data": {"num_frames": 9},
    }
    with pytest.raises(ValueError, match=r"method hyper-parameters: not valid JSON \(line 1"):
        build_overrides("dmd", "tiny", None, None, values, "{oops", "{}")
    with pytest.raises(ValueError, match="other overrides: must be a JSON object"):
        parse_json_object("[1, 2]", "other overrides")
    with pytest.raises(ValueError, match="Steps: must be a whole number"):
        build_overrides("dmd", "tiny", None, None, [2.5] + values[1:], mc, "{}")


def test_diff_recurses_into_mappings_and_compares_lists_whole():
    assert diff({"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]}, {"a": 1, "b": {"c": 2, "d": 4}, "e": [1, 2]}) == {
        "b": {"d": 3}
    }
    assert diff({"e": [1, 3]}, {"e": [1, 2]}) == {"e": [1, 3]}
    assert diff({"new": None}, {}) == {"new": None}


# --- dashboard figures --------------------------------------------------------------------------------------------


def test_training_curves_split_losses_learning_rates_and_throughput():
    recs = [
        {
            "step": 10,
            "time": 1.0,
            "sec_per_step": 0.5,
            "lr": {"generator": 1e-4, "fake_score": 2e-4},
            "generator/loss": 1.5,
            "fake_score/loss": 0.7,
            "generator/grad_norm": 3.0,
        },
        {
            "step": 20,
            "time": 2.0,
            "sec_per_step": 0.25,
            "lr": {"generator": 1e-4, "fake_score": 2e-4},
            "generator/loss": 1.2,
            "fake_score/loss": 0.6,
            "generator/grad_norm": 2.0,
        },
    ]
    df = plots.flatten_metrics(recs)
    thr = df[df.series == "steps/s"]
    assert thr["value"].tolist() == [2.0, 4.0]  # 1 / sec_per_step
    assert sorted(df.series.unique()) == [
        "fake_score/loss",
        "generator/grad_norm",
        "generator/loss",
        "lr/fake_score",
        "lr/generator",
        "steps/s",
    ]
    losses, lrs, throughput = plots.curve_figures(df)
    assert sorted(t.name for t in losses.data) == ["fake_score/loss", "generator/loss"]
    assert list(losses.data[1].y) == [1.5, 1.2] and list(losses.data[1].x) == [10, 20]
    assert sorted(t.name for t in lrs.data) == ["lr/fake_score", "lr/generator"]
    assert [t.name for t in throughput.data] == ["steps/s"]
    # the API's progress rows (values dict, "lr.<net>" keys from the worker's flattening) read the same way
    api = plots.flatten_metrics([{"step": 3, "values": {"sft/loss": 0.9, "lr.policy": 1e-5}}])
    assert api.to_dict("records") == [
        {"step": 3, "series": "sft/loss", "value": 0.9},
        {"step": 3, "series": "lr/policy", "value": 1e-5},
    ]
    assert plots.curve_figures(plots.flatten_metrics([]))[0].layout.annotations[0].text == "no losses logged yet"


def _records():
    out = []
    for model, base in (("teacher", 0.90), ("mogan", 0.96)):
        for seed, d in ((0, -0.01), (1, 0.01)):
            out.append(
                {
                    "model": model,
                    "prompt": "p",
                    "seed": seed,
                    "metric": "motion_smoothness",
                    "value": base + d,
                    "backend": "lite",
                }
            )
            out.append(
                {
                    "model": model,
                    "prompt": "p",
                    "seed": seed,
                    "metric": "dynamic_degree",
                    "value": float(seed),
                    "backend": "lite",
                }
            )
    return out


def test_benchmark_table_and_bars_come_from_the_evaluators_table1():
    from evaluator.reports import table1

    scores = [
        {
            "checkpoint": r["model"],
            "prompt": r["prompt"],
            "seed": r["seed"],
            "metric": r["metric"],
            "value": r["value"],
            "backend": r["backend"],
            "extra": None,
        }
        for r in _records()
    ]
    tab = plots.benchmark_table(None, scores)
    assert tab == table1(_records())
    frame = plots.table1_frame(tab)
    assert frame["Model"].tolist() == ["teacher", "mogan"]
    assert frame["Smoothness (%) [lite]"].tolist()[1].startswith("96.00 ± 1.41 [")  # std of 95 and 97
    fig = plots.bars_figure(tab)
    mogan = next(t for t in fig.data if t.name == "mogan")
    assert list(mogan.x) == ["Smoothness", "Dynamic degree", "Motion score"]
    assert mogan.y[0] == pytest.approx(0.96) and mogan.y[1] == pytest.approx(0.5)
    scatter = plots.scatter_figure(tab)
    assert [t.name for t in scatter.data] == ["teacher", "mogan"] and scatter.data[1].y[0] == pytest.approx(96.0)
    # a stored report's table is used as it is
    assert plots.benchmark_table({"table": tab}, []) is not None and plots.benchmark_table(None, []) is None


def test_win_tie_lose_bars_use_the_study_statistics():
    from evaluator.study.statistics import pairwise_report

    answers = ["left"] * 6 + ["tie"] * 2 + ["right"] * 2  # mogan (left) preferred 6 of 10 times
    responses = [
        {
            "item_id": i,
            "annotator_id": f"a{i % 3}",
            "model_left": "mogan",
            "model_right": "dmd",
            "question": "motion_quality",
            "answer": a,
        }
        for i, a in enumerate(answers)
    ]
    rows = pairwise_report(responses)
    fig = plots.win_tie_lose_figure(rows)
    by = {t.name: t.x[0] for t in fig.data}
    # model_a is the name that sorts first ("dmd"): its win is mogan's loss
    assert by == pytest.approx({"win": 0.2, "tie": 0.2, "lose": 0.6})
    assert fig.data[0].y[0] == "dmd vs mogan · motion_quality (n=10)"


# --- video work ---------------------------------------------------------------------------------------------------


def moving_square(t: int = 6, size: int = 48, step: int = 2) -> np.ndarray:
    v = np.full((t, size, size, 3), 30, np.uint8)
    rng = np.random.default_rng(0)
    tex = rng.integers(100, 255, (12, 12, 3), dtype=np.uint8)  # texture, so the flow is well defined
    for i in range(t):
        x = 8 + step * i
        v[i, 18:30, x : x + 12] = tex
    return v


def test_flow_of_a_square_moving_right_is_red_in_the_square():
    clip = media.clip_flow(moving_square())
    assert clip.reason is None and clip.frames.shape == (5, 48, 48, 3)
    flows = media.clip_flows(moving_square())
    inside = flows[:, 20:28, 14:20]  # the square's interior over the clip
    assert np.median(inside[..., 0]) == pytest.approx(2.0, abs=0.5)
    assert abs(np.median(inside[..., 1])) < 0.5
    rgb = clip.frames[:, 20:28, 14:20].reshape(-1, 3).astype(int)
    # rightward motion is red on the wheel: red channel full, green and blue well below it
    assert np.median(rgb[:, 0]) > 240 and np.median(rgb[:, 1]) < 200 and np.median(rgb[:, 2]) < 200
    assert 1.5 < clip.max_magnitude < 6


def test_flow_reason_for_clips_it_cannot_handle():
    assert "at least 2 frames" in media.clip_flow(moving_square(t=1)).reason
    assert "at least 16 px" in media.clip_flow(np.zeros((3, 8, 8, 3), np.uint8)).reason


def test_motion_metrics_of_a_moving_square():
    m = media.motion_metrics(moving_square(t=9), fps=8)
    assert set(m) == set(media.MOTION_METRICS)
    assert m["dynamic_degree"]["value"] in (0.0, 1.0) and 0.0 < m["motion_smoothness"]["value"] <= 1.0
    assert m["motion_score"]["value"] == pytest.approx(
        0.5 * (m["motion_smoothness"]["value"] + m["dynamic_degree"]["value"])
    )


def test_side_by_side_grid_is_frame_locked_and_labelled():
    a = np.zeros((5, 32, 32, 3), np.uint8)
    b = np.full((5, 32, 32, 3), 200, np.uint8)
    flow = np.full((4, 32, 32, 3), 90, np.uint8)
    grid = media.side_by_side([("teacher", a, flow), ("mogan", b, flow)])
    # upscaled x4 to 128 px; label 18 + clip 128 + gap 4 + flow 128; two columns and a 4 px gap
    assert grid.shape == (5, 18 + 128 + 4 + 128, 128 + 4 + 128, 3)
    assert (grid[:, 18:146, :128] == 0).all() and (grid[:, 18:146, 132:] == 200).all()
    assert (grid[4, 150:, :128] == 90).all()  # the last flow frame is held for the last clip frame
    assert (grid[:, :18, :128] < 255).any()  # the label is drawn
    with pytest.raises(ValueError, match="at least one clip"):
        media.side_by_side([])


def test_clip_round_trip_through_mp4(tmp_path):
    v = moving_square(t=4, size=32)
    path = media.write_clip(tmp_path / "x.mp4", v, 8)
    frames, fps = media.read_clip(path)
    assert frames.shape == v.shape and fps == pytest.approx(8.0)
    assert np.abs(frames.astype(int) - v.astype(int)).mean() < 12  # lossy web quality, same picture


def test_invitation_links_use_the_browsers_origin():
    from webui.study_admin import browser_origin

    req = SimpleNamespace(headers={"Origin": "https://lab.example.org", "Host": "10.0.0.5:8000"})
    assert browser_origin(req) == "https://lab.example.org"
    req = SimpleNamespace(headers={"host": "127.0.0.1:8000", "x-forwarded-proto": "https"})
    assert browser_origin(req) == "https://127.0.0.1:8000"
    assert browser_origin(None) == ""
