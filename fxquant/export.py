"""ONNX export with the seed document's interface: ``ONNXExporter``, a thin layer over
``fxquant.export_onnx`` and ``fxquant.onnx_info``.

    exporter = ONNXExporter(quantized_model, model_name="my_model")
    exporter.export("models/my_model.onnx", input_shape=(1, 784))
    exporter.validate_export("models/my_model.onnx", input_shape=(32, 784))
    info = exporter.get_onnx_model_info("models/my_model.onnx")   # parameters, inputs, outputs...

What gets exported:
  * a model fxquant converted (``fxquant.quantize``, ``PTQPipeline``) -- as it is;
  * a model with ``RealQuantizeLinear`` or ``FakeQuantizeLinear`` layers -- as the fxquant
    GraphModule of its float equivalent quantized with the layers' own scheme, which holds the
    very same int8 codes (``real_quant.to_float_model``; tested). A fake-quant model is thus
    exported as the int8 model it simulates. Layers that were float stay float;
  * any other model -- as float32 (``export_onnx`` warns).

Files are standard ``ai.onnx`` at opset 14 by default with a dynamic batch dimension.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import api
from .capture import as_input_tuple
from .errors import ExportError
from .measure import eval_mode
from .onnx_export import ExportResult, export_onnx, onnx_info, ort_session, validate_onnx
from .real_quant import quant_config_of, to_float_model


def _max_diff(runtime: Any, model: nn.Module, inputs: tuple[Any, ...], names: list[str]) -> float:
    """max|ONNX Runtime - the PyTorch model as it runs| on ``inputs``."""
    got = runtime.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})
    with torch.no_grad():
        want = model(*inputs)
    wants = [want] if isinstance(want, torch.Tensor) else list(want)
    return max(float((torch.from_numpy(g) - w).abs().max()) for g, w in zip(got, wants,
                                                                              strict=False))


class ONNXExporter:
    """Export ``model`` to ONNX (see the module docstring for what is exported).

    Args:
        model: a quantized (or float) model; not changed.
        model_name: stored in the file's metadata (``model_name``).
        opset: the ``ai.onnx`` opset, 14 by default.
    """

    def __init__(self, model: nn.Module, model_name: str = "model", *, opset: int = 14) -> None:
        self.model = model
        self.model_name = model_name
        self.opset = opset
        self.exported_model: nn.Module | None = None
        self.result: ExportResult | None = None

    def exportable_model(self, example_inputs: Any) -> nn.Module:
        """The module ``export_onnx`` receives: the model, or for seed-toolkit layers the fxquant
        GraphModule with the same int8 codes."""
        config = quant_config_of(self.model)
        if config is None:
            return self.model
        return api.quantize(to_float_model(self.model), example_inputs, config=config)

    def export(
        self,
        path: str | os.PathLike[str],
        input_shape: tuple[int, ...] = (1, 784),
        optimize_model: bool = True,
        add_quantization_info: bool = True,
        *,
        example_inputs: Any = None,
        dynamic_batch: bool = True,
        validate: bool = False,
    ) -> ExportResult:
        """Write the ONNX file (folders are created) and return fxquant's ExportResult.

        Args:
            input_shape: shape of a random example input, used when ``example_inputs`` is not
                given. With ``dynamic_batch`` the file accepts any batch size.
            optimize_model: kept for the document's signature. fxquant always writes the
                optimized graph: constant-folded, with the int8 patterns ONNX Runtime fuses into
                integer kernels. (ONNX Runtime's offline optimizer is not applied: its output
                imports runtime-specific domains and is tied to one runtime version.)
            add_quantization_info: keep the quantization metadata (``fxquant.*``
                metadata_props, ``quantization_annotation``) and add ``model_name``; False
                writes a file without them.
            validate: check the file in ONNX Runtime against the function it encodes (fxquant's
                tight check; ExportError when out of bounds).
        """
        inputs = (
            as_input_tuple(example_inputs)
            if example_inputs is not None
            else (torch.randn(*input_shape),)
        )
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.exported_model = self.exportable_model(inputs)
        metadata = {"model_name": self.model_name}
        if add_quantization_info:
            metadata["fxquant.exporter"] = "ONNXExporter"
        self.result = export_onnx(
            self.exported_model,
            target,
            inputs,
            opset=self.opset,
            dynamic_batch=dynamic_batch,
            validate=validate,
            metadata=metadata,
            quantization_info=add_quantization_info,
        )
        return self.result

    def _exported(self, path: str | os.PathLike[str]) -> ExportResult | None:
        """What :meth:`export` returned, if it wrote the file at ``path``."""
        if self.result is not None and Path(path).resolve() == self.result.path.resolve():
            return self.result
        return None

    def validate_export(
        self,
        path: str | os.PathLike[str],
        input_shape: tuple[int, ...] | None = None,
        *,
        inputs: Any = None,
    ) -> dict[str, Any]:
        """Run the file in ONNX Runtime on ``inputs`` (or a random batch of ``input_shape``, by
        default the file's input shape with batch 1) and on half that batch (dynamic batch),
        and compare with the PyTorch model.

        The check is fxquant's own (``fxquant.onnx_export.validate_onnx``): the file must match
        the function it encodes -- the exported model with 8-bit activation codes, run with the
        reference kernels -- within the bounds for the mode. A file :meth:`export` just wrote is
        not read back: its names and mode come from the export's result.
        ``max_abs_diff_vs_model`` is the difference from the PyTorch model as it runs (with
        ``reduce_range``, as the seed layers' 8-bit weights use, 7-bit activation codes), for
        information.

        Returns ``passed``, ``mode``, ``max_abs_diff`` (file vs the encoded function),
        ``max_abs_diff_vs_model``, ``max_abs_output``, ``input_shape``, ``output_shape``,
        ``batch_sizes``, ``checks`` (fxquant's per-output checks, as dicts) and, when it
        failed, ``error``.
        """
        if inputs is None:
            inputs = (torch.randn(*(input_shape or self._file_input_shape(path))),)
        inputs = as_input_tuple(inputs)
        model = (
            self.exported_model
            if self.exported_model is not None
            else self.exportable_model(inputs)
        )
        exported = self._exported(path)
        if exported is not None:
            mode, names_in = exported.mode, list(exported.input_names)
        else:
            file = onnx_info(path)
            mode = file["metadata"].get("fxquant.mode", "float")
            names_in = [i["name"] for i in file["inputs"]]
        half = tuple(t[: max(1, len(t) // 2)] for t in inputs)
        result: dict[str, Any] = {
            "passed": True,
            "mode": mode,
            "input_shape": tuple(inputs[0].shape),
            "batch_sizes": sorted({len(inputs[0]), len(half[0])}),
        }
        with eval_mode(model):
            try:
                report = validate_onnx(path, model, inputs, more_inputs=[half], exported=exported)
            except ExportError as exc:
                return {**result, "passed": False, "error": str(exc)}
            runtime = ort_session(path)
            vs_model = max(_max_diff(runtime, model, batch, names_in) for batch in (inputs, half))
            with torch.no_grad():
                output = model(*inputs)
        result.update(
            output_shape=tuple(output.shape),
            max_abs_output=float(output.abs().max()),
            max_abs_diff=max(c.max_abs_diff for c in report.outputs),
            max_abs_diff_vs_model=vs_model,
            checks=[dataclasses.asdict(c) for c in report.outputs],
        )
        return result

    @staticmethod
    def _file_input_shape(path: str | os.PathLike[str]) -> tuple[int, ...]:
        dims = onnx_info(path)["inputs"][0]["shape"]
        return tuple(d if isinstance(d, int) and d > 0 else 1 for d in dims)

    def get_onnx_model_info(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """``fxquant.onnx_info(path)`` plus the document's keys: ``parameters`` (initializer
        elements), ``inputs`` / ``outputs`` (name, dtype, shape), ``opset`` (the ai.onnx
        version), ``opsets`` (all), ``file_size_bytes`` and ``model_name``."""
        info = dict(onnx_info(path))
        info["opsets"] = info["opset"]
        info["opset"] = info["opsets"].get("ai.onnx")
        info["file_size_bytes"] = info["size_bytes"]
        info["model_name"] = info["metadata"].get("model_name")
        return info
