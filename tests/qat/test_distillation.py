"""distillation_loss: KL with temperature (times T^2), optionally mixed with cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fxquant.errors import ConfigError, ExampleInputError
from fxquant.qat import distillation_loss


def _hand_kl(s, t, temp):
    p = F.softmax(t / temp, -1)
    return (p * (p.log() - F.log_softmax(s / temp, -1))).sum(-1).mean() * temp**2


def test_kl_matches_a_hand_computation_over_every_position():
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    got = distillation_loss(s, t, temperature=3.0)
    torch.testing.assert_close(got, _hand_kl(s.reshape(-1, 11), t.reshape(-1, 11), 3.0))
    assert distillation_loss(t, t).abs() < 1e-6


def test_labels_mix_in_cross_entropy_and_the_teacher_gets_no_gradient():
    s = torch.randn(6, 4, requires_grad=True)
    t = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, -100, 1])
    got = distillation_loss(s, t, 2.0, labels=labels, alpha=0.25)
    ce = F.cross_entropy(s, labels, ignore_index=-100)
    torch.testing.assert_close(got, 0.25 * _hand_kl(s, t, 2.0) + 0.75 * ce)
    got.backward()
    assert s.grad is not None and t.grad is None


def test_bad_arguments_name_the_remedy():
    s = torch.randn(2, 3)
    with pytest.raises(ConfigError, match="temperature"):
        distillation_loss(s, s, temperature=0)
    with pytest.raises(ConfigError, match="alpha"):
        distillation_loss(s, s, alpha=1.5)
    with pytest.raises(ExampleInputError, match="same batch"):
        distillation_loss(s, torch.randn(2, 4))
    with pytest.raises(ExampleInputError, match="shift"):
        distillation_loss(s, s, labels=torch.zeros(3, dtype=torch.long))
