"""Checks of the installed torch that matter to the suite, for a GPU session (1-2 minutes).

Each check prints one line and one ``JSON {...}`` line. On the CPU it runs too (the CUDA-only
parts say so), which is how it was written and tried; the answers that matter come from a GPU
machine (torch 2.11 there, 2.14 here):

1. ``tf32_api``: whether Lightning's start-up check of the float32 matmul precision (called on
   Ampere-or-later GPUs) still works after each way of asking for TF32. torch 2.14 raises in
   ``torch.get_float32_matmul_precision()`` once its newer ``fp32_precision`` flags were set;
   ``--performance.float32_matmul_precision`` uses the legacy setter for that reason.
2. ``double_backward``: whether ``torch.compile`` (``aot_eager``, ``inductor``) of a
   discriminator raises on a gradient penalty's double backward (expected: it raises; the suite
   leaves such networks uncompiled, ``GANBase.twice_differentiated``) or silently computes
   other gradients than eager mode (a torch bug to report).
3. ``spectral_norm_amp``: a spectral-norm discriminator's input gradient under autocast and a
   GradScaler, against float32 (relative error).
4. ``seeded_draws``: hashes of seeded draws the suite relies on (a DataModule's seeded split,
   a model's fixed noise, initialisation, shuffling). If they differ between the two machines'
   torch versions, runs of "the same seed" there are not the same runs.

    python benchmarks/gpu_torch_checks.py            # all checks
    python benchmarks/gpu_torch_checks.py --checks 1,4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from torch.utils.data import RandomSampler, random_split


def report(check: str, text: str, **fields) -> None:
    print(f"{check}: {text}", flush=True)
    print("JSON " + json.dumps({"check": check, **fields}), flush=True)


def _child(code: str) -> str:
    """The last line a fresh interpreter prints for ``code`` (settings are per process)."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = (result.stdout.strip() or result.stderr.strip()).splitlines()
    return lines[-1][:200] if lines else ""


def check_tf32_api(device: str) -> None:
    if device != "cuda":
        report("tf32_api", "skipped (no CUDA device)", skipped=True)
        return
    lightning_check = ("from lightning.fabric.accelerators.cuda import "
                       "_check_cuda_matmul_precision as c; c(torch.device('cuda', 0)); print('OK')")
    for setting in ("torch.set_float32_matmul_precision('high')",
                    "torch.backends.cuda.matmul.fp32_precision = 'tf32'",
                    "torch.backends.fp32_precision = 'tf32'"):
        outcome = _child(f"import torch; {setting}; {lightning_check}")
        report("tf32_api", f"{setting} -> {outcome}", setting=setting, outcome=outcome)


def _discriminator(device: str, sn: bool = False) -> nn.Module:
    wrap = spectral_norm if sn else (lambda m: m)
    return nn.Sequential(wrap(nn.Conv2d(3, 8, 3, 2, 1)), nn.LeakyReLU(0.2), nn.Flatten(),
                         wrap(nn.Linear(128, 1))).to(device)


def _penalty_grads(d: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """D's parameter gradients of a WGAN-GP penalty at ``x`` (a double backward)."""
    d.zero_grad(set_to_none=True)
    (g,) = torch.autograd.grad(d(x).sum(), x, create_graph=True)
    ((g.flatten(1).norm(dim=1) - 1) ** 2).mean().backward()
    return torch.cat([p.grad.flatten() for p in d.parameters() if p.grad is not None])


def check_double_backward(device: str) -> None:
    for backend in ("aot_eager", "inductor"):
        torch.manual_seed(0)
        d = _discriminator(device)
        x = torch.randn(4, 3, 8, 8, device=device, requires_grad=True)
        reference = _penalty_grads(d, x)
        d.compile(backend=backend)
        try:
            same = bool(torch.allclose(reference, _penalty_grads(d, x), atol=1e-5))
            report("double_backward", f"{backend}: no error; same gradients as eager: {same}",
                   backend=backend, raised=False, same=same)
        except RuntimeError as err:
            report("double_backward", f"{backend}: raises ({str(err).splitlines()[0][:90]})",
                   backend=backend, raised=True)


def check_spectral_norm_amp(device: str) -> None:
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    torch.manual_seed(0)
    d = _discriminator(device, sn=True)
    x = torch.randn(4, 3, 8, 8, device=device, requires_grad=True)
    try:
        with torch.autocast(device, dtype=dtype):
            d(x)  # one power iteration in training mode
        d.eval()
        scaler = torch.amp.GradScaler(device)
        with torch.autocast(device, dtype=dtype):
            (g,) = torch.autograd.grad(scaler.scale(d(x).float().sum()), x, create_graph=True)
        g = g.float() / scaler.get_scale() if scaler.is_enabled() else g.float()
        (g32,) = torch.autograd.grad(d(x).sum(), x)
        error = float(((g - g32).norm() / g32.norm()).detach())
        report("spectral_norm_amp", f"{dtype}: relative error {error:.2e}", dtype=str(dtype),
               relative_error=error)
    except Exception as err:  # noqa: BLE001 (the answer is that it fails)
        report("spectral_norm_amp", f"raises {type(err).__name__}: {str(err)[:150]}",
               raised=True)


def check_seeded_draws() -> None:
    def digest(t: torch.Tensor) -> str:
        return hashlib.sha1(t.contiguous().numpy().tobytes()).hexdigest()[:8]

    def gen(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    torch.manual_seed(0)
    init = torch.cat([p.detach().flatten() for p in
                      nn.Sequential(nn.Conv2d(3, 16, 4), nn.Linear(16, 8)).parameters()])
    torch.manual_seed(0)
    order = torch.tensor(list(RandomSampler(range(1000))))
    hashes = {
        "randperm": digest(torch.randperm(1797, generator=gen(1234))),
        "random_split": digest(torch.tensor(random_split(range(50000), [45000, 5000],
                                                         generator=gen(42))[1].indices)),
        "fixed_noise": digest(torch.randn(64, 128, generator=gen(0))),
        "init": digest(init),
        "shuffle": digest(order),
    }
    report("seeded_draws", " ".join(f"{k}={v}" for k, v in hashes.items()), **hashes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", default="1,2,3,4", help="comma-separated check numbers")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"torch {torch.__version__} on {device}"
          + (f" ({torch.cuda.get_device_name(0)})" if device == "cuda" else ""), flush=True)
    checks = {"1": lambda: check_tf32_api(device), "2": lambda: check_double_backward(device),
              "3": lambda: check_spectral_norm_amp(device), "4": check_seeded_draws}
    for number in args.checks.split(","):
        checks[number.strip()]()


if __name__ == "__main__":
    main()
