"""The seed document's demo, on real data: ``python -m fxquant.demo [--out models]``.

1. Train the document's MLP (784 -> 512 -> 10) in fp32 on scikit-learn's bundled handwritten
   digits (1,797 8x8 images, upsampled to 28x28 so the model has the document's shape).
2. Fake quantization: fine-tune a fake-quantized copy (quantization-aware training).
3. Real int8: convert the fine-tuned copy (``convert_to_real_quant``; fbgemm int8 kernels).
4. PTQ: quantize the fp32 model statically from 10 calibration batches (``PTQPipeline``).
5. Export the real int8 model to ONNX (opset 14) and check it in ONNX Runtime.
6. Compare all of them (``QuantizationComparison``): size, latency, throughput, peak memory,
   test accuracy, error; print the table and write ``comparison_report.json``.

Why 28x28 and not the raw 64 pixels: int8 storage also keeps, per output channel, a float32
scale, an int32 zero-point and the float32 bias (12 bytes). A layer with 64 inputs shrinks at
most 4 * 65 / (64 + 12) = 3.4x; with 784 inputs, 3.94x.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .export import ONNXExporter
from .fake_quant import apply_fake_quant_to_model
from .ptq import PTQPipeline
from .quantization_comparison import QuantizationComparison
from .real_quant import convert_to_real_quant

IMAGE_SIZE = 28


def load_digits_data(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's digits as 28x28 images in [0, 1], flattened; 75% train, 25% test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(
        images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False
    ).flatten(1)
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        range(len(labels)), test_size=0.25, random_state=seed, stratify=digits.target
    )
    return (
        TensorDataset(images[train_idx], labels[train_idx]),
        TensorDataset(images[test_idx], labels[test_idx]),
    )


def build_model() -> nn.Sequential:
    """The document's MLP."""
    return nn.Sequential(nn.Linear(IMAGE_SIZE * IMAGE_SIZE, 512), nn.ReLU(), nn.Linear(512, 10))


def train(model: nn.Module, loader: DataLoader, epochs: int, lr: float) -> float:
    """Ordinary PyTorch training (Adam, cross-entropy); returns the last epoch's mean loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    mean = float("nan")
    for _ in range(epochs):
        total, count = 0.0, 0
        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item() * len(y), count + len(y)
        mean = total / count
    model.eval()
    return mean


def _step(title: str) -> float:
    print(f"\n== {title}")
    return time.perf_counter()


def _done(start: float, message: str) -> None:
    print(f"   {message} ({time.perf_counter() - start:.1f} s)")


def run(
    out: Path,
    *,
    epochs: int = 8,
    qat_epochs: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    timing_rounds: int = 20,
) -> dict:
    """Run the whole demo; returns the comparison results."""
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    train_set, test_set = load_digits_data(seed)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=batch_size)
    calibration_loader = DataLoader(train_set, batch_size=batch_size)

    t = _step(
        f"1. Train fp32 MLP 784-512-10 on digits ({len(train_set)} train / "
        f"{len(test_set)} test images, {epochs} epochs)"
    )
    model = build_model()
    loss = train(model, train_loader, epochs, lr=1e-3)
    _done(t, f"final training loss {loss:.4f}")

    t = _step(f"2. Fake quantization: fine-tune an int8-simulating copy ({qat_epochs} epochs)")
    fake_quant_model = apply_fake_quant_to_model(model, bits=8)
    loss = train(fake_quant_model, train_loader, qat_epochs, lr=1e-4)
    _done(t, f"final training loss {loss:.4f}")

    t = _step("3. Real int8: convert the fine-tuned copy")
    real_quant_model = convert_to_real_quant(fake_quant_model, bits=8)
    _done(
        t,
        "int8 weights: "
        + ", ".join(
            f"{k} {tuple(v.shape)}"
            for k, v in real_quant_model.state_dict().items()
            if v.dtype == torch.int8
        ),
    )

    t = _step("4. PTQ: static int8 from the fp32 model, 10 calibration batches")
    pipeline = PTQPipeline(model, bits=8)
    pipeline.calibrate(calibration_loader, num_batches=10)
    ptq_model = pipeline.convert_to_real_quant()
    original_size, quantized_size = pipeline.get_model_size()
    _done(
        t,
        f"{original_size:,} B -> {quantized_size:,} B "
        f"({original_size / quantized_size:.2f}x smaller)",
    )

    t = _step("5. ONNX export of the real int8 model (opset 14)")
    onnx_path = out / "qat_demo_model.onnx"
    exporter = ONNXExporter(real_quant_model, model_name="qat_demo_model")
    exporter.export(onnx_path, input_shape=(1, IMAGE_SIZE * IMAGE_SIZE))
    check = exporter.validate_export(onnx_path, inputs=next(iter(test_loader))[0])
    info = exporter.get_onnx_model_info(onnx_path)
    _done(
        t,
        f"{onnx_path}: opset {info['opset']}, {info['parameters']:,} parameters, "
        f"{info['file_size_bytes']:,} B\n   ONNX Runtime check "
        f"{'passed' if check['passed'] else 'FAILED'}: max |diff| {check['max_abs_diff']:.1e} "
        f"vs the function the file encodes, {check['max_abs_diff_vs_model']:.1e} vs the "
        f"PyTorch int8 model (largest output {check['max_abs_output']:.1f})",
    )

    t = _step(f"6. Comparison on the test set (batch {batch_size})")
    comparison = QuantizationComparison(model)
    comparison.setup_models(
        fake_quant_model, real_quant_model, extra_models={"PTQ Int8 (static)": ptq_model}
    )
    results = comparison.compare(
        test_loader, device="cpu", metric="accuracy", timing_rounds=timing_rounds
    )
    report = comparison.save_comparison_report(out / "comparison_report.json")
    _done(t, f"report: {report}")
    print()
    comparison.print_comparison()
    print(
        "  Error is the output MSE against the fp32 model on the test set. For Fake Quant and\n"
        "  Real Int8 it includes the fine-tuning (their weights moved on purpose); PTQ's is the\n"
        "  quantization error alone."
    )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo from the command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m fxquant.demo",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", type=Path, default=Path("models"), help="output folder (default: models/)"
    )
    parser.add_argument("--epochs", type=int, default=8, help="fp32 training epochs")
    parser.add_argument("--qat-epochs", type=int, default=1, help="fake-quant fine-tune epochs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-rounds", type=int, default=20)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice, one per core)",
    )
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = run(
        args.out,
        epochs=args.epochs,
        qat_epochs=args.qat_epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        timing_rounds=args.timing_rounds,
    )
    if args.json:
        print(json.dumps(results, indent=2))
    print(f"\ndone in {time.perf_counter() - start:.1f} s; files in {args.out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
