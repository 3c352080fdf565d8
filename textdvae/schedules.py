"""The KL weight and the temperature over training: schedules as pure functions of the optimisation step (KL
annealing, temperature decay, free bits), and `RateController`, the one KL weight that is feedback rather than a
function of the step (it holds the KL at a target rate)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

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


def beta_from_dual(u: float) -> float:
    """The KL weight for the controller's dual variable u: beta = u for u <= 1, exp(u - 1) above (C1 at u = 1).

    Below 1 the weight moves linearly, as the Lagrange multiplier of a minimum-rate constraint does (the weight on
    the KL is 1 - lambda; Pelsmaeker & Aziz 2020, https://arxiv.org/abs/1904.08194), so a weight that fell to 0.001
    while the code was still growing comes back to 0.3 in a few hundred steps. Above 1 it moves multiplicatively, as
    GECO's does (Rezende & Viola 2018, https://arxiv.org/abs/1810.00597), so holding a rich code down by 100x takes
    ln(100) / rate, not 100 / rate.
    """
    return u if u <= 1.0 else math.exp(u - 1.0)


def dual_from_beta(beta: float) -> float:
    """The inverse of `beta_from_dual` (beta > 0)."""
    return beta if beta <= 1.0 else 1.0 + math.log(beta)


def rate_control_step(u: float, error_ema: float, kl: float, target: float, *, rate: float = 0.01,
                      smoothing: float = 0.9, beta_range: tuple[float, float] = (1e-3, 1e2)) -> tuple[float, float]:
    """One update of the KL weight that holds the KL at `target` nats: (dual u, error EMA) -> the same, next step.

    The constraint KL = target enters a Lagrangian rec + beta * (KL - target), and beta = `beta_from_dual`(u)
    follows dual ascent on the smoothed relative constraint:
        e_t = smoothing * e_{t-1} + (1 - smoothing) * (KL_t - target) / target,   u_t = u_{t-1} + rate * e_t.
    A KL above target raises beta (the code costs more), one below lowers it, so the KL settles at the target, as
    ControlVAE's feedback on beta does (Shao et al. 2020, https://arxiv.org/abs/2004.05988). beta stays in
    `beta_range` (by default [0.001, 100]) so a transient cannot drive it to a value it needs thousands of steps
    to come back from.

    Why u and not log beta (GECO's own update, which this package used first): on PTB at 15 nats the weight fell to
    0.002 while the code grew, and the log-space update then took 4,500 steps to bring it back to 0.2, so most of
    training optimised reconstruction with a KL almost free (benchmarks/RESULTS.md, Rate).
    """
    error_ema = smoothing * error_ema + (1.0 - smoothing) * (kl - target) / target
    lo, hi = (dual_from_beta(b) for b in beta_range)
    return min(hi, max(lo, u + rate * error_ema)), error_ema


@dataclass
class RateController:
    """The KL weight beta that holds validation KL at `target` nats per sentence (``train.target_rate``).

    Each training step feeds the global batch's mean KL to `rate_control_step`. The training KL is measured with
    dropout on, so it can sit apart from the validation KL that the target is about: after each validation pass at
    which the controller has settled (smoothed error and recent training KL within 10 % of the set point),
    `calibrate` moves the set point to
    target * (recent training KL / validation KL), clipped to [0.5, 2] * target. The state is plain floats,
    checkpointed with the run so a resumed run continues bitwise.
    """

    target: float
    u: float = 1.0  # the dual variable: beta starts at 1, the ELBO
    error_ema: float = 0.0
    kl_ema: float | None = None  # recent training-batch KL
    scale: float = 1.0  # training-batch set point / target

    @property
    def beta(self) -> float:
        return beta_from_dual(self.u)

    def update(self, kl: float) -> float:
        """One training step's batch-mean KL (nats) -> the beta for the next step."""
        self.kl_ema = kl if self.kl_ema is None else 0.98 * self.kl_ema + 0.02 * kl
        self.u, self.error_ema = rate_control_step(self.u, self.error_ema, kl, self.target * self.scale)
        return self.beta

    def calibrate(self, validation_kl: float) -> None:
        """Aim the training-batch KL where the validation KL lands on the target."""
        set_point = self.target * self.scale
        # only a settled controller says how training and validation KL relate: during a transient the recent
        # training KL lags the validation pass taken at this step
        settled = abs(self.error_ema) <= 0.1 and self.kl_ema is not None and abs(self.kl_ema - set_point) <= 0.1 * set_point
        if settled and validation_kl > 0:
            self.scale = min(2.0, max(0.5, self.kl_ema / validation_kl))

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        if "log_beta" in state:  # a checkpoint from the log-space controller: the same beta, as u
            state["u"] = dual_from_beta(math.exp(state.pop("log_beta")))
        for key, value in state.items():
            if key not in self.__dataclass_fields__:
                raise ValueError(f"unknown rate controller state {key!r} in the checkpoint")
            setattr(self, key, value)
