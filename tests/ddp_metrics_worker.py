"""Run by tests/test_metrics_ddp.py: the evaluation loop in 2 CPU processes (gloo).

    python tests/ddp_metrics_worker.py CLASSIFIER_CKPT CACHE_DIR OUT_JSON
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

NUM_SAMPLES, BATCH_SIZE = 80, 32  # 3 generated batches: rank 0 gets two, rank 1 one


def build():
    from datamodules import DigitsDataModule
    from lightning_gen.metrics import GenerativeEvaluator, build_extractor
    from tests.metrics_helpers import TemplateGenerator

    # Class-conditional, seeded noise: varied samples, so no metric is degenerate.
    model = TemplateGenerator(image_shape=(1, 32, 32), num_classes=10, noise=0.8)
    datamodule = DigitsDataModule(image_size=32)
    return model, datamodule, GenerativeEvaluator, build_extractor


def evaluate(ckpt: str, cache_dir: str) -> dict:
    model, datamodule, GenerativeEvaluator, build_extractor = build()
    evaluator = GenerativeEvaluator(build_extractor(f"classifier:{ckpt}"), batch_size=BATCH_SIZE,
                                    cache_dir=cache_dir, isc_splits=4, kid_subset_size=40,
                                    kid_subsets=20)
    return evaluator.evaluate(model, datamodule, "test", NUM_SAMPLES, seed=7, device="cpu")


def _worker(rank: int, world: int, port: int, ckpt: str, cache_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        metrics = evaluate(ckpt, cache_dir)
        metrics["world_size"] = dist.get_world_size()
        if rank == 0:
            with open(out, "w") as f:
                json.dump(metrics, f)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    ckpt_path, cache, out_path = sys.argv[1:4]
    port = 29500 + os.getpid() % 1000
    mp.spawn(_worker, args=(2, port, ckpt_path, cache, out_path), nprocs=2, join=True)
