"""A LoRA adapter checkpoint (LoRA weights + the name of its base) registers through POST /v1/checkpoints like a
pipeline directory, records its base, and generates through the API; one whose base is not available is refused."""

from __future__ import annotations

import json
import shutil

import pytest

from backend.crud import checkpoints as ckpt_crud
from tests.backend.backend_helpers import auth
from trainer.models.adapter import ADAPTER_FILE


def test_register_an_adapter_checkpoint_and_generate_with_it(
    client, keys, stack, tiny_pipeline_dir, tiny_adapter_dir, tmp_path
):
    name = f"lora-{stack.storage_root.name}"[:60]
    r = client.post("/v1/checkpoints", json={"name": name, "path": str(tiny_adapter_dir)}, headers=auth(keys["admin"]))
    assert r.status_code == 201, r.text
    info = r.json()["info"]
    assert info["adapter"]["base"] == str(tiny_pipeline_dir) and info["adapter"]["rank"] == 4
    assert info["sampling"]["kind"] == "few_step"
    body = {
        "checkpoint": name,
        "prompt": "a red square moves right",
        "seed": 4,
        "num_frames": 5,
        "height": 16,
        "width": 16,
        "timeout_s": 120,
    }
    r = client.post("/v1/generations", json=body, headers=auth(keys["generate"]))
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "succeeded" and r.json()["video"]["num_frames"] == 5

    broken = tmp_path / "broken"
    shutil.copytree(tiny_adapter_dir, broken)
    adapter = json.loads((broken / ADAPTER_FILE).read_text())
    (broken / ADAPTER_FILE).write_text(json.dumps({**adapter, "base": str(tmp_path / "gone")}))
    r = client.post("/v1/checkpoints", json={"name": name + "-b", "path": str(broken)}, headers=auth(keys["admin"]))
    assert r.status_code == 422 and r.json()["error"]["field"] == "path" and "base" in r.json()["error"]["message"]


def test_an_adapters_base_directory_must_be_inside_the_allowed_roots(tiny_adapter_dir, tmp_path):
    with pytest.raises(ckpt_crud.CheckpointError, match="base .* must be inside") as err:
        ckpt_crud.adapter_info(tiny_adapter_dir, allowed_roots=[tmp_path])
    assert err.value.status == 403 and err.value.field == "path"
    assert ckpt_crud.adapter_info(tiny_adapter_dir)["base"] and ckpt_crud.adapter_info(tmp_path) is None
