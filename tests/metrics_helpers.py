"""Small builders shared by the metrics tests: checkpoints without training, tiny generators."""

from __future__ import annotations

from pathlib import Path

import lightning
import torch

from lightning_gen.models import Classifier, GenerativeModel


def save_module_checkpoint(model: lightning.LightningModule, path: str | Path,
                           datamodule=None) -> Path:
    """Write ``model`` as a Lightning checkpoint, the keys ``lightning-gen fit`` writes (class
    paths included), without running a Trainer."""
    hparams = {"_class_path": f"{type(model).__module__}.{type(model).__name__}",
               **dict(model.hparams)}
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": hparams,
            "pytorch-lightning_version": lightning.__version__, "epoch": 0, "global_step": 0}
    if datamodule is not None:
        ckpt["datamodule_hyper_parameters"] = {
            "_class_path": f"{type(datamodule).__module__}.{type(datamodule).__name__}",
            **dict(datamodule.hparams)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def classifier_checkpoint(path: str | Path, image_shape=(1, 32, 32), seed: int = 0) -> Path:
    """An untrained (seeded) evaluator classifier: a valid, cheap feature extractor.

    He-normal weights keep the activations' scale through the layers (with PyTorch's default
    init the features of different images are near-identical and every metric degenerate), and a
    wide head makes the class probabilities differ between images (an informative IS)."""
    torch.manual_seed(seed)
    model = Classifier(image_shape=image_shape, width=8, feature_dim=16)
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.nn.init.normal_(model.net.head.weight, 0.0, 1.0)
    return save_module_checkpoint(model, path)


class TemplateGenerator(GenerativeModel):
    """A 'generator' with a known output: class templates plus seeded noise. Conditional when
    ``num_classes > 0`` (the template of class ``y`` is a bright bar at row ``3 * y``)."""

    def __init__(self, image_shape: tuple[int, int, int] = (1, 32, 32), num_classes: int = 0,
                 noise: float = 0.3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.register_buffer("dummy", torch.zeros(1))

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        c, h, w = self.hparams.image_shape
        x = -1 + self.hparams.noise * torch.randn(n, c, h, w, device=self.device).abs()
        if labels is not None:
            for i, y in enumerate(labels.tolist()):
                x[i, :, 3 * y:3 * y + 3, :] = 1.0
        return x.clamp(-1, 1)
