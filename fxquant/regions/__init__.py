"""Region-wise quantization of models that cannot be captured whole (see ``compile``)."""
