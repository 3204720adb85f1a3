"""Knowledge distillation for QAT fine-tuning: the float model teaches its quantized copy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError, ExampleInputError


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 2.0,
    labels: torch.Tensor | None = None,
    alpha: float = 0.5,
    *,
    ignore_index: int = -100,
) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions, times ``temperature**2``
    (Hinton et al.: keeps the gradient's size independent of the temperature), averaged over
    every position (a token of a language model counts as one sample).

    With ``labels`` the result is ``alpha * KL + (1 - alpha) * cross_entropy(student, labels)``,
    positions labelled ``ignore_index`` left out of the cross-entropy. Logits are ``[..., V]`` and
    labels ``[...]``, aligned: for a causal LM pass ``logits[:, :-1]`` and ``labels[:, 1:]``. The
    teacher gets no gradient.
    """
    if temperature <= 0:
        raise ConfigError(f"temperature={temperature}: choose a positive temperature (1 to 4).")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha={alpha}: the weight of the KL term must lie in [0, 1].")
    if student_logits.shape != teacher_logits.shape:
        raise ExampleInputError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ: run both models on the same batch."
        )
    vocab = student_logits.shape[-1]
    student = F.log_softmax(student_logits.reshape(-1, vocab).float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.detach().reshape(-1, vocab).float() / temperature,
                            dim=-1)
    kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2
    if labels is None:
        return kl
    if labels.shape != student_logits.shape[:-1]:
        raise ExampleInputError(
            f"labels {tuple(labels.shape)} do not match the logits {tuple(student_logits.shape)} "
            "(one label per position; for a causal LM shift them: logits[:, :-1], labels[:, 1:])."
        )
    ce = F.cross_entropy(student_logits.reshape(-1, vocab).float(), labels.reshape(-1),
                         ignore_index=ignore_index)
    return alpha * kl + (1.0 - alpha) * ce
