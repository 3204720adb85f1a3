"""Small-config checks for tests/models.py: fx-traceable, shape-general,
GPT-2 weight tying, causal masking, BERT padding mask."""

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F

from tests.models import (  # tests/conftest.py puts the repo root on sys.path
    BertEncoder,
    DecoderConfig,
    EncoderConfig,
    GPT2Decoder,
    SmallConvNet,
    make_inputs,
    seed_mlp,
)

DEC = DecoderConfig(n_layer=2, d_model=64, n_head=4, d_mlp=256, vocab=100, n_ctx=64)
ENC = EncoderConfig(n_layer=2, d_model=64, n_head=4, d_mlp=256, vocab=100, max_pos=64)

# (trace at) -> (run at) shapes: different batch and sequence length.
SHAPES = [(2, 8), (3, 13)]


def _build(kind):
    if kind == "mlp":
        return seed_mlp(), {}
    if kind == "gpt2":
        return GPT2Decoder(DEC, seed=0), {"cfg": DEC}
    if kind == "bert":
        return BertEncoder(ENC, seed=0), {"cfg": ENC, "pad": 3}
    if kind == "convnet28":
        return SmallConvNet(28), {"image_size": 28}
    if kind == "convnet8":
        return SmallConvNet(8), {"image_size": 8}
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["mlp", "gpt2", "bert", "convnet28", "convnet8"])
def test_traces_and_matches_eager_at_two_shapes(kind):
    model, kw = _build(kind)
    model.eval()
    gm = fx.symbolic_trace(model)
    input_kind = "convnet" if kind.startswith("convnet") else kind
    outs = []
    for batch, seq in SHAPES:
        inputs = make_inputs(input_kind, batch, seq, **kw)
        with torch.no_grad():
            ref = model(*inputs)
            got = gm(*inputs)
        assert torch.equal(ref, got), (kind, batch, seq)
        assert torch.isfinite(got).all()
        outs.append(got)
    if kind == "gpt2":
        assert outs[0].shape == (2, 8, DEC.vocab) and outs[1].shape == (3, 13, DEC.vocab)
    if kind == "bert":
        assert outs[0].shape == (2, 8, ENC.d_model) and outs[1].shape == (3, 13, ENC.d_model)


def test_gpt2_lm_head_is_tied_to_wte():
    model = GPT2Decoder(DEC, seed=0).eval()
    # One tensor: no separate lm_head parameter; vocab-sized matrix appears once.
    vocab_mats = [n for n, p in model.named_parameters() if p.shape == (DEC.vocab, DEC.d_model)]
    assert vocab_mats == ["wte.weight"]

    gm = fx.symbolic_trace(model)
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    head = out_node.args[0]
    assert head.op == "call_function" and head.target is F.linear
    w = head.args[1]
    assert w.op == "get_attr" and w.target == "wte.weight"
    assert gm.get_parameter("wte.weight") is model.wte.weight

    # Changing the embedding changes the head (same storage).
    (ids,) = make_inputs("gpt2", 1, 5, cfg=DEC)
    with torch.no_grad():
        before = gm(ids)
        model.wte.weight[:, 0] += 1.0
        after = gm(ids)
    assert not torch.equal(before, after)


def test_gpt2_causal_masking():
    model = GPT2Decoder(DEC, seed=1).eval()
    gm = fx.symbolic_trace(model)
    (ids,) = make_inputs("gpt2", 2, 12, cfg=DEC, seed=3)
    t = 5
    ids2 = ids.clone()
    ids2[:, t + 1 :] = (ids2[:, t + 1 :] + 1) % DEC.vocab
    with torch.no_grad():
        a, b = gm(ids), gm(ids2)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-5)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_bert_padding_mask():
    model = BertEncoder(ENC, seed=0).eval()
    gm = fx.symbolic_trace(model)
    ids, mask = make_inputs("bert", 2, 10, cfg=ENC, pad=4)
    assert mask[0].all() and mask[1, :6].all() and not mask[1, 6:].any()
    ids2 = ids.clone()
    ids2[1, 6:] = (ids2[1, 6:] + 7) % ENC.vocab  # change only padded tokens
    with torch.no_grad():
        a, b = gm(ids, mask), gm(ids2, mask)
    # Non-padded positions ignore padded tokens.
    torch.testing.assert_close(a[1, :6], b[1, :6], rtol=0, atol=1e-5)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)


def test_seeded_init_is_deterministic_and_gpt_style():
    a = GPT2Decoder(DEC, seed=7)
    b = GPT2Decoder(DEC, seed=7)
    c = GPT2Decoder(DEC, seed=8)
    assert torch.equal(a.wte.weight, b.wte.weight)
    assert not torch.equal(a.wte.weight, c.wte.weight)
    assert abs(a.wte.weight.std().item() - 0.02) < 0.002
    assert torch.count_nonzero(a.h[0].attn.qkv.bias) == 0
