"""Feature-extraction throughput: the suite's Inception-v3 path vs. torch-fidelity's own API.

    python benchmarks/metrics.py                      # CPU: 48 images, random weights if offline
    python benchmarks/metrics.py --num_images 4096 --batch_size 128 --weights_path W.pth  # GPU

Both sides extract the 2048-d pool features and the 1008 unbiased logits of the same uint8
images (32x32 RGB, resized to 299 inside the network) on the same device. The suite's side
starts from float images in [-1, 1] (what generators return) and includes the float -> uint8 step;
torch-fidelity's side is ``torch_fidelity.utils.get_featuresdict_from_dataset`` on a Dataset of
the uint8 images (on CPU with ``save_cpu_ram=True``: no DataLoader worker processes competing
for the cores). Throughput does not depend on the weights' values, so without ``--weights_path``
(and without network) a random-initialised Inception-v3 is used. Reported: images/s of each
side (best of ``--repeats`` timed passes after one warm-up pass) and their ratio (target >= 0.95).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from lightning_gen.metrics import InceptionExtractor, to_uint8, write_random_inception_weights


class _Uint8Images(Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=None, help="default: 48 CPU, 4096 GPU")
    parser.add_argument("--batch_size", type=int, default=None, help="default: 16 CPU, 128 GPU")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--weights_path", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    n = args.num_images or (4096 if cuda else 48)
    batch_size = args.batch_size or (128 if cuda else 16)

    # Without --weights_path: a random-initialised Inception-v3 (~95 MB) in a temporary folder,
    # removed at the end.
    scratch = tempfile.TemporaryDirectory(prefix="lightning-gen-metrics-")
    weights = args.weights_path
    if weights is None:
        weights = str(write_random_inception_weights(Path(scratch.name) / "inception.pth"))
        print("(no --weights_path: a random-initialised Inception-v3)")

    generator = torch.Generator().manual_seed(0)
    floats = torch.rand(n, 3, 32, 32, generator=generator) * 2 - 1  # generator-like output
    uint8 = to_uint8(floats)

    ours = InceptionExtractor(weights).to(device)

    def run_ours() -> torch.Tensor:
        out = []
        for batch in floats.split(batch_size):
            features, _ = ours(to_uint8(batch.to(device)))
            out.append(features.cpu())
        return torch.cat(out)

    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    theirs = create_feature_extractor("inception-v3-compat", ["2048", "logits_unbiased"],
                                      cuda=cuda, feature_extractor_weights_path=weights,
                                      verbose=False)
    dataset = _Uint8Images(uint8)

    def run_theirs() -> torch.Tensor:
        out = get_featuresdict_from_dataset(dataset, theirs, batch_size, cuda,
                                            save_cpu_ram=not cuda, verbose=False)
        return out["2048"]

    def timed(fn) -> tuple[float, torch.Tensor]:
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        return time.perf_counter() - start, result

    with torch.inference_mode():
        # Warm-up on one batch each (cuDNN autotuning, allocator).
        ours(uint8[:batch_size].to(device))
        theirs(uint8[:batch_size].to(device))
        t_ours, t_theirs = [], []
        for _ in range(args.repeats):  # interleaved, so load changes hit both sides alike
            t, f_ours = timed(run_ours)
            t_ours.append(t)
            t, f_theirs = timed(run_theirs)
            t_theirs.append(t)

    max_diff = (f_ours - f_theirs).abs().max().item()
    ips_ours, ips_theirs = n / min(t_ours), n / min(t_theirs)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; {n} images 32x32 -> 299x299, batch {batch_size}")
    print(f"suite (lightning_gen.metrics):  {ips_ours:9.2f} images/s")
    print(f"torch-fidelity (its API):       {ips_theirs:9.2f} images/s")
    print(f"ratio suite / torch-fidelity:   {ips_ours / ips_theirs:9.3f}  (target >= 0.95)")
    print(f"max |feature difference|:       {max_diff:9.2e}")
    scratch.cleanup()


if __name__ == "__main__":
    main()
