"""What a saved folder holds: the manifest's schema, tensors written once, the HF files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from saved_models import tiny_gpt2, token_ids
from torch import nn

import fxquant
from fxquant.serialize import FORMAT_VERSION, MANIFEST_FILE, WEIGHTS_FILE, read_manifest
from fxquant.serialize.skeleton import meta_parameters
from fxquant.serialize.tensors import unique_tensors

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gpt2_save(tmp_path_factory):
    q = fxquant.quantize(tiny_gpt2(), (token_ids(1, 8, seed=0),))
    return q, fxquant.save(q, tmp_path_factory.mktemp("format") / "gpt2")


def test_folder_is_self_describing(gpt2_save):
    q, folder = gpt2_save
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "fxquant.json", "generation_config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["n_embd"] == 64
    data = json.loads((folder / MANIFEST_FILE).read_text())
    assert data["format"] == "fxquant" and data["format_version"] == FORMAT_VERSION
    assert data["config"] == fxquant.record_of(q).config.to_dict()
    assert {"fxquant", "torch", "transformers", "safetensors"} <= set(data["versions"])
    assert data["model"] == {"class_name": "GPT2LMHeadModel", "kind": "transformers",
                             "module": "transformers.models.gpt2.modeling_gpt2",
                             "attn_implementation": q.config._attn_implementation}
    record = data["record"]
    assert [r["name"] for r in record["regions"]][:3] == [
        "transformer.wte", "transformer.wpe", "transformer.h.0.attn.c_attn"]
    assert all(r["capture"] == "symbolic_trace" for r in record["regions"])
    layers = {layer["name"]: layer for layer in record["layers"]}
    assert layers["lm_head"]["scheme"] == "w8 per_channel, dynamic"
    assert record["tied"] == [["transformer.wte.fxq.weight_w_int8", "lm_head.fxq.weight_w_int8"]]


def test_tied_table_is_written_once(gpt2_save):
    q, folder = gpt2_save
    manifest = read_manifest(folder)
    assert manifest.weights.aliases == {
        "lm_head.fxq.weight_w_int8": "transformer.wte.fxq.weight_w_int8"}
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as f:
        keys = set(f.keys())
        assert "lm_head.fxq.weight_w_int8" not in keys
        assert f.get_tensor("transformer.wte.fxq.weight_w_int8").dtype == torch.int8
    assert keys | set(manifest.weights.aliases) == set(q.state_dict())


def test_unique_tensors_keeps_one_copy_per_tensor():
    table = torch.arange(12.0).reshape(3, 4)
    view = table[1]  # overlaps the table: written as its own copy
    empty_a, empty_b = torch.empty(0), torch.empty(0)
    tensors, aliases = unique_tensors({"a": table, "b": table, "row": view, "e1": empty_a,
                                       "e2": empty_b})
    assert aliases == {"b": "a"}
    assert tensors["a"].data_ptr() == table.data_ptr()  # written without a copy
    assert set(tensors) == {"a", "row", "e1", "e2"}
    assert torch.equal(tensors["row"], view) and tensors["row"].data_ptr() != view.data_ptr()


def test_meta_parameters_keep_buffers_real():
    with meta_parameters():
        model = nn.BatchNorm1d(4)
        linear = nn.Linear(3, 5)
    assert model.weight.is_meta and linear.weight.is_meta
    assert not model.running_var.is_meta and torch.equal(model.running_var, torch.ones(4))
    assert not nn.Linear(2, 2).weight.is_meta  # the hook is gone after the block
