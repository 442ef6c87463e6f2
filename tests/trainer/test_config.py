import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainer.config import METHOD_CONFIGS, ConfigError, load_train_config, load_yaml, save_yaml, to_dict


def test_defaults_and_overrides():
    cfg = load_train_config("sft", {"optim": {"lr": 1e-4}, "method_cfg": {"caption_dropout": 0.2}})
    assert cfg.optim.lr == 1e-4 and cfg.method_cfg.caption_dropout == 0.2 and cfg.method == "sft"


@pytest.mark.parametrize(
    "overrides, field, words",
    [
        ({"stepz": 3}, "stepz", "unknown key"),
        ({"optim": {"lrr": 1}}, "optim.lrr", "unknown key"),
        ({"steps": 0}, "steps", "out of range [1,"),
        ({"optim": {"lr": 5.0}}, "optim.lr", "out of range [0.0, 1.0]"),
        ({"batch_size": "big"}, "batch_size", "expected an integer"),
        ({"preset": "huge"}, "preset", "not one of"),
        ({"data": {"source": "web"}}, "data.source", "not one of"),
        ({"method_cfg": {"caption_dropout": 2}}, "method_cfg.caption_dropout", "out of range"),
        ({"method_cfg": {"nope": 1}}, "method_cfg.nope", "unknown key"),
        ({"parallel": "fsdp2"}, "parallel", "not one of"),
    ],
)
def test_bad_values_name_the_field(overrides, field, words):
    with pytest.raises(ConfigError) as err:
        load_train_config("sft", overrides)
    assert err.value.field == field
    assert field in str(err.value) and words in str(err.value)


def test_unknown_method():
    with pytest.raises(ConfigError, match="unknown method"):
        load_train_config("magic")


def test_yaml_roundtrip(tmp_path):
    cfg = load_train_config("sft", {"steps": 7})
    save_yaml(cfg, tmp_path / "c.yaml")
    d = load_yaml(tmp_path / "c.yaml")
    again = load_train_config("sft", d)
    assert again == cfg
    # the run's batch split is recorded beside the config and ignored when it is read back
    save_yaml(cfg, tmp_path / "c.yaml", layout={"world_size": 2, "per_rank_batch_size": 8, "micro_batch_size": 8})
    assert load_yaml(tmp_path / "c.yaml")["layout"]["world_size"] == 2
    assert load_train_config("sft", load_yaml(tmp_path / "c.yaml")) == cfg


def test_fsdp_is_accepted_on_cpu():
    assert load_train_config("sft", {"parallel": "fsdp"}).parallel == "fsdp"  # FSDP2 shards over gloo too


def test_malformed_yaml(tmp_path):
    (tmp_path / "c.yaml").write_text("steps: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(tmp_path / "c.yaml")


@pytest.mark.parametrize(
    "method, overrides, field, words",
    [
        (
            "sft",
            {"method_cfg": {"caption_dropout": -1}},
            "method_cfg.caption_dropout",
            "value -1 is out of range [0.0, 1.0]",
        ),
        ("dmd", {"method_cfg": {"fake_lr": 2.0}}, "method_cfg.fake_lr", "out of range [0.0, 1.0]"),
        (
            "mogan",
            {"method_cfg": {"flow_estimator": "raft"}},
            "method_cfg.flow_estimator",
            "value 'raft' is not one of ['horn_schunck', 'raft_small', 'raft_large']",
        ),
        (
            "mogan",
            {"method_cfg": {"head_blocks": [1, "2", 3]}},
            "method_cfg.head_blocks[1]",
            "expected an integer, got '2'",
        ),
        ("vdot", {"method_cfg": {"use_gan": "no"}}, "method_cfg.use_gan", "expected true/false"),
        (
            "dfdpo",
            {"method_cfg": {"beta2": 1}},
            "method_cfg.beta2",
            "unknown key; allowed keys: ['beta', 'distortions',",
        ),
        ("sft", {"optim": {"lr": "1e-4"}}, "optim.lr", "expected a number, got '1e-4'"),
        ("sft", {"optim": {"schedule": "linear"}}, "optim.schedule", "not one of ['constant', 'cosine', 'warmdown']"),
        ("sft", {"data": 3}, "data", "expected a mapping, got 3"),
        ("sft", {"method_cfg": 3}, "method_cfg", "expected a mapping, got 3"),
        ("sft", {"data": {"families": {"pan": "often"}}}, "data.families.pan", "expected a number"),
    ],
)
def test_every_section_names_the_field_and_the_limit(method, overrides, field, words):
    with pytest.raises(ConfigError) as err:
        load_train_config(method, overrides)
    assert err.value.field == field and words in str(err.value)
    assert str(err.value).startswith(f"config field '{field}': ")


def test_values_are_taken_as_yaml_gives_them():
    cfg = load_train_config(
        "mogan",
        {
            "steps": 7.0,
            "optim": {"betas": (0.5, 0.9), "lr": 1},
            "validation_prompts": ("a",),
            "method_cfg": {"head_blocks": (1.0, 2, 3)},
        },
    )
    assert cfg.steps == 7 and isinstance(cfg.steps, int) and cfg.optim.betas == (0.5, 0.9)
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.validation_prompts == ["a"] and cfg.method_cfg.head_blocks == [1, 2, 3]
    for bad in ({"steps": 7.5}, {"steps": "7"}, {"steps": True}, {"gradient_checkpointing": 1}, {"init": 5}):
        with pytest.raises(ConfigError, match=f"config field '{next(iter(bad))}': expected"):
            load_train_config("sft", bad)


def test_config_error_is_picklable():
    with pytest.raises(ConfigError) as err:
        load_train_config("sft", {"optim": {"lr": -1}})
    again = pickle.loads(pickle.dumps(err.value))
    assert type(again) is ConfigError and (again.field, again.detail, str(again)) == (
        "optim.lr",
        err.value.detail,
        str(err.value),
    )


def test_to_dict_is_plain_data_with_the_method_config():
    d = to_dict(load_train_config("vdot", {}))
    assert d["optim"]["betas"] == [0.0, 0.999] and d["method_cfg"]["critic_steps"] == 5
    assert yaml.safe_load(yaml.safe_dump(d)) == d


def test_the_config_imports_no_method_and_every_method_has_its_config():
    # trainer.methods imports trainer.config; the reverse would be an import cycle
    code = "import sys, trainer.config; sys.exit(any(m.startswith('trainer.methods') for m in sys.modules))"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
    from trainer.methods import METHODS

    assert list(METHODS) == list(METHOD_CONFIGS)
    for name, cls in METHODS.items():
        assert cls.Config is METHOD_CONFIGS[name] and cls.defaults("full") == METHOD_CONFIGS[name].defaults("full")
