"""Quantization-aware training through the compiler: does QAT recover what low-bit PTQ loses?

1. Digits (scikit-learn's bundled 1,797 8x8 images, 75/25 stratified split): an MLP
   64-256-256-10 trained in fp32, then 2-bit weights (dynamic int8 activations) by PTQ, then by
   QAT fine-tuning of the fp32 weights (min-max scales, and LSQ learned scales), each converted to
   the real integer model and scored on the test set.
2. A Hugging Face GPT-2 (tiny config) trained in fp32 on synthetic token sequences (each an
   arithmetic progression mod the vocabulary), then 2-bit weights by PTQ and by QAT fine-tuning
   (``labels=``, the model's own loss): QAT loss, next-token accuracy on held-out sequences of
   fp32, PTQ, the QAT model and its int8 conversion, greedy generation.

    python benchmarks/bench_qat.py             # ~3 minutes on 2 loaded cores
    python benchmarks/bench_qat.py --quick     # fewer epochs and steps

Writes benchmarks/results/bench_qat.json (with ``uptime`` before and after) and prints tables.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tabulate import tabulate
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fxquant
from benchmarks.common import write_json

# --- digits --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DigitsSettings:
    fp32_epochs: int = 30
    qat_epochs: int = 5
    lr: float = 1e-3
    qat_lr: float = 1e-3
    batch: int = 32
    bits: int = 2
    seed: int = 0


def digits_data() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    split = train_test_split(x / 16.0, y, test_size=0.25, random_state=0, stratify=y)
    xtr, xte, ytr, yte = (torch.as_tensor(a) for a in split)
    return xtr.float(), xte.float(), ytr.long(), yte.long()


def digits_mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float,
          batch: int, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def digits_experiment(s: DigitsSettings = DigitsSettings(), *, lsq: bool = True
                      ) -> dict[str, Any]:
    """fp32 -> PTQ -> QAT on digits; accuracies in percent, times in seconds."""
    xtr, xte, ytr, yte = digits_data()
    start = time.perf_counter()
    model = train(digits_mlp(s.seed), xtr, ytr, s.fp32_epochs, s.lr, s.batch, s.seed)
    rows = [{"method": "fp32", "test_accuracy": 100 * accuracy(model, xte, yte),
             "seconds": time.perf_counter() - start}]
    config = fxquant.QuantConfig(weight_bits=s.bits)
    start = time.perf_counter()
    ptq = fxquant.quantize(model, (xtr[:s.batch],), config=config)
    rows.append({"method": f"PTQ w{s.bits} (int8 model)", "test_accuracy":
                 100 * accuracy(ptq, xte, yte), "seconds": time.perf_counter() - start})
    for learned in (False, True) if lsq else (False,):
        start = time.perf_counter()
        qat = fxquant.prepare_qat(model, (xtr[:s.batch],), config=config,
                                  learnable_scales=learned)
        train(qat, xtr, ytr, s.qat_epochs, s.qat_lr, s.batch, s.seed + 1)
        name = f"QAT w{s.bits}, {s.qat_epochs} epochs" + (", LSQ scales" if learned else "")
        fake = 100 * accuracy(qat, xte, yte)
        int8 = fxquant.convert(qat)
        rows.append({"method": name + " (int8 model)", "test_accuracy":
                     100 * accuracy(int8, xte, yte), "fake_quant_accuracy": fake,
                     "seconds": time.perf_counter() - start})
    return {"settings": asdict(s), "rows": rows}


# --- GPT-2 ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPT2Settings:
    pretrain_steps: int = 150
    steps: int = 30
    lr: float = 1e-2
    qat_lr: float = 1e-3
    batch: int = 32
    seq: int = 16
    vocab: int = 64
    max_step: int = 2
    bits: int = 2
    seed: int = 0


def progressions(n: int, s: GPT2Settings, seed: int) -> torch.Tensor:
    """Sequences ``a, a + d, a + 2d, ...`` mod the vocabulary, ``a`` and ``d`` random
    (``1 <= d <= max_step``)."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, s.vocab, (n, 1), generator=g)
    step = torch.randint(1, s.max_step + 1, (n, 1), generator=g)
    return (start + step * torch.arange(s.seq)) % s.vocab


def next_token_accuracy(model: nn.Module, ids: torch.Tensor) -> float:
    """Top-1 next-token accuracy from the third position on (where the step is determined)."""
    with torch.no_grad():
        logits = model(ids).logits
    return float((logits[:, 1:-1].argmax(-1) == ids[:, 2:]).float().mean())


def lm_steps(model: nn.Module, s: GPT2Settings, steps: int, lr: float, first_seed: int
             ) -> list[float]:
    """``steps`` Adam steps of next-token loss on fresh progressions; the losses."""
    opt = torch.optim.Adam(model.parameters(), lr)
    model.train()
    losses = []
    for step in range(steps):
        ids = progressions(s.batch, s, seed=first_seed + step)
        opt.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def trained_gpt2(s: GPT2Settings) -> nn.Module:
    """A tiny GPT-2 trained in fp32 on the progressions (``pretrain_steps``)."""
    import transformers

    torch.manual_seed(s.seed)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=s.vocab,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    lm_steps(model, s, s.pretrain_steps, s.lr, first_seed=0)
    return model


def gpt2_experiment(s: GPT2Settings = GPT2Settings()) -> dict[str, Any]:
    """fp32 GPT-2 -> PTQ and QAT fine-tuning with ``bits``-bit weights; next-token accuracy on
    held-out progressions; greedy generation of the int8 model."""
    start = time.perf_counter()
    model = trained_gpt2(s)
    pretrain = time.perf_counter() - start
    test = progressions(64, s, seed=10_000)
    example = {"input_ids": test[:2]}
    config = fxquant.QuantConfig(weight_bits=s.bits)
    ptq = fxquant.quantize(model, example, config=config)
    start = time.perf_counter()
    qat = fxquant.prepare_qat(model, example, config=config)
    losses = lm_steps(qat, s, s.steps, s.qat_lr, first_seed=s.pretrain_steps)
    int8 = fxquant.convert(qat)
    qat_seconds = time.perf_counter() - start
    prompt = test[:8, :4]
    want = qat.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    got = int8.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    fp32_gen = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    truth = test[:8, :16]
    return {
        "settings": asdict(s),
        "pretrain_seconds": pretrain, "qat_seconds": qat_seconds,
        "qat_loss_first": losses[0], "qat_loss_last": losses[-1],
        "qat_loss_curve": losses[:: max(1, s.steps // 10)],
        "next_token_accuracy": {
            "fp32": next_token_accuracy(model, test),
            f"PTQ w{s.bits} (int8 model)": next_token_accuracy(ptq, test),
            f"QAT w{s.bits}, fake quant": next_token_accuracy(qat, test),
            f"QAT w{s.bits} (int8 model)": next_token_accuracy(int8, test),
        },
        "generate_int8_vs_qat_token_agreement": float((got == want).float().mean()),
        "generate_fp32_vs_truth_token_agreement": float((fp32_gen[:, 4:] == truth[:, 4:])
                                                        .float().mean()),
        "generate_int8_vs_truth_token_agreement": float((got[:, 4:] == truth[:, 4:]).float()
                                                        .mean()),
        "example_prompt": prompt[0].tolist(), "example_int8_generation": got[0].tolist(),
    }


# --- main ----------------------------------------------------------------------------------------


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unavailable"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    before = uptime()
    digits = digits_experiment(DigitsSettings(fp32_epochs=10, qat_epochs=2) if args.quick
                               else DigitsSettings())
    gpt2 = gpt2_experiment(GPT2Settings(pretrain_steps=60, steps=10) if args.quick
                           else GPT2Settings())
    after = uptime()
    print(tabulate([(r["method"], f"{r['test_accuracy']:.2f}%", f"{r['seconds']:.1f}")
                    for r in digits["rows"]], headers=("digits", "test accuracy", "seconds")))
    print()
    rows = [(k, f"{100 * v:.1f}%") for k, v in gpt2["next_token_accuracy"].items()]
    rows += [(k, v) for k, v in gpt2.items()
             if k not in ("settings", "qat_loss_curve", "next_token_accuracy")]
    print(tabulate(rows, headers=("GPT-2 (tiny), next-token accuracy / run", "")))
    path = write_json("bench_qat", {"uptime_before": before, "uptime_after": after,
                                    "digits": digits, "gpt2": gpt2})
    print(f"\nwrote {path}; uptime before: {before}; after: {after}")


if __name__ == "__main__":
    main()
