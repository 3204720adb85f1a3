"""The ``fxquant`` command line: quantize a Hugging Face model folder, inspect what fxquant wrote,
compare fp32 with int8. Errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .._version import __version__
from ..errors import FxQuantError

DESCRIPTION = "fxquant: int8 quantization of PyTorch models (torch.fx), Hugging Face LLMs first."
EPILOG = """\
examples:
  fxquant quantize ./gpt2 --out ./gpt2-int8               dynamic int8, saved with fxquant.save
  fxquant quantize ./gpt2 --out ./gpt2-int8 --mode static --calibration texts.txt --onnx
  fxquant inspect ./gpt2-int8                             layers, schemes, kernels, sizes
  fxquant inspect ./gpt2-int8/model.onnx                  what an ONNX file holds
  fxquant compare ./gpt2 ./gpt2-int8 --texts texts.txt    size, latency, error vs fp32

In Python: fxquant.load("./gpt2-int8") gives the quantized model back (docs/save_load.md).
"""


def _version() -> str:
    import torch

    return f"fxquant {__version__} (torch {torch.__version__})"


# Each command: its line in ``fxquant --help``, and what ``fxquant COMMAND --help`` says first.
_HELP = {
    "quantize": "quantize a local Hugging Face model folder and save it",
    "inspect": "show what a saved folder or an ONNX file holds",
    "compare": "compare fp32 with its saved int8 model (size, latency, error)",
}
_DESCRIPTION = {
    "quantize": "Load a Hugging Face model folder (save_pretrained layout, safetensors weights), "
                "quantize it to int8 and save it with fxquant.save into OUT_DIR (with the "
                "folder's tokenizer).",
    "inspect": "A folder written by fxquant.save: model, versions, sizes, every layer with its "
               "scheme and kernel. An .onnx file: inputs, outputs, opsets, int8 vs float bytes, "
               "quantization metadata.",
    "compare": "Run the float model of MODEL_DIR and the int8 model saved in QUANT_DIR on the "
               "same inputs: size, median latency, logits cosine and top-1 agreement.",
}


def _quantize_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="the float model's folder")
    p.add_argument("--out", type=Path, required=True, metavar="OUT_DIR",
                   help="where to save the quantized model (a new folder, or an earlier save)")
    p.add_argument("--mode", choices=("dynamic", "static", "weight_only"), default="dynamic",
                   help="int8 activations from each batch (dynamic, default), calibrated "
                        "(static: needs --calibration), or float activations (weight_only)")
    p.add_argument("--calibration", type=Path, metavar="TEXTS",
                   help="a text file, one calibration text per line (static mode)")
    p.add_argument("--max-length", type=int, default=128, metavar="N",
                   help="tokens per calibration text at most (default 128)")
    p.add_argument("--onnx", action="store_true",
                   help="also export OUT_DIR/model.onnx (opset 14, int8 initializers)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def _inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, metavar="PATH", help="a saved folder or an .onnx file")
    p.add_argument("--json", action="store_true", help="print the manifest / onnx_info as JSON")


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="the float model's folder")
    p.add_argument("quant_dir", type=Path, metavar="QUANT_DIR", help="its fxquant.save folder")
    p.add_argument("--texts", type=Path, metavar="FILE",
                   help="inputs, one text per line (default: random token ids)")
    p.add_argument("--batch", type=int, default=1, help="random inputs: batch size (default 1)")
    p.add_argument("--length", type=int, default=32,
                   help="random inputs: tokens; texts: at most this many (default 32)")
    p.add_argument("--rounds", type=int, default=20, help="timed runs per model (default 20)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


_ARGUMENTS = {"quantize": _quantize_arguments, "inspect": _inspect_arguments,
              "compare": _compare_arguments}


def parser() -> argparse.ArgumentParser:
    """The ``fxquant`` command's argument parser (its subcommands and options)."""
    p = argparse.ArgumentParser(prog="fxquant", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=_version())
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, add_arguments in _ARGUMENTS.items():
        add_arguments(commands.add_parser(name, help=_HELP[name], description=_DESCRIPTION[name]))
    return p


def _run(args: argparse.Namespace) -> int:
    if args.command == "quantize":
        from .quantize import quantize_command

        return quantize_command(args.model_dir, args.out, args.mode, args.calibration, args.onnx,
                                args.max_length, args.quiet)
    if args.command == "inspect":
        if args.path.is_dir():
            from .saved_tables import inspect_saved

            return inspect_saved(args.path, args.json)
        from .onnx_tables import inspect_onnx

        return inspect_onnx(str(args.path), args.json)
    from .compare import compare_command

    return compare_command(args.model_dir, args.quant_dir, args.texts, args.batch, args.length,
                           args.rounds, args.json)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``fxquant`` command: run the subcommand ``argv`` names; returns the exit status."""
    args = parser().parse_args(argv)
    try:
        return _run(args)
    except FxQuantError as exc:
        print(f"fxquant: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fxquant: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
