"""Prompt suites: VBench's per-dimension lists read from the installed vbench package, the motion union, errors,
and prompt files."""

import importlib.util
import json
from pathlib import Path

import pytest

from evaluator.benchmark.suites import (
    VBENCH_MOTION_DIMENSIONS,
    available_suites,
    load_suite,
    vbench_info_path,
)

# found, not imported: the package's __init__ loads torch and its metric modules
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vbench") is None, reason="the vbench package is not installed"
)


@pytest.fixture(scope="module")
def vbench_entries():
    """The package's own JSON, read here independently of the code under test."""
    root = Path(next(iter(importlib.util.find_spec("vbench").submodule_search_locations)))
    return json.loads((root / "VBench_full_info.json").read_text())


def _count(entries, dims) -> int:
    return len({e["prompt_en"] for e in entries if set(e["dimension"]) & set(dims)})


@pytest.mark.parametrize(
    "dim", ["dynamic_degree", "motion_smoothness", "subject_consistency", "temporal_flickering", "human_action"]
)
def test_a_dimension_loads_its_prompts_from_the_package(vbench_entries, dim):
    prompts = load_suite(f"vbench:{dim}")
    assert len(prompts) == _count(vbench_entries, [dim]) > 0
    assert len(set(prompts)) == len(prompts)
    assert prompts == [e["prompt_en"] for e in vbench_entries if dim in e["dimension"]]  # the file's order
    assert load_suite(f"vbench:{dim}", 5) == prompts[:5]


def test_known_prompts_are_where_vbench_puts_them():
    assert "a person swimming in ocean" in load_suite("vbench:dynamic_degree")
    assert "a person swimming in ocean" in load_suite("vbench:motion_smoothness")
    assert "In a still frame, a stop sign" in load_suite("vbench:temporal_flickering")
    assert "In a still frame, a stop sign" not in load_suite("vbench:dynamic_degree")
    assert "A person is marching" in load_suite("vbench:human_action")


def test_vbench_motion_is_the_union_of_the_motion_dimensions(vbench_entries):
    assert set(VBENCH_MOTION_DIMENSIONS) == {
        "dynamic_degree",
        "motion_smoothness",
        "subject_consistency",
        "temporal_flickering",
    }
    motion = load_suite("vbench-motion")
    assert len(motion) == len(set(motion)) == _count(vbench_entries, VBENCH_MOTION_DIMENSIONS)
    assert set(motion) == {p for d in VBENCH_MOTION_DIMENSIONS for p in load_suite(f"vbench:{d}")}
    assert "A person is marching" not in motion  # human_action is not one of them


def test_unknown_dimension_lists_the_valid_ones(vbench_entries):
    with pytest.raises(ValueError, match="unknown VBench dimension 'dynamics'") as err:
        load_suite("vbench:dynamics")
    for dim in {d for e in vbench_entries for d in e["dimension"]}:
        assert dim in str(err.value)


def test_suites_on_offer_include_vbench_and_prompt_files_still_work(tmp_path, vbench_entries):
    names = available_suites()
    assert {"tiny", "conformance", "motion", "vbench-motion"} <= set(names)
    assert {n for n in names if n.startswith("vbench:")} == {
        f"vbench:{d}" for e in vbench_entries for d in e["dimension"]
    }
    assert vbench_info_path().name == "VBench_full_info.json"
    f = tmp_path / "videojam.txt"
    f.write_text("# VideoJAM-bench, one prompt a line\na gymnast does a backflip\n\na dog catches a frisbee\n")
    assert load_suite(str(f)) == ["a gymnast does a backflip", "a dog catches a frisbee"]
    with pytest.raises(ValueError, match="vbench-motion"):
        load_suite(str(tmp_path / "missing.txt"))
