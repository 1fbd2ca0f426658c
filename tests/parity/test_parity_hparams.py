"""Hyperparameter parity: save_hyperparameters, hparams, hparams.yaml, load_from_checkpoint."""
from __future__ import annotations

import os

import torch
from parity_harness import assert_same_weights, loader, quiet, run_both


def _model_class(L):
    class Net(L.LightningModule):
        def __init__(self, hidden: int = 4, lr: float = 0.1, name: str = "net", skip_me: object = None, **extra):
            super().__init__()
            self.save_hyperparameters(ignore=["skip_me"])
            torch.manual_seed(0)
            self.body = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))

        def forward(self, x):
            return self.body(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    return Net


def test_save_hyperparameters_captures_init_args():
    def program(L):
        Net = _model_class(L)
        m = Net(hidden=5, lr=0.2, skip_me=object(), dropout=0.1)
        m.hparams.lr = 0.3  # hparams change; hparams_initial keeps what __init__ saw
        return dict(m.hparams), dict(m.hparams_initial)

    a, b = run_both(program)
    assert a == b
    assert a[0] == {"hidden": 5, "lr": 0.3, "name": "net", "dropout": 0.1}


def test_selected_and_dict_hyperparameters():
    def program(L):
        class Picked(L.LightningModule):
            def __init__(self, a=1, b=2, c=3):
                super().__init__()
                self.save_hyperparameters("a", "c")

        class FromDict(L.LightningModule):
            def __init__(self, conf):
                super().__init__()
                self.save_hyperparameters(conf)

        return dict(Picked(b=5).hparams), dict(FromDict({"x": 1, "y": "z"}).hparams)

    a, b = run_both(program)
    assert a == b


def test_checkpoint_round_trip_with_overrides_and_map_location(tmp_path):
    def program(L, tmp_path):
        Net = _model_class(L)
        root = os.path.join(str(tmp_path), L.__name__)
        m = Net(hidden=6, lr=0.05)
        t = L.Trainer(**quiet(root, max_epochs=2, logger=L.pytorch.loggers.CSVLogger(root)))
        t.fit(m, loader(12, 4))
        path = os.path.join(root, "final.ckpt")
        t.save_checkpoint(path)
        loaded = Net.load_from_checkpoint(path, map_location="cpu", lr=0.5)
        with open(os.path.join(t.logger.log_dir, "hparams.yaml")) as fp:
            yaml_text = fp.read()
        x = torch.linspace(-1, 1, 12).reshape(4, 3)
        return (dict(loaded.hparams), loaded.training, {k: v.clone() for k, v in loaded.state_dict().items()},
                loaded(x).detach(), sorted(line.split(":")[0] for line in yaml_text.splitlines() if line.strip()))

    a, b = run_both(program, tmp_path=tmp_path)
    assert a[0] == b[0] == {"hidden": 6, "lr": 0.5, "name": "net"}
    assert a[1] == b[1] is True  # both hand the loaded module back in train mode
    assert_same_weights(a[2], b[2])
    assert torch.equal(a[3], b[3])
    assert a[4] == b[4]
