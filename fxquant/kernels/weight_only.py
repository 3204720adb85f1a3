"""Weight-only linear kernels: float32 activations times int8 or int4 weights, on CPU.

``linear_int8`` and ``linear_int4`` run fxquant's C++ kernels (``csrc/``, AVX2 + FMA, ops
``torch.ops.fxquant_cpu.linear_int8_wo`` / ``linear_int4_wo``) and never build a float copy of the
whole weight: at decode (few rows of x) codes are widened in registers as they stream past, at
prefill the weight is dequantized a tile at a time for BLAS (docs/weight_only_kernel.md).

The extension is compiled once per source version and torch version into a cache directory
(``$FXQUANT_BUILD_DIR`` or ``~/.cache/fxquant``; ``scripts/setup.sh`` runs :func:`main`, also
``python -m fxquant.kernels.weight_only``, so tests and first calls don't pay the ~20 s compile),
then loaded on first use. Where it cannot be built or loaded (no compiler, no ninja, no AVX2/FMA,
a compile error) or ``FXQUANT_NO_EXTENSION=1`` is set, both functions fall back to plain PyTorch
(dequantize a block of rows, ``F.linear``) with the same results, and one log line on the
``fxquant`` logger says why and what it costs.

Layouts (see also :mod:`fxquant.kernels.packing`):

* int8: ``codes`` int8 ``[N, K]`` row-major, ``scale`` float32 ``[N]``, zero-point 0:
  ``y = x @ (codes * scale[:, None]).T + bias``.
* int4: ``packed`` uint8 ``[N, K // 2]`` (even k in the low nibble), ``scale`` float32 ``[N, G]``,
  ``zero_point`` uint8 ``[N, G]``, ``G = K // group_size``, ``group_size`` a multiple of 32:
  ``w[n, k] = (q[n, k] - zero_point[n, k // group_size]) * scale[n, k // group_size]``.

``x`` is float32 with any leading dimensions and last dimension K; ``bias`` float32 ``[N]`` or
None; the result is float32 ``[..., N]``. Every tensor must be contiguous and on the CPU.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import cpu
from .packing import dequantize_groupwise, unblock_int8, unpack_int4

_LOG = logging.getLogger("fxquant")
_CSRC = Path(__file__).parent / "csrc"
_NAME = "fxquant_weight_only"
# AVX2 + FMA only, so one build runs on the project's AMD Zen 3 target and on newer Intel parts;
# -fopenmp makes at::parallel_for parallel (the pragma is ignored without it).
_CFLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp")
_LDFLAGS = ("-fopenmp",)
_REQUIRED_CPU_FLAGS = frozenset({"avx2", "fma"})
# Measured at batch 1 on 768x3072, 1 thread (docs/weight_only_kernel.md).
_FALLBACK_COST = (
    "the PyTorch fallback (dequantize blocks of rows + F.linear): at batch 1 about 8x (int8) and "
    "50x (int4) slower than the C++ kernels, 3x and 20x slower than fp32"
)
# Float rows per block in the fallback: ~4 MB of float weight at a time, never the whole weight.
_FALLBACK_BLOCK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class ExtensionStatus:
    """Whether the compiled kernels are in use and, if not, why (``detail``)."""

    loaded: bool
    detail: str


# --- building and loading ------------------------------------------------------------------


def _source_hash() -> str:
    digest = hashlib.sha256(" ".join((*_CFLAGS, *_LDFLAGS)).encode())
    for path in sorted(_CSRC.iterdir()):
        if path.suffix in {".cpp", ".h"}:
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def build_dir() -> Path:
    """Where the extension is built: one directory per torch version and source hash."""
    base = os.environ.get("FXQUANT_BUILD_DIR") or str(Path.home() / ".cache" / "fxquant")
    return Path(base) / f"torch-{torch.__version__}" / f"weight_only-{_source_hash()}"


def _library_name() -> str:
    # One name per source version: torch.utils.cpp_extension renames a rebuilt extension
    # ("_v1") when one process compiles two versions under the same name.
    return f"{_NAME}_{_source_hash()}"


def _library_path(directory: Path) -> Path:
    return directory / f"{_library_name()}.so"


def _cpu_problem() -> str | None:
    """Why this CPU cannot run the kernels (they are compiled for AVX2 + FMA), or None."""
    missing = _REQUIRED_CPU_FLAGS - cpu.flags()
    if missing:
        return f"this CPU lacks {', '.join(sorted(missing))} (or /proc/cpuinfo is unreadable)"
    return None


def _toolchain_problem() -> str | None:
    """Why the extension cannot be compiled here, or None."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler!r} not on PATH)"
    try:
        import ninja

        ninja_bin: str | None = ninja.BIN_DIR
    except ImportError:
        ninja_bin = None
    if ninja_bin is not None and ninja_bin not in os.environ.get("PATH", "").split(os.pathsep):
        # torch.utils.cpp_extension runs `ninja` from PATH; the pip package's binary is not there
        # when the venv is not activated.
        os.environ["PATH"] = ninja_bin + os.pathsep + os.environ.get("PATH", "")
    if shutil.which("ninja") is None:
        return "ninja is not installed (pip install ninja, or fxquant[fast])"
    return None


def _compile(directory: Path, verbose: bool) -> None:
    from torch.utils import cpp_extension  # slow to import: only when compiling

    directory.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name=_library_name(),
        sources=[str(p) for p in sorted(_CSRC.glob("*.cpp"))],
        extra_cflags=list(_CFLAGS),
        extra_ldflags=list(_LDFLAGS),
        build_directory=str(directory),
        is_python_module=False,
        verbose=verbose,
    )
    # Written last: a library without this stamp may be half-written by a concurrent build.
    (directory / "complete").write_text(torch.__version__)


@functools.cache
def _load_library(library: Path) -> None:
    """Load the ops and register their shape-only (fake) kernels, once per process, so
    torch.export and torch.compile can trace them."""
    torch.ops.load_library(str(library))

    def fake(x: torch.Tensor, weight: torch.Tensor, *args: object) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    torch.library.register_fake("fxquant_cpu::linear_int8_wo")(fake)
    torch.library.register_fake("fxquant_cpu::linear_int4_wo")(fake)

    def fake_blocked(x: torch.Tensor, blocked: torch.Tensor, scale: torch.Tensor,
                     *args: object) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], scale.shape[0]))

    torch.library.register_fake("fxquant_cpu::linear_int8_wo_blocked")(fake_blocked)
    torch.library.register_fake("fxquant_cpu::linear_int8_dynamic")(fake_blocked)


def _diagnostic(error: BaseException) -> str:
    """The compiler's first ``error:`` line (what a reader needs), else the error's last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    diagnostics = [line for line in lines if "error:" in line]
    return (diagnostics or lines[-1:] or [type(error).__name__])[0][:300]


def _load(verbose: bool) -> ExtensionStatus:
    problem = _cpu_problem()
    if problem is not None:
        return ExtensionStatus(False, problem)
    directory = build_dir()
    library = _library_path(directory)
    if not (library.exists() and (directory / "complete").exists()):
        problem = _toolchain_problem()
        if problem is not None:
            return ExtensionStatus(False, problem)
        _LOG.info("fxquant: compiling the weight-only C++ kernels into %s (once)", directory)
        try:
            _compile(directory, verbose)
        except Exception as error:  # a compile error must not take fxquant down: fall back
            detail = f"compiling {_CSRC} failed: {_diagnostic(error)}"
            return ExtensionStatus(False, detail)
    try:
        _load_library(library)
    except (OSError, RuntimeError) as error:  # e.g. built against another torch, or corrupt
        return ExtensionStatus(False, f"loading {library} failed: {_diagnostic(error)}")
    return ExtensionStatus(True, f"loaded {library}")


@functools.cache
def status() -> ExtensionStatus:
    """Load the extension once per process (building it if needed) and log the outcome once."""
    if os.environ.get("FXQUANT_NO_EXTENSION") == "1":
        result = ExtensionStatus(False, "disabled by FXQUANT_NO_EXTENSION=1")
        _LOG.info("fxquant weight-only C++ kernels %s; using %s", result.detail, _FALLBACK_COST)
        return result
    result = _load(verbose=False)
    if result.loaded:
        _LOG.debug("fxquant weight-only C++ kernels %s", result.detail)
        isa = os.environ.get("FXQUANT_KERNEL_ISA")
        if isa:  # e.g. "avx2" on an AVX-512 machine: run (and test) what an AVX2 CPU runs
            torch.ops.fxquant_cpu.kernel_isa(isa)
    else:
        _LOG.warning(
            "fxquant weight-only C++ kernels unavailable (%s); using %s",
            result.detail, _FALLBACK_COST,
        )
    return result


def available() -> bool:
    """True when the compiled kernels are loaded (the first call may compile them)."""
    return status().loaded


def build(verbose: bool = False) -> ExtensionStatus:
    """Compile (if needed) and load the extension now, e.g. at setup time.

    Unlike :func:`status`, this ignores ``FXQUANT_NO_EXTENSION``.
    """
    return _load(verbose)


def tile_min_rows(bits: int, rows: int = -1) -> int:
    """Rows of x from which the ``bits``-bit op (4 or 8) uses the tiled-BLAS path.

    With ``rows >= 0`` sets it (for benchmarks and tests) and returns the previous value.
    """
    status()  # loads the extension on first use
    return int(torch.ops.fxquant_cpu.tile_min_rows(bits, rows))


def kernel_isa(isa: str = "") -> str:
    """The instruction set fxquant's int8 kernels run on: ``"avx512"`` where the CPU has it
    (avx512f/bw/vl/dq), else ``"avx2"`` (``FXQUANT_KERNEL_ISA=avx2`` at load chooses AVX2 on any
    CPU); ``"none"`` where the extension is not loaded. With ``isa`` set ("avx2" / "avx512")
    switches (for parity tests and benchmarks) and returns the previous choice. ``pack_weights``
    picks the layouts from it.
    """
    if not available():  # loads the extension on first use; without it no kernel runs
        return "none"
    return str(torch.ops.fxquant_cpu.kernel_isa(isa))


# --- the public kernels --------------------------------------------------------------------


def _use_extension(x: torch.Tensor) -> bool:
    # The C++ ops have no autograd formula: inputs that need a gradient take the PyTorch path.
    needs_grad = x.requires_grad and torch.is_grad_enabled()
    return x.dtype == torch.float32 and x.device.type == "cpu" and not needs_grad and available()


def linear_int8(
    x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ (codes * scale[:, None]).T + bias`` with int8 ``codes [N, K]`` (see module doc)."""
    if _use_extension(x):
        return torch.ops.fxquant_cpu.linear_int8_wo(x, codes, scale, bias)
    return linear_int8_reference(x, codes, scale, bias)


def linear_int8_blocked(
    x: torch.Tensor, blocked: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`linear_int8` on the panel layout of :func:`~fxquant.kernels.packing.block_int8`
    (``blocked [ceil(N / 16), K, 16]``, N = ``scale.shape[0]``): output channels in vector lanes,
    so the kernel needs no horizontal sums and runs BLAS-style from four rows of x."""
    if _use_extension(x):
        return torch.ops.fxquant_cpu.linear_int8_wo_blocked(x, blocked, scale, bias)
    return linear_int8_reference(x, unblock_int8(blocked, scale.shape[0]), scale, bias)


def linear_int4(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor,
                zero_point: torch.Tensor, group_size: int,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ w.T + bias`` with a packed group-wise 4-bit ``w`` (see module doc)."""
    if _use_extension(x):
        return torch.ops.fxquant_cpu.linear_int4_wo(x, packed, scale, zero_point, group_size, bias)
    return linear_int4_reference(x, packed, scale, zero_point, group_size, bias)


# --- the PyTorch fallback ------------------------------------------------------------------


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_bias(bias: torch.Tensor | None, n: int) -> None:
    if bias is not None:
        _check(bias.shape == (n,), f"bias must be [{n}], got {tuple(bias.shape)}")


def _blocked_linear(x: torch.Tensor, n: int, k: int, bias: torch.Tensor | None,
                    block: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """Output columns [n0, n1) from ``block(n0, n1)`` for blocks of weight rows, concatenated;
    at most ``_FALLBACK_BLOCK_ELEMENTS`` weight elements exist in float at a time."""
    _check(x.shape[-1] == k, f"x must end in K={k}, got {tuple(x.shape)}")
    _check_bias(bias, n)
    rows = max(1, _FALLBACK_BLOCK_ELEMENTS // max(k, 1))
    parts = [block(n0, min(n, n0 + rows)) for n0 in range(0, n, rows)]
    y = torch.cat(parts, dim=-1) if parts else x.new_zeros((*x.shape[:-1], 0))
    return y if bias is None else y + bias.to(y.dtype)


def linear_int8_reference(
    x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """PyTorch version of :func:`linear_int8` (the fallback, and the kernel's specification)."""
    _check(codes.dtype == torch.int8 and codes.dim() == 2, "codes must be int8 [N, K]")
    n, k = codes.shape
    _check(scale.shape == (n,) and scale.dtype == torch.float32, f"scale must be float32 [{n}]")

    def block(n0: int, n1: int) -> torch.Tensor:
        # x @ (codes * scale).T == (x @ codes.T) * scale: the per-channel scale goes on the
        # output columns, which costs M * N multiplies instead of N * K (measured ~6x faster at
        # batch 1 than scaling the weight, a broadcast that PyTorch runs slowly).
        return F.linear(x, codes[n0:n1].to(x.dtype)) * scale[n0:n1].to(x.dtype)

    return _blocked_linear(x, n, k, bias, block)


def linear_int4_reference(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor,
                          zero_point: torch.Tensor, group_size: int,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """PyTorch version of :func:`linear_int4` (the fallback, and the kernel's specification)."""
    _check(packed.dtype == torch.uint8 and packed.dim() == 2, "packed must be uint8 [N, K / 2]")
    _check(group_size > 0 and group_size % 32 == 0, f"group_size={group_size}: a multiple of 32")
    n, k = packed.shape[0], packed.shape[1] * 2
    _check(k % group_size == 0, f"K={k} must be a multiple of group_size={group_size}")
    _check(scale.dtype == torch.float32, "scale must be float32")
    _check(zero_point.dtype == torch.uint8, "zero_point must be uint8")

    def block(n0: int, n1: int) -> torch.Tensor:
        codes = unpack_int4(packed[n0:n1])
        w = dequantize_groupwise(codes, scale[n0:n1], zero_point[n0:n1], group_size)
        return F.linear(x, w.to(x.dtype))

    return _blocked_linear(x, n, k, bias, block)


def main(argv: list[str] | None = None) -> int:
    """``python -m fxquant.kernels.weight_only [-v]``: build the extension now (setup time)."""
    argv = sys.argv[1:] if argv is None else argv
    result = build(verbose="-v" in argv)
    state = "ready" if result.loaded else "NOT available, the PyTorch fallback will be used"
    print(f"fxquant weight-only kernels: {state} ({result.detail})")
    return 0  # a missing compiler is not a setup failure: the fallback works everywhere


if __name__ == "__main__":
    # Run the package's copy of this module, so the library is loaded under one module only.
    from fxquant.kernels import weight_only

    raise SystemExit(weight_only.main())
