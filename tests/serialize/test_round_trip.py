"""fxquant.save in this process, fxquant.load in a fresh one: bit-identical outputs and tokens.

The loading process imports fxquant, torch and the model classes (by file path) -- nothing of the
saving process -- and has pickle and torch.load replaced by functions that fail, so a load that
unpickled anything would fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from saved_models import MLP, tiny_gpt2, tiny_llama, token_ids

import fxquant

pytest.importorskip("transformers")

MODES = ("dynamic", "static", "weight_only")
LMS = {"gpt2-dynamic": (tiny_gpt2, "dynamic"), "gpt2-static": (tiny_gpt2, "static"),
       "llama-dynamic": (tiny_llama, "dynamic"), "llama-static": (tiny_llama, "static")}
NEW_TOKENS = 6

LOADER = r"""
import importlib.util, json, pickle, sys
import torch
from safetensors.torch import load_file, save_file

spec = importlib.util.spec_from_file_location("saved_models", sys.argv[1])
models = importlib.util.module_from_spec(spec)
spec.loader.exec_module(models)
import fxquant

def refuse(*args, **kwargs):
    raise AssertionError("fxquant.load unpickled something")

class Refused(pickle.Unpickler):
    load = refuse

pickle.load = pickle.loads = torch.load = torch.serialization.load = refuse
pickle.Unpickler = Refused
cases = json.loads(open(sys.argv[2]).read())
inputs = load_file(sys.argv[3])
outputs, facts = {}, {}
with torch.no_grad():
    for name, case in cases.items():
        if case["kind"] == "mlp":
            if case["meta_skeleton"]:
                with torch.device("meta"):
                    skeleton = models.MLP()
            else:
                skeleton = models.MLP()
            q = fxquant.load(case["folder"], model=skeleton)
            outputs[name] = q(inputs[name])
        else:
            q = fxquant.load(case["folder"])
            ids = inputs[name]
            outputs[name] = q(ids).logits
            outputs[name + ".tokens"] = q.generate(ids, max_new_tokens=int(sys.argv[6]),
                                                   do_sample=False)
            facts[name] = {"class": type(q).__name__, "use_cache": q.config.use_cache}
            if hasattr(q, "transformer"):
                box = q.lm_head.fxq
                facts[name]["tied"] = any(b is q.transformer.wte.fxq.weight_w_int8
                                          for b in box.buffers())
            else:
                outputs[name + ".inv_freq"] = q.model.rotary_emb.inv_freq
        record = fxquant.record_of(q)
        facts.setdefault(name, {})["layers"] = [l.name for l in record.layers]
save_file({k: v.contiguous() for k, v in outputs.items()}, sys.argv[4])
open(sys.argv[5], "w").write(json.dumps(facts))
"""


def _quantize_lm(factory, mode):
    torch.manual_seed(0)
    model = factory()
    calibration = [(token_ids(2, 12, seed=10 + i),) for i in range(3)]
    return model, fxquant.quantize(model, (token_ids(1, 8, seed=1),), calibration=calibration,
                                   config=fxquant.QuantConfig(mode=mode))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """Save every case here, load them all in one fresh process; (references, loaded, facts)."""
    root = tmp_path_factory.mktemp("round_trip")
    cases, inputs, refs = {}, {}, {}
    for mode in MODES:
        name = f"mlp-{mode}"
        torch.manual_seed(0)
        x = torch.randn(4, 16)
        q = fxquant.quantize(MLP().eval(), (x,), calibration=[(torch.randn(8, 16),)],
                             config=fxquant.QuantConfig(mode=mode))
        fxquant.save(q, root / name)
        cases[name] = {"kind": "mlp", "folder": str(root / name),
                       "meta_skeleton": mode == "dynamic"}
        inputs[name], refs[name] = x, q(x)
    for name, (factory, mode) in LMS.items():
        _, q = _quantize_lm(factory, mode)
        fxquant.save(q, root / name)
        cases[name] = {"kind": "lm", "folder": str(root / name)}
        ids = token_ids(2, 7, seed=3)
        with torch.no_grad():
            inputs[name], refs[name] = ids, q(ids).logits
            refs[name + ".tokens"] = q.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        if name.startswith("llama"):
            refs[name + ".inv_freq"] = q.model.rotary_emb.inv_freq
        refs[name + ".layers"] = [layer.name for layer in fxquant.record_of(q).layers]
    (root / "cases.json").write_text(json.dumps(cases))
    save_file(inputs, str(root / "inputs.safetensors"))
    models_file = Path(__file__).with_name("saved_models.py")
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, str(models_file), str(root / "cases.json"),
         str(root / "inputs.safetensors"), str(root / "out.safetensors"), str(root / "facts.json"),
         str(NEW_TOKENS)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return refs, load_file(str(root / "out.safetensors")), json.loads(
        (root / "facts.json").read_text())


@pytest.mark.parametrize("mode", MODES)
def test_plain_model_captured_whole_round_trips_bit_identical(loaded, mode):
    refs, outs, facts = loaded
    name = f"mlp-{mode}"
    assert torch.equal(outs[name], refs[name])
    assert facts[name]["layers"] == ["fc1", "fc2"]


@pytest.mark.parametrize("name", list(LMS))
def test_causal_lm_round_trips_bit_identical_and_generates_the_same_tokens(loaded, name):
    refs, outs, facts = loaded
    assert facts[name]["use_cache"] is True
    assert torch.equal(outs[name], refs[name])
    assert torch.equal(outs[name + ".tokens"], refs[name + ".tokens"])
    assert outs[name + ".tokens"].shape[1] == 7 + NEW_TOKENS
    assert facts[name]["layers"] == refs[name + ".layers"]


@pytest.mark.parametrize("name", ["gpt2-dynamic", "gpt2-static"])
def test_tied_table_is_one_tensor_after_loading(loaded, name):
    _, _, facts = loaded
    assert facts[name]["tied"] is True


@pytest.mark.parametrize("name", ["llama-dynamic", "llama-static"])
def test_rotary_buffers_are_computed_as_the_model_computes_them(loaded, name):
    refs, outs, _ = loaded
    assert torch.equal(outs[name + ".inv_freq"], refs[name + ".inv_freq"])
