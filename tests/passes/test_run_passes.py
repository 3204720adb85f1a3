"""The pass manager (``passes.run_passes``) and the pass contracts it checks.

A pass declares its name, whether it works in place, and a ``verify`` of its guarantees
(``fxquant/passes/infra.py``). These tests check the manager's error message, dumps and timings,
that each broken contract is caught with the pass named, and that each ``verify`` rejects the
graph as it was before its pass and accepts it after.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.fx as fx
from torch import nn

import fxquant
from fxquant import CalibrationError, PassError, QuantConfig, passes
from fxquant.passes import Pass, PassContractError, PassResult


class ConvNet(nn.Module):
    """conv -> BatchNorm -> ReLU -> linear: work for every pass of the static pipeline."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


def _context(config: QuantConfig, **kw) -> passes.PassContext:
    return passes.PassContext(config=config, example_inputs=(_x(),),
                              calibration=[(_x(s),) for s in (1, 2)], **kw)


def _captured(config: QuantConfig) -> fx.GraphModule:
    return fxquant.capture(ConvNet().eval(), (_x(),), config)


def _lowered_too_little(gm: fx.GraphModule, ctx: passes.PassContext) -> PassResult:
    return PassResult(gm, False)  # claims to lower, lowers nothing


BROKEN_LOWERING = dataclasses.replace(passes.LOWER_TO_INT8, run=_lowered_too_little)


def test_a_failing_pass_is_named_with_the_passes_before_it():
    def explode(gm: fx.GraphModule, ctx: passes.PassContext) -> PassResult:
        raise RuntimeError("boom")

    config = QuantConfig()
    pipeline = (passes.CANONICALIZE, passes.FOLD_BATCHNORM, Pass("explode", explode))
    with pytest.raises(PassError) as info:
        passes.run_passes(_captured(config), pipeline, _context(config))
    assert str(info.value) == ("pass 'explode' failed (passes already run: ['canonicalize', "
                               "'fold_batchnorm']): RuntimeError: boom")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_an_fxquant_error_from_a_pass_passes_through_unwrapped():
    config = QuantConfig(mode="static")
    ctx = passes.PassContext(config=config)  # static mode, no calibration data
    with pytest.raises(CalibrationError, match="static mode needs calibration data"):
        passes.run_passes(_captured(config), passes.PREPARE + passes.CALIBRATE, ctx)


def test_dump_dir_holds_the_code_after_each_pass(tmp_path):
    config = QuantConfig()
    ctx = _context(config, dump_dir=tmp_path / "dumps")
    gm = passes.run_passes(_captured(config), passes.PIPELINE, ctx)
    dumps = sorted(p.name for p in (tmp_path / "dumps").iterdir())
    assert dumps == [f"{i:02d}_{p.name}.py" for i, p in enumerate(passes.PIPELINE)]
    assert (tmp_path / "dumps" / dumps[-1]).read_text() == gm.code
    assert "torch.conv2d" in (tmp_path / "dumps" / "00_canonicalize.py").read_text()
    assert "linear_dynamic" in (tmp_path / "dumps" / "11_fuse_dequant_matmul.py").read_text()


def test_timings_are_recorded_under_each_pass_name():
    config = QuantConfig()
    ctx = _context(config)
    passes.run_passes(_captured(config), passes.PIPELINE, ctx)
    assert list(ctx.timings) == [p.name for p in passes.PIPELINE]
    assert all(t >= 0.0 for t in ctx.timings.values())


def test_every_pass_has_one_name_for_timings_refusals_and_dumps():
    names = [p.name for p in passes.ALL_PASSES]
    assert len(set(names)) == len(names)
    # The name a pass files refusals under is its own (checked between passes in verify mode).
    config = QuantConfig(mode="weight_only")  # the conv is left unfused, with a reason
    ctx = _context(config)
    passes.run_passes(_captured(config), passes.PIPELINE, ctx, verify=True)
    assert set(ctx.refusals) == {"fuse_dequant_matmul"}


@pytest.mark.parametrize("verify", [True, False])
def test_a_pass_that_breaks_its_guarantee_is_caught_in_verify_mode(verify):
    config = QuantConfig()
    pipeline = (*passes.PREPARE, BROKEN_LOWERING)
    if not verify:  # the debug check costs time: off unless asked for
        passes.run_passes(_captured(config), pipeline, _context(config), verify=False)
        return
    with pytest.raises(PassContractError, match=r"pass 'lower_to_int8' broke its contract: "
                                                r"conv2d: dynamic mode, but its input is not "
                                                r"quantized per call \(passes already run: "):
        passes.run_passes(_captured(config), pipeline, _context(config), verify=True)


def test_verify_follows_the_environment(monkeypatch):
    config = QuantConfig()
    pipeline = (*passes.PREPARE, BROKEN_LOWERING)
    monkeypatch.setenv("FXQUANT_VERIFY", "0")
    passes.run_passes(_captured(config), pipeline, _context(config))
    monkeypatch.setenv("FXQUANT_VERIFY", "1")
    with pytest.raises(PassContractError, match="lower_to_int8"):
        passes.run_passes(_captured(config), pipeline, _context(config))


def test_modified_false_must_leave_the_graph_alone():
    def sneaky(gm: fx.GraphModule, ctx: passes.PassContext) -> PassResult:
        output = next(n for n in gm.graph.nodes if n.op == "output")
        with gm.graph.inserting_before(output):
            gm.graph.call_function(torch.relu, (output.args[0],))
        return PassResult(gm, False)

    with pytest.raises(PassContractError, match=r"'sneaky' .*modified=False but changed the graph"):
        passes.run_passes(_captured(QuantConfig()), (Pass("sneaky", sneaky),),
                          _context(QuantConfig()), verify=True)


def test_refusals_must_be_filed_under_the_pass_name():
    def misfiled(gm: fx.GraphModule, ctx: passes.PassContext) -> PassResult:
        ctx.refuse("fuse", next(iter(gm.graph.nodes)), "not today")
        return PassResult(gm, False)

    with pytest.raises(PassContractError, match=r"filed refusals under \['fuse'\], not under its "
                                                r"own name 'fuse_dequant_matmul'"):
        passes.run_passes(_captured(QuantConfig()), (Pass("fuse_dequant_matmul", misfiled),),
                          _context(QuantConfig()), verify=True)


def test_the_in_place_claim_is_always_checked():
    config = QuantConfig()
    copies = Pass("copies", lambda gm, ctx: PassResult(fx.GraphModule(gm, gm.graph), True))
    with pytest.raises(PassContractError, match=r"'copies' .*declared in place but returned a new"):
        passes.run_passes(_captured(config), (copies,), _context(config), verify=False)
    same = dataclasses.replace(passes.CLEANUP, run=lambda gm, ctx: PassResult(gm, False))
    with pytest.raises(PassContractError, match=r"'cleanup' .*return a new module but returned"):
        passes.run_passes(_captured(config), (same,), _context(config), verify=False)


def test_a_bare_function_runs_as_an_in_place_pass_named_after_it():
    def run_nothing(gm: fx.GraphModule, ctx: passes.PassContext) -> PassResult:
        return PassResult(gm, False)

    ctx = _context(QuantConfig())
    passes.run_passes(_captured(QuantConfig()), (run_nothing,), ctx)
    assert list(ctx.timings) == ["nothing"]


# (config, pipeline, pass): the pipeline up to the pass leaves it work, which its verify sees.
_STATIC = QuantConfig(mode="static")
_SQ = QuantConfig(smoothquant_alpha=0.5)
_QAT = passes.PREPARE + passes.QAT_PREPARE + passes.QAT_FREEZE
CASES = [
    (_STATIC, passes.PIPELINE, passes.CANONICALIZE),
    (_STATIC, passes.PIPELINE, passes.FOLD_BATCHNORM),
    (_STATIC, passes.PIPELINE, passes.ANNOTATE),
    (_STATIC, passes.PIPELINE, passes.INSERT_OBSERVERS),
    (_SQ, passes.PIPELINE, passes.DROP_STATISTICS),
    (_STATIC, passes.PIPELINE, passes.LOWER_TO_INT8),
    (QuantConfig(), passes.PIPELINE, passes.LOWER_TO_INT8),
    (_STATIC, passes.PIPELINE, passes.FUSE_DEQUANT_MATMUL),
    (_STATIC, passes.PIPELINE, passes.FUSE_CONV_RELU),
    (_STATIC, passes.PIPELINE, passes.CLEANUP),
    (QuantConfig(), _QAT, passes.INSERT_FAKE_QUANT),
    (QuantConfig(), _QAT, passes.FREEZE_FAKE_QUANT),
]


@pytest.mark.parametrize(("config", "pipeline", "p"), CASES,
                         ids=[f"{p.name}-{c.mode}" for c, _, p in CASES])
def test_verify_rejects_the_graph_before_its_pass_and_accepts_it_after(config, pipeline, p):
    assert p.verify is not None
    ctx = _context(config)
    gm = passes.run_passes(_captured(config), pipeline[: pipeline.index(p)], ctx)
    assert p.verify(gm) is not None
    gm = passes.run_passes(gm, (p,), ctx, verify=True)
    assert p.verify(gm) is None


def test_verify_insert_statistics_wants_each_linear_to_read_its_statistics():
    config = _SQ
    ctx = _context(config)
    gm = passes.run_passes(_captured(config), passes.PREPARE, ctx)
    assert passes.INSERT_STATISTICS.verify is not None
    assert passes.INSERT_STATISTICS.verify(gm) is None
    fc = next(n for n in gm.graph.nodes if n.meta.get("fxquant", {}).get("in_stats"))
    stats = fc.args[0]
    # An activation observer now sits between the statistics and the linear: not the contract.
    fc.meta["fxquant"]["in_stats"] = "fxq.elsewhere"
    assert "does not read its input through fxq.elsewhere" in passes.INSERT_STATISTICS.verify(gm)
    assert isinstance(stats, fx.Node)


def test_verify_gptq_wants_codes_on_every_linear_it_marks():
    config = QuantConfig(mode="weight_only", weight_method="gptq")
    ctx = _context(config)
    gm = passes.run_passes(_captured(config), passes.PREPARE + passes.CALIBRATE, ctx)
    gm = passes.run_passes(gm, passes.CONVERT[:3], ctx, verify=True)
    assert passes.GPTQ.verify is not None and passes.GPTQ.verify(gm) is None
    fc = next(n for n in gm.graph.nodes if "gptq" in n.meta.get("fxquant", {}))
    observer = gm.get_submodule(str(fc.args[1].target))
    observer.precomputed = None
    assert "holds no codes" in passes.GPTQ.verify(gm)
