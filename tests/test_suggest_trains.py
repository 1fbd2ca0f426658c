"""The default lr suggestion on real range-test curves it was not designed on, checked against a grid search.

The same method as bench/lr_suggestion.py, made small enough for the suite (a few seconds): run the range
test once, then train the same model from the same initial weights and batch order at the suggested rate
and at every rate of a log-spaced grid (plus the two geometric midpoints around the grid's best), for a
fixed budget, and compare full-dataset training losses.

Two problems:
- a small CNN on noisy 8x8 patterns with 15% flipped labels (Adam): a noisy curve;
- a tanh MLP started near a saddle (weights scaled by 0.3; plain SGD): the recorded loss stays flat for
  most of the range, drops over a few points and then blows up, so the drop comes right before the breakdown.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ember as L
from ember.tuner import Tuner, suggest

QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the same float sums on every machine, and no contention with other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Model(L.LightningModule):
    def __init__(self, net, loss_fn, optimizer, learning_rate=1e-3):
        super().__init__()
        self.net, self.loss_fn, self.optimizer, self.learning_rate = net, loss_fn, optimizer, learning_rate

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss_fn(self.net(x), y)

    def configure_optimizers(self):
        if self.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.learning_rate)
        return torch.optim.SGD(self.parameters(), lr=self.learning_rate)


def cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 3))


def pattern_data():
    g = torch.Generator().manual_seed(0)
    n, k = 384, 3
    y = torch.arange(n) % k
    i, j = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    patterns = torch.stack([torch.sin(i * 1.3), torch.sin(j * 1.3), torch.sin((i + j) * 0.9)])
    x = 0.6 * patterns[y] + torch.randn(n, 8, 8, generator=g)
    flipped = torch.rand(n, generator=g) < 0.15
    return x[:, None], torch.where(flipped, torch.randint(0, k, (n,), generator=g), y)


def saddle_mlp():
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.3)  # small weights: near the saddle at zero, where small rates make no progress
    return net


def tanh_regression_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = torch.tanh(x @ torch.tensor([1.5, -1.0, 0.5, 2.0])) + 0.1 * torch.randn(256, generator=g)
    return x, y[:, None]


PROBLEMS = {
    "noisy-cnn": dict(data=pattern_data, net=cnn, loss=F.cross_entropy, optimizer="adam", batch=32, epochs=3,
                      range=(1e-5, 1.0)),
    "plateau-mlp": dict(data=tanh_regression_data, net=saddle_mlp, loss=F.mse_loss, optimizer="sgd", batch=16,
                        epochs=4, range=(1e-5, 3.0)),
}


def _problem(spec):
    x, y = spec["data"]()
    dataset = TensorDataset(x, y)

    def make(lr):
        torch.manual_seed(1000)
        model = Model(spec["net"](), spec["loss"], spec["optimizer"], lr)
        loader = DataLoader(dataset, batch_size=spec["batch"], shuffle=True,
                            generator=torch.Generator().manual_seed(2000))
        return model, loader

    def score(lr):
        """Full-dataset training loss after the fixed budget at ``lr`` (inf if it diverged)."""
        model, loader = make(lr)
        try:
            L.Trainer(max_epochs=spec["epochs"], **QUIET).fit(model, loader)
        except L.NonFiniteLossError:
            return math.inf
        model.eval()
        with torch.no_grad():
            value = float(spec["loss"](model.net(x), y))
        return value if math.isfinite(value) else math.inf

    model, loader = make(1e-3)
    found = Tuner(L.Trainer(max_epochs=50, **QUIET)).lr_find(
        model, train_dataloaders=loader, min_lr=spec["range"][0], max_lr=spec["range"][1],
        early_stop_threshold=None, update_attr=False)
    return found, score


def _grid_search(score, lo, hi, n=10):
    """bench/lr_suggestion.py's grid: n log-spaced rates, then the geometric midpoints around the best."""
    rates = [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
    losses = [score(r) for r in rates]
    best = min(range(n), key=lambda i: losses[i])
    for neighbour in (best - 1, best + 1):
        if 0 <= neighbour < n:
            rates.append(math.sqrt(rates[best] * rates[neighbour]))
            losses.append(score(rates[-1]))
    i = min(range(len(rates)), key=lambda k: losses[k])
    return rates[i], losses[i]


def _compare(name):
    spec = PROBLEMS[name]
    found, score = _problem(spec)
    lr, steepest = found.suggestion(), found.suggestion(method="steepest")
    best_lr, best_loss = _grid_search(score, *spec["range"])
    return found.results, dict(lr=lr, loss=score(lr), steepest_loss=score(steepest), best_lr=best_lr,
                               best_loss=best_loss)


def test_default_suggestion_on_a_noisy_cnn_curve_trains_within_10_percent_of_the_grid_best():
    results, r = _compare("noisy-cnn")
    assert len(results["loss"]) == 100 and all(math.isfinite(v) for v in results["loss"])
    # bench/lr_suggestion.py's acceptance: at most 1.10 x the grid-best loss (measured: 0.491 vs 0.464, 1.06).
    assert r["loss"] <= 1.10 * r["best_loss"], r
    # A rate below the grid's best (the rule backs off from the breakdown), but within a factor of 4 of it.
    assert r["best_lr"] / 4 <= r["lr"] <= r["best_lr"], r
    assert r["loss"] < 0.6 * r["steepest_loss"], r  # Lightning's rule lands on the slow side (1.05 here)


def _plateau_shape(losses):
    flat = sorted(losses[20:80])
    median = flat[len(flat) // 2]
    return flat[0] >= 0.95 * median and flat[-1] <= 1.05 * median, min(losses[80:]) < 0.95 * median, \
        losses[-1] > 2 * median


def test_default_suggestion_on_a_plateau_before_the_drop_trains_but_trails_the_grid_best():
    results, r = _compare("plateau-mlp")
    # The curve is what the test is about: flat over points 20-80, then a drop, then the breakdown.
    assert _plateau_shape(results["loss"]) == (True, True, True)
    # The drop shows only a few points before the breakdown, so a tenth of the breakdown rate lands well below
    # the best rate: the suggestion trains (far better than the plateau, and than 'steepest', which lands on
    # the plateau), but does not meet the bench's 1.10 x grid-best here (measured: 0.108 vs 0.0169 at 0.367).
    assert r["best_lr"] / 10 <= r["lr"] <= r["best_lr"], r
    assert r["loss"] < 0.2 * r["steepest_loss"], r
    assert r["loss"] <= 10 * r["best_loss"], r  # measured 6.4x: a known weakness of the rule, kept visible here
