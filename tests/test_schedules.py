"""Hand-computed values of textdvae.schedules."""

from __future__ import annotations

import math

import pytest
import torch

from textdvae.schedules import free_bits, kl_weight, temperature


def test_constant_schedule_ignores_the_step() -> None:
    assert [kl_weight(step, "constant", beta_max=0.3, warmup_steps=10) for step in (0, 5, 1000)] == [0.3] * 3


def test_linear_schedule_ramps_then_holds() -> None:
    values = [kl_weight(step, "linear", beta_max=0.8, warmup_steps=100) for step in (0, 25, 50, 100, 500)]
    assert values == pytest.approx([0.0, 0.2, 0.4, 0.8, 0.8])
    assert kl_weight(0, "linear", beta_max=0.8, warmup_steps=0) == 0.8


def test_sigmoid_schedule_is_a_logistic_ramp_centred_mid_warmup() -> None:
    def beta(step: int) -> float:
        return kl_weight(step, "sigmoid", beta_max=2.0, warmup_steps=100)

    assert beta(50) == pytest.approx(1.0)
    assert beta(0) == pytest.approx(2.0 / (1.0 + math.exp(5.0)))
    assert beta(100) == pytest.approx(2.0 / (1.0 + math.exp(-5.0)))
    assert beta(25) == pytest.approx(2.0 / (1.0 + math.exp(2.5)))
    assert beta(0) < beta(25) < beta(50) < beta(100) < beta(10_000) <= 2.0
    assert kl_weight(0, "sigmoid", beta_max=2.0, warmup_steps=0) == 2.0


def test_cyclical_schedule_resets_each_cycle_and_holds_after_the_ratio() -> None:
    # total 1000, 4 cycles -> length 250; ratio 0.5 -> rises over the first 125 steps of each cycle.
    def beta(step: int) -> float:
        return kl_weight(step, "cyclical", beta_max=1.5, total_steps=1000, num_cycles=4, ratio=0.5)

    steps = (0, 25, 62, 125, 200, 249, 250, 300, 500, 875, 999)
    expected = (0.0, 0.3, 0.744, 1.5, 1.5, 1.5, 0.0, 0.6, 0.0, 1.5, 1.5)
    assert [beta(step) for step in steps] == pytest.approx(expected)


def test_cyclical_schedule_needs_total_steps() -> None:
    with pytest.raises(ValueError, match="total_steps"):
        kl_weight(0, "cyclical")


def test_unknown_schedule_names_itself_and_the_allowed_values() -> None:
    with pytest.raises(ValueError) as error:
        kl_weight(0, "cosine")
    message = str(error.value)
    assert "cosine" in message
    assert all(name in message for name in ("constant", "linear", "sigmoid", "cyclical"))


def test_temperature_decays_exponentially_to_its_floor() -> None:
    assert temperature(0, tau_start=2.0, tau_min=0.5, decay=0.01) == 2.0
    assert temperature(100, tau_start=2.0, tau_min=0.5, decay=0.01) == pytest.approx(2.0 * math.exp(-1.0))
    assert temperature(10_000, tau_start=2.0, tau_min=0.5, decay=0.01) == 0.5
    assert temperature(10_000, tau_start=2.0, tau_min=0.5) == 2.0


def test_free_bits_value_and_gradient() -> None:
    kl = torch.tensor([0.1, 0.5, 2.0], requires_grad=True)
    total = free_bits(kl, lam=0.25)
    torch.testing.assert_close(total, torch.tensor(0.25 + 0.5 + 2.0))
    total.backward()
    # Under the floor the latent gets no gradient; above it the KL counts one-for-one.
    torch.testing.assert_close(kl.grad, torch.tensor([0.0, 1.0, 1.0]))


def test_free_bits_without_a_floor_is_the_plain_sum() -> None:
    kl = torch.tensor([0.1, 0.5, 2.0])
    torch.testing.assert_close(free_bits(kl, lam=0.0), kl.sum())
