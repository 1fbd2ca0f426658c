"""lr_find leaves no trace: weights, optimizer state and RNG are restored in memory, no temp files."""
import os
import random

import pytest
import torch

import ember as L
from ember.tuner import Tuner
from statquest_model import QUIET, dataloader, make_class


class Dropper(L.LightningModule):
    """Dropout and momentum, so RNG use and optimizer state both matter."""

    def __init__(self, lr=0.05):
        super().__init__()
        self.lr = lr
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8,
                                       shuffle=True)


def test_lr_find_restores_weights_and_rng_and_leaves_no_files(in_tmp):
    torch.manual_seed(3)
    model = Dropper()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = L.Trainer(max_epochs=5, **QUIET)
    torch_rng, py_rng = torch.get_rng_state(), random.getstate()
    result = Tuner(trainer).lr_find(model, train_dataloaders=_data(), num_training=30, update_attr=False,
                                    early_stop_threshold=None)
    assert len(result.results["lr"]) == 30
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(torch.get_rng_state(), torch_rng) and random.getstate() == py_rng
    assert os.listdir(in_tmp) == []
    assert trainer.global_step == 0 and trainer.current_epoch == 0


def test_lr_find_then_fit_equals_fit_alone(in_tmp):
    """The range test must not leak into the real run: same final weights as never having searched."""
    finals = []
    for search in (False, True):
        torch.manual_seed(3)
        model = Dropper(lr=0.02)
        trainer = L.Trainer(max_epochs=2, **QUIET)
        if search:
            Tuner(trainer).lr_find(model, train_dataloaders=_data(), num_training=20, update_attr=False)
        trainer.fit(model, train_dataloaders=_data())
        finals.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*finals))


def test_lr_find_restores_optimizer_state_when_run_mid_training(in_tmp):
    class FindAtEpoch1(L.callbacks.LearningRateFinder):
        def on_fit_start(self, trainer, pl_module):
            pass

        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                opt = trainer.optimizers[0]
                self.before = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
                self.step_before = trainer.global_step
                self.lr_find(trainer, pl_module)
                self.after = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}

    torch.manual_seed(0)
    finder = FindAtEpoch1(num_training_steps=10, update_attr=False)
    trainer = L.Trainer(max_epochs=2, callbacks=[finder], **QUIET)
    trainer.fit(Dropper(), train_dataloaders=_data())
    assert finder.before.keys() == finder.after.keys() and finder.before
    for pid, state in finder.before.items():
        for k, v in state.items():
            assert torch.equal(v, finder.after[pid][k])
    assert trainer.global_step == 16  # 8 batches x 2 epochs; the 10 search steps are not counted


def test_lr_find_crash_restores_the_model_and_leaves_no_file(in_tmp):
    class Exploding(Dropper):
        def training_step(self, batch, batch_idx):
            if self.trainer.global_step == 5:
                raise RuntimeError("boom at step 5")
            return super().training_step(batch, batch_idx)

    torch.manual_seed(1)
    model = Exploding()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = L.Trainer(max_epochs=3, **QUIET)
    with pytest.raises(RuntimeError, match="boom at step 5"):
        Tuner(trainer).lr_find(model, train_dataloaders=_data(), num_training=20)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert os.listdir(in_tmp) == []


def test_update_attr_sets_the_suggested_lr_on_the_model(in_tmp):
    model = make_class(L)()
    trainer = L.Trainer(max_epochs=34, **QUIET)
    result = Tuner(trainer).lr_find(model, train_dataloaders=dataloader(), min_lr=0.001, max_lr=1.0,
                                    early_stop_threshold=None)
    assert model.learning_rate == result.suggestion()


def test_early_stop_threshold_stops_a_diverging_search(in_tmp):
    torch.manual_seed(0)
    trainer = L.Trainer(max_epochs=100, **QUIET)
    result = Tuner(trainer).lr_find(Dropper(), train_dataloaders=_data(), min_lr=1e-4, max_lr=100.0,
                                    early_stop_threshold=4.0, update_attr=False)
    losses = result.results["loss"]
    assert 10 < len(losses) < 100  # stopped before the last candidate...
    assert losses[-1] > 4.0 * min(losses[:-1])  # ...because the loss blew past 4x the best so far


def test_plot_returns_a_figure_with_the_suggestion_marked(in_tmp):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    model = make_class(L)()
    trainer = L.Trainer(max_epochs=34, **QUIET)
    result = Tuner(trainer).lr_find(model, train_dataloaders=dataloader(), min_lr=0.001, max_lr=1.0,
                                    early_stop_threshold=None)
    fig = result.plot(suggest=True, show=False)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    curve, marker = ax.lines[0], ax.lines[1]
    assert len(curve.get_xdata()) == 100
    assert marker.get_xdata()[0] == pytest.approx(result.suggestion())


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(min_lr=1.0, max_lr=0.001), "min_lr must be smaller than max_lr"),
    (dict(min_lr=0.1, max_lr=0.1), "min_lr must be smaller than max_lr"),
    (dict(min_lr=-1.0), "min_lr=-1.0"),
    (dict(num_training=1), "num_training=1"),
    (dict(mode="cosine"), "mode='cosine'"),
    (dict(early_stop_threshold=0), "early_stop_threshold=0"),
])
def test_lr_find_rejects_bad_arguments_before_any_work(in_tmp, kwargs, fragment):
    model = make_class(L)()
    trainer = L.Trainer(max_epochs=2, **QUIET)
    with pytest.raises(ValueError) as info:
        Tuner(trainer).lr_find(model, train_dataloaders=dataloader(), **kwargs)
    assert fragment in str(info.value)
    assert trainer.global_step == 0


def test_unknown_suggestion_method_names_the_allowed_ones(in_tmp):
    model = make_class(L)()
    trainer = L.Trainer(max_epochs=34, **QUIET)
    result = Tuner(trainer).lr_find(model, train_dataloaders=dataloader(), min_lr=0.001, max_lr=1.0,
                                    update_attr=False)
    with pytest.raises(ValueError) as info:
        result.suggestion(method="magic")
    assert "magic" in str(info.value) and "steepest" in str(info.value)
