"""Scaling machinery: mixed precision, DDP, EMA, the non-finite-loss guard, compile/channels_last.

CPU-sized: tiny networks on scikit-learn's digits (16x16), a few optimizer steps each.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import MixedPrecision

from datamodules import DigitsDataModule
from lightning_gen.callbacks import Performance
from lightning_gen.models import (
    DCGAN,
    GAN,
    PGGAN,
    VAE,
    WGANGP,
    Autoencoder,
    BigGAN,
    PixelCNN,
    PixelRNN,
    StyleGAN2,
)
from lightning_gen.models.base import NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 16, 16)
TINY_GAN = {"image_shape": SHAPE, "latent_dim": 8, "g_width": 8, "d_width": 8}
# One line per model: the zoo's models join these tables as they land.
GANS = {
    "dcgan": lambda **kw: DCGAN(**TINY_GAN, **kw),
    "wgan_gp": lambda **kw: WGANGP(**TINY_GAN, n_critic=2, **kw),
    # Grows 4x4 -> 8x8 (a fade and its optimizer resets) within the 6 steps; the 16x16 blocks
    # stay unused (find_unused_parameters, GANBase.setup).
    "pggan": lambda **kw: PGGAN(image_shape=SHAPE, latent_dim=8, width=8, fade_images=16,
                                stabilize_images=8, **kw),
    # 6 steps = batch 0 (D, lazy R1, G, lazy path length) + batch 1 (D, G)
    "stylegan2": lambda **kw: StyleGAN2(image_shape=SHAPE, latent_dim=8, w_dim=8,
                                        mapping_layers=2, channel_base=64, channel_max=8, **kw),
    "biggan": lambda **kw: BigGAN(image_shape=SHAPE, latent_dim=12, g_width=2, d_width=2,
                                  attention_resolution=8, n_critic=2, num_fixed_samples=8, **kw),
}
OTHERS = {
    "vae": lambda: VAE(image_shape=SHAPE, latent_dim=4, width=8),
    "autoencoder": lambda: Autoencoder(image_shape=SHAPE, latent_dim=4, width=8),
    "pixelcnn": lambda: PixelCNN(image_shape=SHAPE, hidden=8, n_layers=2, num_fixed_samples=0),
    "pixelrnn": lambda: PixelRNN(image_shape=SHAPE, hidden=2, n_layers=1, num_fixed_samples=0),
}


def digits() -> DigitsDataModule:
    return DigitsDataModule(image_size=16, batch_size=8, val_fraction=0.0)


def tiny_trainer(**kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, max_steps=6, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False)
    return L.Trainer(**{**defaults, **kwargs})


def assert_finite(module: torch.nn.Module) -> None:
    for name, p in module.state_dict().items():
        if p.is_floating_point():
            assert torch.isfinite(p).all(), f"{name} is not finite"


# ----------------------------------------------------------------------------------------------
# DDP
@pytest.fixture(scope="module")
def ddp_fits(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Every GAN of GANS fitted with plain `strategy="ddp"` on 2 gloo processes, one after the
    other in one launch (tests/ddp_fit.py): the processes' start-up is paid once."""
    out = tmp_path_factory.mktemp("ddp")
    env = {k: v for k, v in os.environ.items()  # a fresh rendezvous: Lightning picks a port
           if k not in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK",
                        "NODE_RANK")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.ddp_fit", "--model", ",".join(sorted(GANS)),
         "--out", str(out), "--steps", "6"],
        cwd=out, env=env, capture_output=True, text=True, timeout=240,
    )
    return out, proc


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GANS))
def test_ddp_two_cpu_processes_keep_generators_identical(name, ddp_fits):
    """Plain `strategy="ddp"` on 2 gloo processes: exits 0, both ranks end with bit-identical
    generator parameters after the same number of steps, saw different data, logged the same
    (rank-averaged) losses."""
    out, proc = ddp_fits
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(out / name / f"rank{r}.pt") for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert (r0["d_steps"], r0["g_steps"]) == (r1["d_steps"], r1["g_steps"])
    assert r0["d_steps"] + r0["g_steps"] == 6
    assert r0["first_batch"] != r1["first_batch"], "the sampler did not shard the data"
    assert r0["logged"] == r1["logged"], "logged metrics were not reduced across ranks"
    params = [k for k in r0["final"] if "running_" not in k and "num_batches" not in k]
    for key in params:
        assert torch.equal(r0["final"][key], r1["final"][key]), f"{key} differs between ranks"
    assert any(not torch.equal(r0["final"][k], r0["initial"][k]) for k in params)


# ----------------------------------------------------------------------------------------------
# Mixed precision
@pytest.mark.parametrize("name", sorted(GANS) + sorted(OTHERS))
def test_bf16_mixed_on_cpu_fits_with_finite_losses(name):
    model = GANS[name]() if name in GANS else OTHERS[name]()
    net = model.discriminator if name in GANS else getattr(model, "encoder", None) or model.net
    dtypes = set()
    net.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))
    trainer = tiny_trainer(precision="bf16-mixed")
    trainer.fit(model, digits())
    assert torch.bfloat16 in dtypes, "autocast was not active"
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    losses = [v for k, v in logged.items() if k.endswith("loss")]
    assert losses and all(math.isfinite(v) for v in losses), logged
    assert_finite(model)
    if name in GANS:
        assert model.sample(3).dtype == torch.float32  # metrics read float32 images


def test_float16_gradscaler_path_with_gradient_penalty():
    """`16-mixed` with its GradScaler (the GPU path) run on CPU through the same plugin: WGAN-GP's
    penalty and both optimizers share one scaler; overflow steps are skipped, not fatal."""
    model = GANS["wgan_gp"]()
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer = tiny_trainer(plugins=[plugin])
    trainer.fit(model, digits())
    assert model.g_steps == 2
    assert all(math.isfinite(float(v)) for v in trainer.callback_metrics.values())
    assert_finite(model)


class _NormRecordingAdam(torch.optim.Adam):
    """Adam that records the gradient norm it steps with."""

    def step(self, closure=None):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return super().step(closure)


def test_grad_clip_acts_on_unscaled_gradients_under_float16():
    """grad_clip bounds the norm of the gradients Adam steps with, not of the 2**16-scaled ones
    (clipping those would shrink every update ~65536-fold)."""
    clip = 1e-3
    model = GANS["dcgan"](grad_clip=clip)
    norms: list[float] = []

    def make_optimizer(params, lr):
        optimizer = _NormRecordingAdam(params, lr=lr)
        optimizer.norms = norms
        return optimizer

    model._make_optimizer = make_optimizer
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    tiny_trainer(max_steps=6, plugins=[plugin]).fit(model, digits())
    assert norms, "no optimizer step was taken"
    assert all(0.5 * clip < n <= clip * (1 + 1e-3) for n in norms), norms


def test_input_gradients_unscale_the_gradscaler():
    """For a linear critic D(x) = <w, x>, grad_x D = w: under float16 autocast with a scale of
    2**10 the penalty gradients must come back unscaled (tolerance: float16 rounding)."""
    model = GANS["wgan_gp"]()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    model.trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler))
    w = torch.linspace(-1, 1, 12)
    x = torch.randn(5, 12, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.float16):
        out = torch.nn.functional.linear(x, w[None])  # (5, 1) float16
        grads = model.input_gradients(out, x)
    assert grads.dtype == torch.float32
    torch.testing.assert_close(grads, w.expand(5, 12), rtol=1e-3, atol=1e-3)


# ----------------------------------------------------------------------------------------------
# Non-finite losses
class NaNAfterThreeGSteps(DCGAN):
    """DCGAN whose generator loss turns NaN at its fourth generator step."""

    def generator_loss(self, fake, labels):
        terms = super().generator_loss(fake, labels)
        if self.g_steps >= 3:
            terms["loss"] = terms["loss"] * float("nan")
        return terms


def test_nan_loss_stops_with_clear_message_and_last_checkpoint_loads(tmp_path):
    L.seed_everything(0)
    model = NaNAfterThreeGSteps(**TINY_GAN)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, save_top_k=0,
                           every_n_train_steps=2)
    trainer = tiny_trainer(max_steps=20, enable_checkpointing=True, callbacks=[ckpt])
    # The 4th generator step is optimizer step 7 (D, G alternate); the next checkpoint (step 8)
    # finds it and is not written.
    with pytest.raises(NonFiniteLossError,
                       match=r"train/g_loss became non-finite at optimizer step 7") as err:
        trainer.fit(model, digits())
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert str(last) in str(err.value)
    # The advice fits the run: a 32-true run is not told to try 32-true.
    assert str(err.value).endswith("Try a lower learning rate or gradient clipping.")
    assert trainer.global_step == 8
    restored = DCGAN.load_from_checkpoint(last, map_location="cpu")
    assert_finite(restored)
    assert torch.load(last, weights_only=False)["gan_steps"] == {"d_steps": 3, "g_steps": 3}


def test_non_finite_record_finds_the_first_bad_step_and_the_longest_run():
    from lightning_gen.models.base import NonFiniteRecord

    record = NonFiniteRecord()
    pattern = [1, 1, 0, 1, 0, 0, 0, 1, 0, 0]  # 1 = finite; steps 0..9
    for step, finite in enumerate(pattern):
        record.add(step, torch.tensor(bool(finite)))
    assert (record.max_streak, record.first_step) == (0, -1)  # nothing read before fold()
    record.fold()
    assert (record.max_streak, record.first_step, record.streak) == (3, 2, 2)
    for step in (10, 11):  # the run of 2 goes on across folds: 4 in a row now
        record.add(step, torch.tensor(False))
    record.fold()
    assert (record.max_streak, record.first_step) == (4, 2) and record.pending == []


def test_non_finite_record_stays_bounded_when_nothing_reads_it():
    from lightning_gen.models.base import NonFiniteRecord

    record = NonFiniteRecord()
    for step in range(3 * record.fold_every + 5):
        record.add(step, torch.tensor(step != 2000))
    assert len(record.pending) == 5 and (record.max_streak, record.first_step) == (1, 2000)


@pytest.mark.parametrize("bad_in_a_row, amp, stops", [(1, False, True), (20, True, False),
                                                       (21, True, True)])
def test_float16_tolerates_up_to_20_skipped_steps_in_a_row(bad_in_a_row, amp, stops):
    """Without a GradScaler one non-finite loss stops the run; with one (16-mixed), isolated
    overflows are the scaler's business and only more than 20 in a row stop it."""
    model = DCGAN(**TINY_GAN)
    scaler = torch.amp.GradScaler("cpu") if amp else None
    model._trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler),
                                     global_step=5, world_size=1, checkpoint_callback=None)
    model._current_loss_name = "train/d_loss"
    for loss in [1.0] + [float("inf")] * bad_in_a_row + [1.0]:
        model.on_before_backward(torch.tensor(loss))
    if stops:
        with pytest.raises(NonFiniteLossError, match="train/d_loss became non-finite"):
            model.check_finite()
    else:
        model.check_finite()


def test_cli_prints_one_line_and_exits_1_on_nan(capsys):
    from lightning_gen.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model", "tests.test_scaling.NaNAfterThreeGSteps",
              "--model.latent_dim", "8", "--model.g_width", "8", "--model.d_width", "8",
              "--data", "datamodules.DigitsDataModule", "--data.image_size", "16",
              "--data.batch_size", "8", "--data.val_fraction", "0", "--trainer.max_steps", "20",
              "--trainer.logger", "false", "--trainer.accelerator", "cpu",
              "--trainer.enable_progress_bar", "false", "--checkpoint.every_n_train_steps", "2",
              "--images.every_n_epochs", "0"])
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("lightning-gen: training stopped: train/g_loss became non-finite")
    assert "last.ckpt" in lines[-1]


# ----------------------------------------------------------------------------------------------
# EMA
def test_ema_equals_analytic_running_average():
    """theta_ema_T = beta^T theta_0 + sum_t (1 - beta) beta^(T - t) theta_t, in float64."""
    beta = 0.9
    model = GANS["dcgan"](ema_decay=beta)
    params = list(model.generator.parameters())
    theta0 = [p.detach().double().clone() for p in params]
    gen = torch.Generator().manual_seed(0)
    sequence = [[torch.randn(p.shape, generator=gen) for p in params] for _ in range(7)]
    for values in sequence:
        with torch.no_grad():
            for p, v in zip(params, values, strict=True):
                p.copy_(v)
        model.update_ema()
    T = len(sequence)
    for i, ema in enumerate(model.generator_ema.parameters()):
        expected = beta**T * theta0[i] + sum(
            (1 - beta) * beta ** (T - t) * sequence[t - 1][i].double() for t in range(1, T + 1))
        torch.testing.assert_close(ema.double(), expected, rtol=1e-5, atol=1e-6)
    for b_ema, b in zip(model.generator_ema.buffers(), model.generator.buffers(), strict=True):
        assert torch.equal(b_ema, b)  # batch-norm statistics are copied, not averaged


def test_ema_is_used_for_samples_and_saved_in_checkpoints(tmp_path):
    model = GANS["dcgan"](ema_decay=0.5)
    trainer = tiny_trainer(max_steps=4)
    trainer.fit(model, digits())
    live, ema = model.generator.state_dict(), model.generator_ema.state_dict()
    assert any(not torch.equal(live[k], ema[k]) for k in live if "running" not in k)
    model.eval()
    z = model.fixed_noise[:4]
    torch.testing.assert_close(model.log_images()["samples"][:4],
                               model.generator_ema(z).clamp(-1, 1))
    trainer.save_checkpoint(tmp_path / "ema.ckpt")
    restored = DCGAN.load_from_checkpoint(tmp_path / "ema.ckpt", map_location="cpu")
    for k, v in restored.generator_ema.state_dict().items():
        assert torch.equal(v, ema[k])


def test_checkpoint_with_ema_loads_into_a_model_built_without_it():
    source = GANS["dcgan"](ema_decay=0.5)
    with torch.no_grad():
        for p in source.generator_ema.parameters():
            p.add_(1.0)
    target = GANS["dcgan"]()  # ema_decay 0: no average of its own
    checkpoint = {"state_dict": source.state_dict()}
    target.on_load_checkpoint(checkpoint)
    target.load_state_dict(checkpoint["state_dict"])
    for k, v in source.generator_ema.state_dict().items():
        assert torch.equal(target.generator_ema.state_dict()[k], v)


def test_ema_decay_out_of_range_is_a_clear_error():
    with pytest.raises(ValueError, match="ema_decay must be in"):
        GANS["dcgan"](ema_decay=1.0)


# ----------------------------------------------------------------------------------------------
# channels_last and torch.compile
def test_compile_and_channels_last_keep_checkpoint_keys(tmp_path):
    model = GANS["dcgan"]()
    keys = set(model.state_dict())
    perf = Performance(channels_last=True, compile=True, compile_backend="eager")
    trainer = tiny_trainer(max_steps=2, callbacks=[perf])
    trainer.fit(model, digits())
    assert perf.compiled == ["generator", "discriminator"]
    conv = model.discriminator.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    state = torch.load(tmp_path / "c.ckpt", weights_only=False)["state_dict"]
    assert set(state) == keys  # no "_orig_mod." prefixes
    assert_finite(DCGAN.load_from_checkpoint(tmp_path / "c.ckpt", map_location="cpu"))


@pytest.mark.parametrize("name, left", [("wgan_gp", ["discriminator"]),
                                         ("stylegan2", ["discriminator", "generator"])])
def test_compile_trains_the_gradient_penalty_models_leaving_twice_differentiated_nets(
        name, left, capsys):
    # aot_eager: what inductor does to autograd without its code generation. Compiling the
    # penalised network failed at the first critic step ("double backward" not supported).
    model = GANS[name]()
    perf = Performance(compile=True, compile_backend="aot_eager")
    tiny_trainer(max_steps=4, callbacks=[perf]).fit(model, digits())
    assert not set(perf.compiled) & set(left) and perf.compiled
    assert f"leaves {' and '.join(left)} of" in capsys.readouterr().err


class _MatmulPrecisionProbe(L.Callback):
    seen: list[str] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        _MatmulPrecisionProbe.seen.append(torch.get_float32_matmul_precision())


def test_float32_matmul_precision_holds_for_the_run_and_is_given_back():
    before = torch.get_float32_matmul_precision()
    _MatmulPrecisionProbe.seen = []
    perf = Performance(float32_matmul_precision="high")
    tiny_trainer(max_steps=2, callbacks=[perf, _MatmulPrecisionProbe()]).fit(
        GANS["dcgan"](), digits())
    assert _MatmulPrecisionProbe.seen == ["high"]  # one batch: a D and a G step
    assert torch.get_float32_matmul_precision() == before


class _DenormalProbe(L.Callback):
    """Whether a float32 denormal survives a multiplication during training."""

    def __init__(self) -> None:
        self.kept: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.kept.append(bool((torch.tensor([1e-40]) * 1.0).item() != 0.0))


@pytest.mark.parametrize("flush", [True, False])
def test_cpu_training_flushes_denormals_for_the_run_only(flush):
    """``flush_denormal`` (default on) treats denormals as zero while a CPU run trains and
    gives the process IEEE denormals back afterwards; off, they are kept throughout."""
    probe = _DenormalProbe()
    trainer = tiny_trainer(max_steps=2, callbacks=[probe, Performance(flush_denormal=flush)])
    trainer.fit(GANS["dcgan"](), digits())
    assert probe.kept and set(probe.kept) == {not flush}
    assert (torch.tensor([1e-40]) * 1.0).item() != 0.0  # after the run: IEEE again


@pytest.mark.parametrize("flush", [True, False])
def test_a_cpu_run_of_the_command_flushes_denormals_in_every_torch_thread(flush, tmp_path):
    # Each of torch's intra-op threads has its own floating-point control, copied from the
    # thread that starts it; the probe's multiplication is split among 2 threads. Building this
    # DCGAN starts the threads (the copy of G for the moving average), before the Trainer's
    # callbacks run: the flush has to come before the model is built.
    out = tmp_path / "probe.json"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "DENORMAL_PROBE_OUT": str(out),
           "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "lightning_gen", "fit", "--config",
         str(ROOT / "experiments/quickstart.yaml"), "--trainer.accelerator", "cpu",
         "--trainer.max_steps", "4", "--trainer.logger", "false",
         "--trainer.enable_progress_bar", "false", "--data.batch_size", "8",
         "--images.every_n_epochs", "0",
         "--model.init_args.ema_decay", "0.999",
         "--trainer.callbacks+=tests.denormal_probe.DenormalProbe",
         "--performance.flush_denormal", str(flush).lower()],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    probe = json.loads(out.read_text())
    assert probe["threads"] == 2 and len(probe["kept"]) == 2  # 2 batches (4 D+G steps)
    assert probe["kept"] == ([0.0, 0.0] if flush else [1.0, 1.0])


class _Recorder(L.Callback):
    """What ``trainer.callback_metrics`` holds after each batch, for a loss and a detail term."""

    def __init__(self, loss_key: str, detail_key: str) -> None:
        self.keys = loss_key, detail_key
        self.loss: list[float | None] = []
        self.detail: list[float | None] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for key, values in zip(self.keys, (self.loss, self.detail), strict=True):
            value = trainer.callback_metrics.get(key)
            values.append(None if value is None else float(value))


# A GAN (manual optimisation: one batch = one D and one G step) and a VAE (automatic: one batch
# = one step), each with a loss and a detail term; both trained for 7 batches.
LOGGING_MODELS = {
    "gan": (lambda: GAN(SHAPE, latent_dim=8, g_hidden=[16], d_hidden=[16], maxout_pieces=2),
            "train/d_loss", "train/d_real_prob", 14),
    "vae": (OTHERS["vae"], "train/loss", "train/kl", 7),
}


def _record(name: str, train_logging: str) -> _Recorder:
    """log_every_n_steps=2: Lightning writes logs after batches 2, 4, 6 (1-based); batch 7,
    the last, is not a writing step."""
    build, loss_key, detail_key, max_steps = LOGGING_MODELS[name]
    recorder = _Recorder(loss_key, detail_key)
    L.seed_everything(0)
    trainer = tiny_trainer(max_steps=max_steps, log_every_n_steps=2,
                           callbacks=[recorder, Performance(train_logging=train_logging)])
    trainer.fit(build(), digits())
    assert len(recorder.loss) == 7
    return recorder


@pytest.mark.parametrize("name", sorted(LOGGING_MODELS))
def test_train_logging_all_logs_every_term_every_step(name):
    every = _record(name, "all")
    assert len(set(every.loss)) == len(set(every.detail)) == 7 and None not in every.detail


@pytest.mark.parametrize("name", sorted(LOGGING_MODELS))
def test_train_logging_losses_logs_losses_every_step_and_details_when_written(name):
    """The default: a fresh loss after every batch (progress bar); the other terms at the
    steps Lightning writes (batches 2, 4, 6) and at the last step (batch 7), equal to what
    "all" logs there."""
    every, default = _record(name, "all"), _record(name, "losses")
    assert default.loss == every.loss
    d = default.detail
    assert d[0] is None and d[1] == d[2] and d[3] == d[4] and d[5] != d[6]
    assert [d[i] for i in (1, 3, 5, 6)] == [every.detail[i] for i in (1, 3, 5, 6)]


@pytest.mark.parametrize("name", sorted(LOGGING_MODELS))
def test_train_logging_written_logs_only_at_the_steps_lightning_writes(name):
    written, every = _record(name, "written"), _record(name, "all")
    s = written.loss
    assert s[0] is None and s[1] == s[2] and s[3] == s[4] and len({s[1], s[3], s[5]}) == 3
    assert every.loss[1::2] == s[1::2]  # same training, same values where both logged
