"""Training schedules as pure functions of the optimisation step: KL weight, temperature, free bits."""

from __future__ import annotations

import math

import torch
from torch import Tensor

KL_SCHEDULES = ("constant", "linear", "sigmoid", "cyclical")


def _linear_ramp(step: int, warmup_steps: int) -> float:
    """min(1, step / warmup_steps), 1 without warm-up (Bowman et al. 2016, https://arxiv.org/abs/1511.06349)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, step / warmup_steps)


def _logistic_ramp(step: int, warmup_steps: int) -> float:
    """Logistic ramp centred at warmup_steps / 2, ~0.0067 at step 0 and ~0.9933 at warmup_steps.

    Bowman et al. 2016 (https://arxiv.org/abs/1511.06349); 1 without warm-up.
    """
    if warmup_steps <= 0:
        return 1.0
    # The slope 10 / warmup_steps makes the ramp span +-5 logits over the warm-up.
    return 1.0 / (1.0 + math.exp(-(step - warmup_steps / 2) * 10 / warmup_steps))


def _cyclical_ramp(step: int, total_steps: int, num_cycles: int, ratio: float) -> float:
    """min(1, p / ratio) at position p in [0, 1) of the current cycle of length total_steps / num_cycles.

    Cyclical annealing of Fu et al. 2019 (https://arxiv.org/abs/1903.10145).
    """
    cycle_length = total_steps / num_cycles
    position = (step % cycle_length) / cycle_length
    return min(1.0, position / ratio)


def kl_weight(
    step: int,
    schedule: str,
    beta_max: float = 1.0,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    num_cycles: int = 4,
    ratio: float = 0.5,
) -> float:
    """Weight beta on the KL term at `step` for a schedule in KL_SCHEDULES.

    constant: beta_max. linear / sigmoid: KL annealing of Bowman et al. 2016
    (https://arxiv.org/abs/1511.06349) over warmup_steps. cyclical: Fu et al. 2019
    (https://arxiv.org/abs/1903.10145), num_cycles ramps over total_steps, each rising for `ratio` of its cycle.
    """
    if schedule == "constant":
        return beta_max
    if schedule == "linear":
        return beta_max * _linear_ramp(step, warmup_steps)
    if schedule == "sigmoid":
        return beta_max * _logistic_ramp(step, warmup_steps)
    if schedule == "cyclical":
        if total_steps is None:
            raise ValueError("the 'cyclical' KL schedule needs total_steps")
        return beta_max * _cyclical_ramp(step, total_steps, num_cycles, ratio)
    raise ValueError(f"unknown KL schedule {schedule!r}; expected one of {', '.join(KL_SCHEDULES)}")


def temperature(step: int, tau_start: float = 1.0, tau_min: float = 0.5, decay: float = 0.0) -> float:
    """Gumbel-softmax temperature max(tau_min, tau_start * exp(-decay * step)).

    The exponential anneal to a floor of Jang et al. 2017 (https://arxiv.org/abs/1611.01144).
    """
    return max(tau_min, tau_start * math.exp(-decay * step))


def free_bits(kl_per_latent: Tensor, lam: float) -> Tensor:
    """Free-bits KL sum_i max(kl_i, lam), kl_per_latent (N,) (each latent's batch-mean KL) -> scalar.

    Kingma et al. 2016 (https://arxiv.org/abs/1606.04934). A latent whose KL is under the floor lam
    (nats) gets no gradient, so the encoder is not pushed to collapse it onto the prior.
    """
    return torch.clamp(kl_per_latent, min=lam).sum()
