"""What this CPU can do, as far as int8 kernels care.

On x86 CPUs with AVX2 but no VNNI, int8 GEMMs (fbgemm's and ONNX Runtime's) add pairs of u8 x s8
products in 16 bits (``vpmaddubsw``) and can saturate. With AVX-512 VNNI fbgemm uses
``vpdpbusd``, which accumulates in 32 bits; ONNX Runtime also uses AVX-VNNI and AMX.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.cache
def flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def fbgemm_saturates() -> bool:
    """True where fbgemm's u8 x s8 GEMM runs its AVX2 kernel, which can saturate pair sums."""
    f = flags()
    return "avx2" in f and "avx512_vnni" not in f


def onnxruntime_saturates() -> bool:
    """True on x86 CPUs with AVX2 but no VNNI, where ONNX Runtime's u8 x s8 GEMM saturates."""
    f = flags()
    return "avx2" in f and not f & {"avx512_vnni", "avx_vnni", "amx_int8"}


# oneDNN ISA limits (ONEDNN_MAX_CPU_ISA) below which its int8 kernels have no VNNI.
_ONEDNN_ISAS_WITHOUT_VNNI = frozenset({"SSE41", "AVX", "AVX2", "AVX512_CORE"})


def onednn_saturates() -> bool:
    """True where oneDNN's u8 x s8 convolution uses ``vpmaddubsw``: no VNNI or AMX on this CPU,
    or oneDNN limited to such an ISA by its own ``ONEDNN_MAX_CPU_ISA`` variable."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    if limit.upper() in _ONEDNN_ISAS_WITHOUT_VNNI:
        return True
    f = flags()
    return "avx2" in f and not f & {"avx512_vnni", "avx_vnni", "amx_int8"}
