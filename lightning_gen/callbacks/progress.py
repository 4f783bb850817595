"""The progress bar of the suite's runs: Lightning's TQDM bar without a host sync or a redraw per
step."""

from __future__ import annotations

import math
import time

from lightning.pytorch.callbacks import TQDMProgressBar


class ProgressBar(TQDMProgressBar):
    """Lightning's :class:`~lightning.pytorch.callbacks.TQDMProgressBar`, reading the logged
    values it shows at most every ``metrics_interval`` seconds of training.

    Lightning's bar reads ``trainer.progress_bar_metrics`` at every refresh (by default every
    step), which turns each logged device tensor into a Python number: a host sync that, on a
    GPU, waits for the step's kernels and keeps Python from queueing the next step's meanwhile.
    This bar advances its counter every ``refresh_rate`` steps as Lightning's does, but reads the
    values only when ``metrics_interval`` seconds have passed since it last read them, and always
    at the end of each training epoch and validation run. It also redraws at most every
    ``draw_interval`` seconds (tqdm's own ``mininterval``, which Lightning's bar bypasses by
    redrawing twice at every refresh: ~1 ms per step on a CPU, 5 % of a small VAE's step), and
    always at the last batch of each epoch and validation run. The CLI uses it for every run.

    Args:
        refresh_rate: Steps between updates of the bar (0 hides it), as in Lightning's bar.
        process_position: Line offset of the bar, as in Lightning's bar.
        leave: Keep each epoch's bar on screen, as in Lightning's bar.
        metrics_interval: Seconds between reads of the logged values (0: at every refresh,
            Lightning's behaviour).
        draw_interval: Least seconds between two redraws of a bar (0: at every refresh,
            Lightning's behaviour); the last batch of an epoch or validation run is always drawn.
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False,
                 metrics_interval: float = 0.5, draw_interval: float = 0.1) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position,
                         leave=leave)
        for name, value in (("metrics_interval", metrics_interval),
                            ("draw_interval", draw_interval)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.metrics_interval = metrics_interval
        self.draw_interval = draw_interval
        self._drawn_at = -math.inf
        self.metrics_reads = 0
        self._metrics: dict = {}
        self._read_at = -math.inf

    def get_metrics(self, trainer, pl_module) -> dict:
        now = time.monotonic()
        if now - self._read_at >= self.metrics_interval or not self._metrics:
            self._metrics = super().get_metrics(trainer, pl_module)
            self._read_at = now
            self.metrics_reads += 1
        return self._metrics

    def _should_update(self, current: int, total: int) -> bool:
        if not super()._should_update(current, total):
            return False
        now = time.monotonic()
        if current != total and now - self._drawn_at < self.draw_interval:
            return False
        self._drawn_at = now
        return True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # Lightning's bar sets the count with a redraw, then the values with another: one here.
        bar = self.train_progress_bar
        if bar is not None and self._should_update(batch_idx + 1, bar.total):
            if not bar.disable:
                bar.n = batch_idx + 1
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # draws once

    def reads_metrics_next(self) -> bool:
        """Whether the next refresh reads the logged values (the suite's models log their
        losses only then, not at every step, under ``train_logging="losses"``)."""
        return (self.refresh_rate > 0 and not self.is_disabled and (
            not self._metrics or time.monotonic() - self._read_at >= self.metrics_interval))

    def _read_now(self) -> None:
        self._read_at = -math.inf

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._read_now()  # the epoch's final values
        super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._read_now()  # the validation results
        super().on_validation_end(trainer, pl_module)
