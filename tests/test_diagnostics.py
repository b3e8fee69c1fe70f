"""Mechanism-health diagnostics on hand-built cases: a collapsed code, a perfect discriminator, a known probe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hrlf.diagnostics import (
    JSD_NO_INFORMATION,
    EpochMeter,
    across_sample_std,
    discriminator_accuracy,
    gradient_norm,
    linear_probe,
)


def test_a_collapsed_code_has_std_zero_and_a_spread_one_its_std():
    assert across_sample_std(torch.ones(16, 4) * 3.0) == 0.0
    x = torch.tensor([[-1.0, -2.0], [1.0, 2.0]])  # per-dimension population std 1 and 2
    assert across_sample_std(x) == pytest.approx(1.5)


def test_std_keeps_only_the_weighted_rows():
    x = torch.tensor([[5.0], [-1.0], [1.0]])
    assert across_sample_std(x, torch.tensor([False, True, True])) == pytest.approx(1.0)
    assert across_sample_std(x, torch.tensor([True, False, False])) == 0.0  # one row: no spread to measure


def test_discriminator_accuracy_of_a_perfect_a_wrong_and_a_blind_discriminator():
    real, fake = torch.full((8, 1), 5.0), torch.full((8, 1), -5.0)
    assert discriminator_accuracy(real, fake) == (1.0, 1.0)
    assert discriminator_accuracy(fake, real) == (0.0, 0.0)
    half = torch.tensor([[1.0], [-1.0]])
    assert discriminator_accuracy(half, half) == (0.5, 0.5)


def test_no_information_value_of_the_jsd_bound():
    zero = torch.zeros(())
    assert pytest.approx(float(-torch.nn.functional.softplus(zero) * 2)) == JSD_NO_INFORMATION
    assert pytest.approx(-2 * math.log(2)) == JSD_NO_INFORMATION


def test_regression_probe_finds_a_linear_label_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = 2.0 * x[:, 0] - x[:, 3]
    assert linear_probe(x, y, kind="regression") > 0.99
    assert linear_probe(rng.normal(size=(200, 5)), y, kind="regression") < 0.1


def test_emotion_probe_is_balanced_accuracy_per_emotion():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    labels = np.stack([(x[:, 0] > 0.8).astype(int), (x[:, 1] > 0).astype(int)], axis=1)  # one rare emotion
    assert linear_probe(x, labels, kind="emotions") > 0.9
    noise = linear_probe(rng.normal(size=(300, 4)), labels, kind="emotions")
    assert 0.35 < noise < 0.65


def test_probe_refuses_too_few_samples():
    with pytest.raises(ValueError, match="at least 10"):
        linear_probe(np.zeros((6, 2)), np.zeros(6), kind="regression")


def test_epoch_meter_averages_and_restarts():
    meter = EpochMeter()
    meter.update({"a": 1.0, "b": 4.0})
    meter.add("a", 3.0)
    assert meter.means() == {"a": 2.0, "b": 4.0}
    assert meter.means() == {}


def test_gradient_norm_of_a_known_function_and_of_an_unrelated_one():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    other = torch.nn.Parameter(torch.tensor([1.0]))
    assert gradient_norm((w**2).sum() / 2, [w]) == pytest.approx(5.0)  # d/dw = w, |w| = 5
    assert gradient_norm((other * 2).sum(), [w]) == 0.0
    assert gradient_norm(torch.tensor(1.0), [w]) == 0.0
