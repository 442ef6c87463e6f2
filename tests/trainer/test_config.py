import pytest

from trainer.config import ConfigError, load_train_config, load_yaml, save_yaml


def test_defaults_and_overrides():
    cfg = load_train_config("sft", {"optim": {"lr": 1e-4}, "method_cfg": {"caption_dropout": 0.2}})
    assert cfg.optim.lr == 1e-4 and cfg.method_cfg.caption_dropout == 0.2 and cfg.method == "sft"


@pytest.mark.parametrize("overrides, field, words", [
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
])
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
