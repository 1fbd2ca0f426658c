"""A table of the model's layers and parameter counts, printed when fit starts."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .callback import Callback


def _fmt(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


@dataclasses.dataclass
class SummaryData:
    """What a model summary shows, for the plain and the rich table alike."""

    rows: list[tuple[str, str, str, str]]  # (name, type, params, mode) per child to max_depth
    own: list[tuple[str, bool]]  # parameters registered on the module itself: (name, trainable)
    trainable: int
    total: int
    size_mb: float
    modes: dict[str, int]  # {"train": n, "eval": n} over every submodule

    @property
    def totals(self) -> list[tuple[str, str]]:
        return [("Trainable params", _fmt(self.trainable)), ("Non-trainable params", _fmt(self.total - self.trainable)),
                ("Total params", _fmt(self.total)), ("Total estimated model params size (MB)", f"{self.size_mb:.3f}")]


def summary_data(module: torch.nn.Module, max_depth: int = 1) -> SummaryData:
    """Rows for the children to ``max_depth``, then total, trainable and frozen counts."""
    rows = []
    for name, child in module.named_modules():
        depth = name.count(".") + 1 if name else 0
        if not name or depth > max_depth:
            continue
        count = sum(p.numel() for p in child.parameters())
        rows.append((name, type(child).__name__, _fmt(count), "train" if child.training else "eval"))
    # Parameters registered straight on the module (as in the StatQuest network) get a line of their own.
    own = [(n, p.requires_grad) for n, p in module.named_parameters(recurse=False)]
    params = list(module.parameters())
    modes = {"train": 0, "eval": 0}
    for _, child in module.named_modules():
        if child is not module:
            modes["train" if child.training else "eval"] += 1
    return SummaryData(rows=rows, own=own, trainable=sum(p.numel() for p in params if p.requires_grad),
                       total=sum(p.numel() for p in params),
                       size_mb=sum(p.numel() * p.element_size() for p in params) / 1e6, modes=modes)


def summarize(module: torch.nn.Module, max_depth: int = 1) -> str:
    """The summary as plain text: a table of the children, then the parameter counts."""
    data = summary_data(module, max_depth)
    lines = []
    if data.rows:
        heads = ("Name", "Type", "Params", "Mode")
        widths = [max(len(h), *(len(r[i]) for r in data.rows)) for i, h in enumerate(heads)]
        header = "  | " + " | ".join(h.ljust(w) for h, w in zip(heads, widths))
        lines.append(header)
        lines.append("-" * len(header))
        for i, r in enumerate(data.rows):
            lines.append(f"{i} | " + " | ".join(c.ljust(w) for c, w in zip(r, widths)))
        lines.append("-" * len(header))
    if data.own:
        lines.append(f"{len(data.own)} parameter tensor(s) on the module itself: "
                     + ", ".join(f"{n}{'' if trainable else ' (frozen)'}" for n, trainable in data.own))
    lines.extend(f"{value:<10} {label}" for label, value in data.totals)
    return "\n".join(lines)


class ModelSummary(Callback):
    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < -1:
            raise ValueError(f"{type(self).__name__}(max_depth={max_depth!r}): expected an int >= 0 (0: no table) "
                             "or -1 (every level).")
        self.max_depth = max_depth if max_depth >= 0 else 10**6
        self.summarize_kwargs = summarize_kwargs  # what the rich table reads (header_style)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.max_depth == 0 or not trainer.is_global_zero:
            return
        self.show(pl_module)

    def show(self, pl_module: Any) -> None:
        print(summarize(pl_module, self.max_depth))
