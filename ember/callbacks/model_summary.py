"""A table of the model's layers and parameter counts, printed when fit starts."""
from __future__ import annotations

from typing import Any

import torch

from .callback import Callback


def _fmt(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def summarize(module: torch.nn.Module, max_depth: int = 1) -> str:
    """Rows for the direct children (to ``max_depth``), then total, trainable and frozen counts."""
    rows = []
    for name, child in module.named_modules():
        depth = name.count(".") + 1 if name else 0
        if not name or depth > max_depth:
            continue
        count = sum(p.numel() for p in child.parameters())
        mode = "train" if child.training else "eval"
        rows.append((name, type(child).__name__, _fmt(count), mode))
    # Parameters registered straight on the module (as in the StatQuest network) get a row of their own.
    own = [(n, p) for n, p in module.named_parameters(recurse=False)]
    params = list(module.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    lines = []
    if rows:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(("Name", "Type", "Params", "Mode"))]
        header = "  | " + " | ".join(h.ljust(w) for h, w in zip(("Name", "Type", "Params", "Mode"), widths))
        lines.append(header)
        lines.append("-" * len(header))
        for i, r in enumerate(rows):
            lines.append(f"{i} | " + " | ".join(c.ljust(w) for c, w in zip(r, widths)))
        lines.append("-" * len(header))
    if own:
        lines.append(f"{len(own)} parameter tensor(s) on the module itself: "
                     + ", ".join(f"{n}{'' if p.requires_grad else ' (frozen)'}" for n, p in own))
    lines.append(f"{_fmt(trainable):<10} Trainable params")
    lines.append(f"{_fmt(total - trainable):<10} Non-trainable params")
    lines.append(f"{_fmt(total):<10} Total params")
    size_mb = sum(p.numel() * p.element_size() for p in params) / 1e6
    lines.append(f"{size_mb:<10.3f} Total estimated model params size (MB)")
    return "\n".join(lines)


class ModelSummary(Callback):
    def __init__(self, max_depth: int = 1) -> None:
        self.max_depth = max_depth

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.max_depth == 0 or not trainer.is_global_zero:
            return
        print(summarize(pl_module, self.max_depth))
