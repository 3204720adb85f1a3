"""pack_weights' decode-tuned layout: dynamic linears of models that generate run fxquant's VNNI
kernel (where the CPU has AVX-512 VNNI), everything else fbgemm.

The VNNI layout replaces fbgemm's pack (one copy of the weights): ``state_dict`` rebuilds the
codes bit-exact, ``load_state_dict`` re-packs, the portable twin gets its buffers back, and a
ReLU after such a layer fuses into the kernel's epilogue.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fxquant
from fxquant.kernels import dynamic, fbgemm
from fxquant.kernels import weight_only as wo
from fxquant.passes import pack_weights
from fxquant.passes.runtime_calls import linear_dynamic_vnni, linear_relu_dynamic_vnni
from tests import causal_lms

pytestmark = pytest.mark.skipif(not wo.available(),
                                reason=f"extension not built: {wo.status().detail}")


def _calls(gm: torch.fx.GraphModule) -> list[object]:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


@pytest.fixture
def vnni(monkeypatch):
    """Pack dynamic linears for the VNNI kernel whatever the model (the kernel computes the same
    on any CPU: its plain loop serves where VNNI is missing)."""
    real = pack_weights._layout_for
    monkeypatch.setattr(pack_weights, "_layout_for",
                        lambda op, ctx: "vnni" if op == "linear_dynamic" else real(op, ctx))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(40, 50), nn.ReLU(), nn.Linear(50, 7)).eval()


def test_layers_fuse_relu_and_round_trip_their_state(vnni):
    x = torch.randn(5, 40)
    q = fxquant.quantize(_mlp(), (x,), progress=False)
    assert _calls(q) == [linear_relu_dynamic_vnni, linear_dynamic_vnni]
    twin = fxquant.portable(q)
    state, twin_state = q.state_dict(), twin.state_dict()
    assert state.keys() == twin_state.keys()
    assert all(torch.equal(state[k], twin_state[k]) for k in state)
    assert not any(k.endswith("_w_int8") for k in dict(q.named_buffers()))  # one copy in RAM
    with torch.no_grad():
        torch.testing.assert_close(q(x), twin(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(copy.deepcopy(q)(x), q(x), rtol=0, atol=0)
    key = next(k for k in state if k.endswith("0_w_int8"))
    state[key] = torch.flip(state[key], dims=[0])
    q.load_state_dict(state)
    assert torch.equal(q.state_dict()[key], state[key])
    with torch.no_grad():
        torch.testing.assert_close(q(x), fxquant.portable(q)(x), rtol=1e-5, atol=1e-5)


def test_a_model_that_generates_gets_the_decode_kernel_where_it_runs():
    torch.manual_seed(0)
    lm = causal_lms.gpt2()
    ids = torch.randint(0, causal_lms.VOCAB, (1, 8))
    q = fxquant.quantize(lm, {"input_ids": ids}, progress=False)
    kernels = [layer.kernel for layer in fxquant.record_of(q).layers if layer.kind == "linear"]
    expected = "VNNI" if dynamic.available() else "fbgemm"
    assert kernels and all(expected in k for k in kernels), kernels
    with torch.no_grad():  # same model either way: generation agrees with the portable twin
        fast = q.generate(input_ids=ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        twin = fxquant.portable(q).generate(input_ids=ids, max_new_tokens=5, do_sample=False,
                                            pad_token_id=0)
    assert torch.equal(fast, twin)


def test_other_models_keep_fbgemm():
    q = fxquant.quantize(_mlp(), (torch.randn(2, 40),), progress=False)
    assert _calls(q) == [fbgemm.WITH_RELU[fbgemm.LINEAR_DYNAMIC], fbgemm.LINEAR_DYNAMIC]


def test_per_token_layers_of_a_model_that_generates_run_the_vnni_kernel():
    from fxquant.passes.runtime_calls import linear_dynamic_per_token_vnni

    torch.manual_seed(0)
    lm = causal_lms.llama()
    ids = torch.randint(0, causal_lms.VOCAB, (2, 6))
    config = fxquant.QuantConfig(activation_granularity="per_token")
    q = fxquant.quantize(lm, {"input_ids": ids}, config=config, progress=False)
    regions = [m for m in q.modules() if isinstance(m, torch.fx.GraphModule)]
    calls = [t for r in regions for t in _calls(r)]
    assert (linear_dynamic_per_token_vnni in calls) == dynamic.available()
    with torch.no_grad():
        torch.testing.assert_close(q(input_ids=ids).logits,
                                   fxquant.portable(q)(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)


_AVX2_SCRIPT = r"""
import sys, torch, fxquant
sys.path.insert(0, sys.argv[1])
from tests import causal_lms
from fxquant.kernels import dynamic, weight_only
assert weight_only.kernel_isa() == "avx2" and not dynamic.available()
torch.manual_seed(0)
lm = causal_lms.gpt2()
ids = torch.randint(0, causal_lms.VOCAB, (1, 6))
for mode in ("dynamic", "weight_only"):
    q = fxquant.quantize(lm, {"input_ids": ids}, config=fxquant.QuantConfig(mode=mode),
                         progress=False)
    kernels = {l.kernel for l in fxquant.record_of(q).layers if l.kind == "linear"}
    assert not any("panels" in k for k in kernels), kernels
    with torch.no_grad():
        torch.testing.assert_close(q(input_ids=ids).logits,
                                   fxquant.portable(q)(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)
print("ok")
"""


def test_an_avx2_cpu_gets_the_row_layout_and_fbgemm():
    """FXQUANT_KERNEL_ISA=avx2 (what an AVX2-only CPU runs): no panel layouts, same model."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", _AVX2_SCRIPT, str(root)], capture_output=True,
                            text=True, env={**os.environ, "FXQUANT_KERNEL_ISA": "avx2"},
                            timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
