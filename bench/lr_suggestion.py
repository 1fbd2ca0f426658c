"""Do the learning-rate suggestions train? The default method vs 'steepest' vs a grid search.

For each problem the range test is run once (``Tuner(trainer).lr_find``, the whole
range, ``early_stop_threshold=None``), and three rates are compared by what they do
in a real, fixed-budget training run:

  * default:   ember's default suggestion (``ember.tuner.suggest``, method "stable");
  * steepest:  Lightning 2.6.6's rule (``method="steepest"``, same functions);
  * grid-best: the best of a log-spaced grid over the range-test interval, refined
               with the two geometric midpoints around the best grid rate.

Every rate trains the same model from the same initial weights, with the same batch
order and the same budget (a fixed number of epochs); the score is the full-dataset
training loss afterwards, in eval mode, averaged over ``--seeds`` initialisations
(StatQuest is deterministic and uses one). A rate that ends non-finite scores inf.
The default passes a problem when its loss is at most 1.10 x the grid-best loss
(+1e-9 absolute, for problems whose optimum is exactly zero in float32).

Problems: the StatQuest tutorial program (its data, model, range and 34 epochs,
also reporting final_bias, which should be -16.01), a regression MLP (Adam), a
classification MLP on noisy spirals (SGD + momentum), a small CNN on synthetic
16x16 patterns with 20% flipped labels (Adam), and a regression with heavy label
noise and batches of 8 (plain SGD). All but StatQuest have irreducible loss, so
that "within 10%" measures optimisation, not luck in memorising.

    python bench/lr_suggestion.py                         # ember
    python bench/lr_suggestion.py --framework lightning   # the same with Lightning
    python bench/lr_suggestion.py --seeds 1 --grid 12     # quicker
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

C.ensure_repo_on_path()


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--framework", choices=("ember", "lightning"), default="ember",
                   help="which package provides LightningModule, Trainer and Tuner (default: ember)")
    p.add_argument("--seeds", type=int, default=2, help="initialisations averaged per rate (default 2)")
    p.add_argument("--grid", type=int, default=16, help="log-spaced grid rates per problem (default 16)")
    p.add_argument("--problems", default="", help="comma-separated subset of problem names")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--out", default="", help="also write the report to this file")
    return p.parse_args(argv)


ARGS = _parse_args()

if ARGS.framework == "lightning":
    import lightning as L
else:
    import ember as L

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.optim import SGD  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from ember.tuner.suggest import DEFAULT_METHOD, suggest  # noqa: E402

warnings.filterwarnings("ignore")
for _name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "ember"):
    logging.getLogger(_name).setLevel(logging.ERROR)

QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
NON_FINITE_ERRORS: tuple = (L.NonFiniteLossError,) if hasattr(L, "NonFiniteLossError") else ()


# ----------------------------------------------------------------------------- StatQuest
class BasicLightningTrain(L.LightningModule):
    """The StatQuest tutorial's model: fixed weights, only ``final_bias`` trains."""

    def __init__(self):
        super().__init__()
        self.w00 = nn.Parameter(torch.tensor(1.7), requires_grad=False)
        self.b00 = nn.Parameter(torch.tensor(-0.85), requires_grad=False)
        self.w01 = nn.Parameter(torch.tensor(-40.8), requires_grad=False)
        self.w10 = nn.Parameter(torch.tensor(12.6), requires_grad=False)
        self.b10 = nn.Parameter(torch.tensor(0.0), requires_grad=False)
        self.w11 = nn.Parameter(torch.tensor(2.7), requires_grad=False)
        self.final_bias = nn.Parameter(torch.tensor(0.0), requires_grad=True)
        self.learning_rate = 0.01

    def forward(self, input):
        input_to_top_relu = input * self.w00 + self.b00
        top_relu_output = F.relu(input_to_top_relu)
        scaled_top_relu_output = top_relu_output * self.w01
        input_to_bottom_relu = input * self.w10 + self.b10
        bottom_relu_output = F.relu(input_to_bottom_relu)
        scaled_bottom_relu_output = bottom_relu_output * self.w11
        input_to_final_relu = scaled_top_relu_output + scaled_bottom_relu_output + self.final_bias
        return F.relu(input_to_final_relu)

    def configure_optimizers(self):
        return SGD(self.parameters(), lr=self.learning_rate)

    def training_step(self, batch, batch_idx):
        input_i, label_i = batch
        output_i = self.forward(input_i)
        loss = (output_i - label_i) ** 2
        return loss


# ----------------------------------------------------------------------------- generic problems
class Model(L.LightningModule):
    """A network, a loss and an optimizer choice; ``learning_rate`` is what the tuner sets."""

    def __init__(self, net: nn.Module, loss_fn, optimizer: str, learning_rate: float = 1e-3):
        super().__init__()
        self.net = net
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.learning_rate = learning_rate

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss_fn(self.net(x), y)

    def configure_optimizers(self):
        if self.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.learning_rate)
        if self.optimizer == "sgd_momentum":
            return torch.optim.SGD(self.parameters(), lr=self.learning_rate, momentum=0.9)
        return torch.optim.SGD(self.parameters(), lr=self.learning_rate)


def mlp(widths, act=nn.ReLU) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 4),
    )


def regression_data(g: torch.Generator):
    x = torch.randn(1024, 8, generator=g)
    w = torch.randn(8, generator=g)
    y = torch.sin(x @ w / 2) + 0.5 * x[:, 0] * x[:, 1] + 0.3 * torch.randn(1024, generator=g)
    return x, y[:, None]


def spiral_data(g: torch.Generator):
    n, k = 512, 4
    y = torch.arange(n) % k
    radius = torch.rand(n, generator=g) * 3 + 0.3
    angle = radius * 2.0 + y * (2 * math.pi / k)
    x = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 1) + 0.25 * torch.randn(n, 2, generator=g)
    return x, y


def pattern_data(g: torch.Generator):
    n, k = 1024, 4
    y = torch.arange(n) % k
    i, j = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    patterns = torch.stack([torch.sin(i * 1.2), torch.sin(j * 1.2), torch.sin((i + j) * 0.9),
                            torch.sin(i * 1.2) * torch.sin(j * 1.2)])
    shift = torch.randint(0, 4, (n,), generator=g)
    x = torch.stack([torch.roll(patterns[y[t]], (int(shift[t]), int(shift[t])), dims=(0, 1)) for t in range(n)])
    x = 0.5 * x + torch.randn(n, 16, 16, generator=g)
    flipped = torch.rand(n, generator=g) < 0.2
    y = torch.where(flipped, torch.randint(0, k, (n,), generator=g), y)
    return x[:, None], y


def noisy_data(g: torch.Generator):
    x = torch.randn(256, 4, generator=g)
    w = torch.randn(4, generator=g)
    y = x @ w + torch.tanh(2 * x[:, 2]) + 1.5 * torch.randn(256, generator=g)
    return x, y[:, None]


PROBLEMS = {
    "regression MLP (Adam)": dict(data=regression_data, net=lambda: mlp((8, 32, 32, 1), nn.Tanh), loss=F.mse_loss,
                                  optimizer="adam", batch=32, epochs=20),
    "classification MLP (SGD+m)": dict(data=spiral_data, net=lambda: mlp((2, 64, 64, 4)), loss=F.cross_entropy,
                                       optimizer="sgd_momentum", batch=32, epochs=40),
    "CNN 16x16 (Adam)": dict(data=pattern_data, net=small_cnn, loss=F.cross_entropy, optimizer="adam", batch=32,
                             epochs=10),
    "noisy regression, batch 8 (SGD)": dict(data=noisy_data, net=lambda: mlp((4, 32, 32, 1)), loss=F.mse_loss,
                                            optimizer="sgd", batch=8, epochs=10),
}
RANGE = (1e-5, 1.0)  # the range test's interval for the problems above (and the grid's)


# ----------------------------------------------------------------------------- running
def fit(model, loader, epochs: int) -> None:
    trainer = L.Trainer(max_epochs=epochs, **QUIET)
    with C.quiet():
        trainer.fit(model, train_dataloaders=loader)


def full_loss(model, x, y, loss_fn) -> float:
    model.eval()
    with torch.no_grad():
        value = float(loss_fn(model(x), y))
    return value if math.isfinite(value) else math.inf


def range_test(model, loader, epochs: int, min_lr: float, max_lr: float) -> dict:
    trainer = L.Trainer(max_epochs=epochs, **QUIET)
    with C.quiet():
        found = L.pytorch.tuner.Tuner(trainer).lr_find(model, train_dataloaders=loader, min_lr=min_lr,
                                                        max_lr=max_lr, early_stop_threshold=None)
    return found.results


def statquest_run(lr: float) -> tuple[float, float]:
    """Fresh model and Trainer(max_epochs=34) at ``lr``: (final full-data loss, final_bias)."""
    inputs, labels = torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.0, 1.0, 0.0])
    model = BasicLightningTrain()
    model.learning_rate = lr
    try:
        fit(model, DataLoader(TensorDataset(inputs, labels)), 34)
    except NON_FINITE_ERRORS:
        return math.inf, math.nan
    return full_loss(model, inputs, labels, F.mse_loss), float(model.final_bias.data)


def problem_runner(spec: dict, seeds: int):
    x, y = spec["data"](torch.Generator().manual_seed(0))
    dataset = TensorDataset(x, y)

    def make(seed: int, lr: float):
        torch.manual_seed(1000 + seed)
        model = Model(spec["net"](), spec["loss"], spec["optimizer"], lr)
        loader = DataLoader(dataset, batch_size=spec["batch"], shuffle=True,
                            generator=torch.Generator().manual_seed(2000 + seed))
        return model, loader

    def score(lr: float) -> float:
        losses = []
        for seed in range(seeds):
            model, loader = make(seed, lr)
            try:
                fit(model, loader, spec["epochs"])
                losses.append(full_loss(model, x, y, spec["loss"]))
            except NON_FINITE_ERRORS:
                losses.append(math.inf)
        return sum(losses) / len(losses)

    def results() -> dict:
        model, loader = make(0, 1e-3)
        return range_test(model, loader, 10 * spec["epochs"], *RANGE)

    return results, score


def log_grid(lo: float, hi: float, n: int) -> list[float]:
    return [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]


def grid_search(score, lo: float, hi: float, n: int) -> tuple[float, float, int]:
    """Best (lr, loss) over an n-point log grid plus the two midpoints around its best point."""
    rates = log_grid(lo, hi, n)
    losses = [score(lr) for lr in rates]
    best = min(range(n), key=lambda i: losses[i])
    for neighbour in (best - 1, best + 1):
        if 0 <= neighbour < n:
            mid = math.sqrt(rates[best] * rates[neighbour])
            rates.append(mid)
            losses.append(score(mid))
    i = min(range(len(rates)), key=lambda k: losses[k])
    return rates[i], losses[i], len(rates)


def fmt(v: float) -> str:
    return "inf" if v == math.inf else f"{v:.4g}"


def main() -> int:
    torch.set_num_threads(ARGS.threads)
    wanted = [p.strip() for p in ARGS.problems.split(",") if p.strip()]
    names = ["StatQuest tutorial"] + list(PROBLEMS)
    if wanted:
        names = [n for n in names if any(w.lower() in n.lower() for w in wanted)]

    rows, verdicts, notes = [], [], []
    t0 = time.perf_counter()
    for name in names:
        started = time.perf_counter()
        if name == "StatQuest tutorial":
            inputs, labels = torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.0, 1.0, 0.0])
            results = range_test(BasicLightningTrain(), DataLoader(TensorDataset(inputs, labels)), 34, 0.001, 1.0)
            lo, hi = 0.001, 1.0
            score = lambda lr: statquest_run(lr)[0]  # noqa: E731
        else:
            get_results, score = problem_runner(PROBLEMS[name], ARGS.seeds)
            results = get_results()
            lo, hi = RANGE
        found_default = suggest(results["lr"], results["loss"], method=DEFAULT_METHOD)
        found_steepest = suggest(results["lr"], results["loss"], method="steepest")
        lr_d = found_default[1] if found_default else math.nan
        lr_s = found_steepest[1] if found_steepest else math.nan
        loss_d = score(lr_d) if found_default else math.inf
        loss_s = score(lr_s) if found_steepest else math.inf
        lr_g, loss_g, n_grid = grid_search(score, lo, hi, ARGS.grid)
        if loss_g > 0:
            ratio = f"{loss_d / loss_g:.3f}"
        else:  # a problem whose optimum is exactly zero in float32
            ratio = f"n/a (grid-best 0, default {loss_d:.1e})"
        ok = loss_d <= 1.10 * loss_g + 1e-9
        verdicts.append(ok)
        rows.append([name, f"{lr_d:.3g}", fmt(loss_d), f"{lr_s:.3g}", fmt(loss_s), f"{lr_g:.3g}", fmt(loss_g),
                     ratio + ("" if ok else " FAIL")])
        if name == "StatQuest tutorial":
            bias_d, bias_s = statquest_run(lr_d)[1], statquest_run(lr_s)[1]
            notes.append(f"StatQuest final_bias: default {bias_d:.4f}, steepest {bias_s:.4f} "
                         f"(least-squares optimum -16.01; default within 0.01: {abs(bias_d + 16.01) <= 0.01})")
        notes.append(f"{name}: {len(results['loss'])} range-test points, {n_grid} grid rates, "
                     f"{time.perf_counter() - started:.1f}s")

    framework_version = C.package_version("lightning" if ARGS.framework == "lightning" else "ember")
    lines = C.header_lines("Learning-rate suggestions: do they train?", {
        "framework": f"{ARGS.framework} {framework_version} (import {ARGS.framework} as L)",
        "default method": f"{DEFAULT_METHOD!r} (ember.tuner.suggest)",
        "torch": f"{torch.__version__}, {ARGS.threads} thread(s)",
        "seeds per rate": f"{ARGS.seeds} (StatQuest: 1, deterministic)",
        "grid": f"{ARGS.grid} log-spaced rates over the range-test interval + 2 midpoints around the best",
    })
    lines.append(C.md_table(["problem", "default lr", "default loss", "steepest lr", "steepest loss", "grid-best lr",
                             "grid-best loss", "default/grid-best ratio"], rows))
    lines.append("")
    lines += [f"- {n}" for n in notes]
    passed = sum(verdicts)
    lines.append(f"- acceptance (default loss <= 1.10 x grid-best + 1e-9): {passed}/{len(verdicts)} problems; "
                 f"total {time.perf_counter() - t0:.0f}s")
    C.emit("\n".join(lines), ARGS.out or None)
    return 0 if passed == len(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
