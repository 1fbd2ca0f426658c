"""What the tuners (learning-rate range test, batch-size search) train on and then put back, in memory.

The search trains the real model with its real optimizers, so everything training touches is copied
first: the weights, the optimizer and scheduler states, the RNG and the ``FitState`` counters. No
temporary checkpoint file is written, so a crash in the middle leaves nothing on disk.
"""
from __future__ import annotations

import copy
from typing import Any


class TrainingSnapshot:
    """``TrainingSnapshot(trainer, module)`` copies; ``restore()`` puts it back (as often as needed)."""

    def __init__(self, trainer: Any, module: Any) -> None:
        from ..checkpoint import capture_rng

        self.trainer, self.module = trainer, module
        self.weights = copy.deepcopy(module.state_dict())
        # Gradients too: a resume inside an accumulation window brings the window's sum.
        self.grads = [None if p.grad is None else p.grad.clone() for p in module.parameters()]
        self.optimizers = [copy.deepcopy(opt.state_dict()) for opt in trainer.optimizers]
        self.schedulers = [copy.deepcopy(cfg.scheduler.state_dict()) for cfg in trainer.lr_scheduler_configs]
        self.rng = capture_rng()
        self.run, self.data = trainer.run_context, trainer.data
        self.state = trainer.state.snapshot()

    def restore(self) -> None:
        from ..checkpoint import restore_rng

        trainer = self.trainer
        trainer.run_context, trainer.data = self.run, self.data
        self.module.load_state_dict(self.weights)
        for opt, saved in zip(trainer.optimizers, self.optimizers):
            opt.load_state_dict(copy.deepcopy(saved))
        for cfg, saved in zip(trainer.lr_scheduler_configs, self.schedulers):
            cfg.scheduler.load_state_dict(copy.deepcopy(saved))
        for p, grad in zip(self.module.parameters(), self.grads):
            p.grad = None if grad is None else grad.clone()
        restore_rng(self.rng)
        trainer.state.restore(self.state)
        trainer.state.sanity_checked = False  # the fit that hosted the search runs its sanity check
        trainer.metric_store.clear_views()
