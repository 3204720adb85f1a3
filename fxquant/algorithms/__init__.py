"""Weight-quantization algorithms that need calibration data, as plain tensor math.

The passes (``fxquant/passes/smooth_quant.py``, ``awq.py``, ``gptq.py``) find the layers and edit
the graph; the modules here only compute, so each can be tested on a single matrix:

    schemes.py     the weight grid a layer is quantized to (per-channel, per-tensor, per-group)
    groupwise.py   group-wise codes, scales and zero-points; two 4-bit codes per byte
    statistics.py  the observer that records what calibration shows of a linear's input
    smoothing.py   SmoothQuant's migration scales
    awq.py         AWQ's activation-aware scale search
    gptq.py        GPTQ: column-by-column quantization with Hessian error compensation
"""
