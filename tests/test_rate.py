"""train.target_rate: a feedback controller on the KL weight holds the KL at a target rate.

The controller (schedules.RateController) against hand-computed updates and a system whose KL falls as beta rises;
a tiny model trained with it ends at its target on validation; its state is checkpointed so resume stays bitwise;
targets the code cannot reach are refused; a high-rate code (64 x 256) with the learned prior saves, loads and
samples, and its size does not reach the decoder.
"""

import json
import math
import shutil

import pytest
import torch

from textdvae import TextDVAE, TextDVAEConfig
from textdvae import recipe as recipe_lib
from textdvae.recipe import RecipeError
from textdvae.schedules import RateController, beta_from_dual, dual_from_beta, rate_control_step
from textdvae.training import train

from test_faults import ROOT, TINY, training_log


def test_one_update_by_hand():
    # e = 0.9 * 0 + 0.1 * (12 - 10) / 10 = 0.02; u = 1 + 0.01 * 0.02, and above 1 beta = exp(u - 1)
    u, error = rate_control_step(1.0, 0.0, kl=12.0, target=10.0)
    assert error == pytest.approx(0.02) and u == pytest.approx(1.0002)
    assert beta_from_dual(u) == pytest.approx(math.exp(0.0002))
    # below 1 beta = u moves linearly: e = 0.9 * -0.2 + 0.1 * (8 - 10) / 10 = -0.2; u = 0.5 - 0.01 * 0.2
    u, error = rate_control_step(0.5, -0.2, kl=8.0, target=10.0)
    assert error == pytest.approx(-0.2) and beta_from_dual(u) == pytest.approx(0.498)
    # the range clips beta at both ends
    u, _ = rate_control_step(0.5, -5.0, kl=0.0, target=10.0, rate=100.0)
    assert beta_from_dual(u) == pytest.approx(1e-3)
    u, _ = rate_control_step(1.0, 5.0, kl=100.0, target=10.0, rate=100.0)
    assert beta_from_dual(u) == pytest.approx(100.0)
    for beta in (1e-3, 0.3, 1.0, 7.0):
        assert beta_from_dual(dual_from_beta(beta)) == pytest.approx(beta)


def test_a_weight_at_its_floor_comes_back_in_hundreds_of_steps():
    # what PTB at 15 nats needed: beta fell to the floor while the code grew, then the KL overshot by 10 %. The
    # log-space update (log beta += 0.01 e) needs ln(300) / 0.001 = 5,700 steps to get back to 0.3; the linear one
    # 0.3 / 0.001 = 300 once the error has settled at 0.1
    ctl = RateController(target=10.0)
    ctl.load_state_dict({"u": 1e-3})
    steps = 0
    while ctl.beta < 0.3:
        ctl.update(11.0)
        steps += 1
    assert 300 <= steps <= 330, steps


def test_a_checkpoint_of_the_log_space_controller_resumes_at_its_beta():
    ctl = RateController(target=10.0)
    ctl.load_state_dict({"target": 10.0, "log_beta": math.log(0.25), "error_ema": 0.01, "kl_ema": 9.0, "scale": 1.0})
    assert ctl.beta == pytest.approx(0.25) and ctl.kl_ema == 9.0
    ctl.load_state_dict({"log_beta": math.log(4.0)})
    assert ctl.beta == pytest.approx(4.0)
    with pytest.raises(ValueError, match="unknown rate controller state 'gain'"):
        ctl.load_state_dict({"gain": 1.0})


def test_controller_settles_a_system_whose_kl_falls_with_beta():
    ctl = RateController(target=10.0)
    kl = lambda beta: 20.0 / (1.0 + 4.0 * beta)  # noqa: E731 - 4 nats at beta = 1; 10 nats needs beta = 0.25
    for _ in range(3000):
        ctl.update(kl(ctl.beta))
    assert ctl.beta == pytest.approx(0.25, rel=0.02) and kl(ctl.beta) == pytest.approx(10.0, rel=0.01)


def test_calibration_aims_the_training_kl_where_validation_meets_the_target():
    ctl = RateController(target=10.0)
    for _ in range(400):
        ctl.update(12.0)
    ctl.calibrate(validation_kl=10.0)  # training 20 % off its set point: still moving, no calibration
    assert ctl.scale == 1.0
    for _ in range(400):
        ctl.update(10.8)
    ctl.calibrate(validation_kl=9.0)  # settled within 10 %, reading 20 % above validation
    assert ctl.scale == pytest.approx(ctl.kl_ema / 9.0, rel=1e-9) and 1.19 < ctl.scale < 1.21
    before = ctl.u
    ctl.error_ema = 0.0
    ctl.update(10.0 * ctl.scale)  # now exactly at the training set point: beta stays
    assert ctl.u == pytest.approx(before, abs=1e-6)
    state = ctl.state_dict()
    other = RateController(target=10.0)
    other.load_state_dict(json.loads(json.dumps(state)))
    assert other == ctl


RATE_RUN = [*TINY, "train.free_bits=0", "train.target_rate=2.5", "train.max_steps=1200", "train.eval_every=100",
            "train.save_every=400", "train.lr_schedule=constant", "train.log_every=10", "data.max_train_samples=2000", "data.max_eval_samples=200",
            "train.iw_samples=2"]


@pytest.fixture(scope="module")
def held_run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("rate")
    try:
        metrics = train(recipe_lib.load(ROOT / "recipes/quickstart.yaml", [f"output_dir={out}", *RATE_RUN]))
    finally:
        torch.set_num_threads(threads)
    return out, metrics


def test_a_tiny_model_is_held_at_its_target_rate(held_run):
    out, metrics = held_run
    log = training_log(out)
    kl = {r["step"]: r["kl"] for r in log if r.get("split") == "eval"}  # validation KL every 100 steps
    # 4 latents x 4 categories hold at most 5.5 nats. While beta is still near 1 the code collapses (no free bits);
    # the controller brings it back and holds it: after step 700 the validation KL averages the target
    assert kl[100] < 0.1, kl
    late = [v for step, v in kl.items() if step > 700]
    assert abs(sum(late) / len(late) - 2.5) <= 0.25 and all(abs(v - 2.5) <= 0.5 for v in late), kl
    assert abs(metrics["kl"] - 2.5) <= 0.25, metrics["kl"]  # the final model, on test


def test_resume_restores_the_controller(held_run, tmp_path):
    out, _ = held_run
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    for path in (copy / "checkpoints").glob("step-*"):  # go back to step 800
        if path.name != "step-0000800":
            shutil.rmtree(path)
    shutil.rmtree(copy / "final")
    assert (copy / "checkpoints" / "step-0000800").is_dir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(recipe_lib.load(ROOT / "recipes/quickstart.yaml",
                              [f"output_dir={copy}", *RATE_RUN, "train.resume=true"]))
    finally:
        torch.set_num_threads(threads)
    assert training_log(copy) == training_log(out)  # beta after step 800 included


@pytest.mark.parametrize("override,message", [
    (["model.num_latents=4", "model.num_categories=4", "train.target_rate=5.6"], "at most N log K = 5.55"),
    (["model.latent=none", "train.target_rate=5"], "model.latent=none has no code"),
    (["train.target_rate=-1"], "must be a positive number"),
    (["train.target_rate=.nan"], "must be a positive number"),
])
def test_unreachable_targets_are_refused(override, message):
    with pytest.raises(RecipeError, match=message):
        recipe_lib.load(ROOT / "recipes/quickstart.yaml", override)


def test_a_high_rate_code_with_the_learned_prior_saves_loads_and_samples(tmp_path):
    config = TextDVAEConfig(vocab_size=30, embed_dim=16, hidden_dim=32, num_latents=64, num_categories=256,
                            prior="autoregressive")
    torch.manual_seed(0)
    model = TextDVAE(config)
    with torch.no_grad():  # leave the uniform start, so that the round trip is tested on a real conditional
        model.bottleneck.code_prior.out_weight.normal_(0, 0.5)
    model.save_pretrained(tmp_path)
    loaded = TextDVAE.from_pretrained(tmp_path).eval()
    codes = loaded.bottleneck.sample_prior(8, generator=torch.Generator().manual_seed(1))  # (8, 64)
    assert codes.shape == (8, 64) and 0 <= int(codes.min()) and int(codes.max()) < 256
    one_hot = torch.nn.functional.one_hot(codes, 256).float()
    assert torch.equal(loaded.bottleneck.log_prior(one_hot), model.eval().bottleneck.log_prior(one_hot))
    assert (loaded.bottleneck.log_prior(one_hot) > -64 * math.log(256) - 200).all()
    # it trains: one step reaches the encoder, the code table and the prior
    model.train()
    ids = torch.randint(4, 30, (3, 6))
    out = model(ids, torch.ones_like(ids), beta=0.5)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.kl.shape == (3,)
    for p in (model.to_posterior.weight, model.bottleneck.code_embed, model.bottleneck.code_prior.out_weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # the code's size stops at its embedding table: the decoder is the same for K = 2 and K = 256
    small = TextDVAE(TextDVAEConfig(**{**config.to_diff_dict(), "num_categories": 2}))
    size = lambda m: sum(p.numel() for p in m.decoder.parameters())  # noqa: E731
    assert size(small) == size(model)
