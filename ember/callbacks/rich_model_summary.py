"""RichModelSummary: the model summary as a ``rich`` table (``pip install rich``, or ``ember[rich]``)."""
from __future__ import annotations

from typing import Any

from .model_summary import ModelSummary, summary_data


class RichModelSummary(ModelSummary):
    """The rows and counts of ``ModelSummary``, drawn by ``rich``; ``header_style`` (a rich style, default
    "bold magenta") styles the table's header."""

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        try:
            import rich  # noqa: F401
        except ImportError as err:
            raise ModuleNotFoundError("RichModelSummary needs rich: `pip install rich` (or `pip install "
                                      "ember[rich]`).") from err
        super().__init__(max_depth, **summarize_kwargs)

    def show(self, pl_module: Any) -> None:
        from rich import get_console
        from rich.table import Table

        data = summary_data(pl_module, self.max_depth)
        console = get_console()
        if data.rows:
            table = Table(header_style=self.summarize_kwargs.get("header_style", "bold magenta"))
            table.add_column(" ", style="dim")
            table.add_column("Name", justify="left", no_wrap=True)
            table.add_column("Type")
            table.add_column("Params", justify="right")
            table.add_column("Mode")
            for i, row in enumerate(data.rows):
                table.add_row(str(i), *row)
            console.print(table)
        grid = Table.grid(expand=True)
        grid.add_column()
        lines = [(label, value) for label, value in data.totals]
        if data.own:
            lines.append(("Parameters on the module itself",
                          ", ".join(f"{n}{'' if trainable else ' (frozen)'}" for n, trainable in data.own)))
        lines += [("Modules in train mode", str(data.modes["train"])), ("Modules in eval mode", str(data.modes["eval"]))]
        for label, value in lines:
            grid.add_row(f"[bold]{label}[/]: {value}")
        console.print(grid)
