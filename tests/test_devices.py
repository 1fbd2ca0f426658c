"""accelerator="auto"/devices="auto" against faked machines, and moving nested batches."""
import collections
import dataclasses

import pytest
import torch

import ember as L
from ember.runtime import accelerator as acc
from statquest_model import QUIET, dataloader, make_class

CPU_ONLY = acc.MachineProbe(cuda_count=0, mps=False)
FOUR_GPUS = acc.MachineProbe(cuda_count=4, mps=False)
A_MAC = acc.MachineProbe(cuda_count=0, mps=True)


@pytest.mark.parametrize("machine, expected", [
    (CPU_ONLY, ("cpu", (0,))),
    (FOUR_GPUS, ("cuda", (0, 1, 2, 3))),
    (A_MAC, ("mps", (0,))),
])
def test_auto_prefers_cuda_then_mps_then_cpu_and_takes_every_gpu(machine, expected):
    chosen = acc.choose("auto", "auto", machine)
    assert (chosen.name, chosen.device_ids) == expected


@pytest.mark.parametrize("devices, ids", [(2, (0, 1)), ([0, 2], (0, 2)), ("0,2", (0, 2)), ("3", (0, 1, 2)),
                                          (-1, (0, 1, 2, 3)), ("-1", (0, 1, 2, 3))])
def test_devices_forms_on_a_four_gpu_machine(devices, ids):
    assert acc.choose("gpu", devices, FOUR_GPUS).device_ids == ids


def test_root_device_of_a_gpu_run_is_the_first_listed_index():
    chosen = acc.choose("cuda", [2, 3], FOUR_GPUS)
    assert chosen.root_device(0) == torch.device("cuda", 2) and chosen.root_device(1) == torch.device("cuda", 3)


@pytest.mark.parametrize("name", ["gpu", "cuda"])
def test_asking_for_a_gpu_on_a_cpu_machine_says_what_was_found(name):
    with pytest.raises(RuntimeError) as info:
        acc.choose(name, "auto", CPU_ONLY)
    message = str(info.value)
    assert f"accelerator={name!r}" in message and "0 CUDA device(s), no MPS" in message and "'auto'" in message


def test_more_gpus_than_the_machine_has_is_an_error():
    with pytest.raises(ValueError, match="asks for 8 cuda device"):
        acc.choose("cuda", 8, FOUR_GPUS)
    with pytest.raises(ValueError, match="names cuda device 5"):
        acc.choose("cuda", [0, 5], FOUR_GPUS)


def test_trainer_uses_the_probe_and_prints_one_line(monkeypatch, capsys):
    monkeypatch.setattr(acc, "probe", lambda: CPU_ONLY)
    trainer = L.Trainer(accelerator="auto", devices="auto", max_epochs=1, **QUIET)
    trainer.fit(make_class(L)(), train_dataloaders=dataloader())
    err = capsys.readouterr().err
    assert err.count("ember: training on cpu (1 device)") == 1
    assert trainer.strategy.root_device == torch.device("cpu")


def test_trainer_gpu_request_on_a_cpu_machine_fails_at_construction(monkeypatch):
    monkeypatch.setattr(acc, "probe", lambda: CPU_ONLY)
    with pytest.raises(RuntimeError, match="needs a GPU, but this machine has 0 CUDA device"):
        L.Trainer(accelerator="gpu")


Point = collections.namedtuple("Point", "x y")


@dataclasses.dataclass
class Sample:
    image: torch.Tensor
    label: torch.Tensor
    name: str


def test_move_to_device_walks_nested_lists_tuples_dicts_namedtuples_and_dataclasses():
    batch = {
        "pair": (torch.ones(2), [torch.zeros(3), "text"]),
        "point": Point(torch.ones(1), torch.ones(1)),
        "sample": Sample(torch.ones(2, 2), torch.tensor(1), "a"),
        "count": 3,
    }
    moved = acc.move_to_device(batch, torch.device("meta"))
    assert moved["pair"][0].device.type == "meta" and moved["pair"][1][0].device.type == "meta"
    assert moved["pair"][1][1] == "text" and isinstance(moved["pair"][1], list)
    assert isinstance(moved["point"], Point) and moved["point"].y.device.type == "meta"
    assert isinstance(moved["sample"], Sample) and moved["sample"].image.device.type == "meta"
    assert moved["sample"].name == "a" and moved["count"] == 3
    assert batch["pair"][0].device.type == "cpu"  # the input is not modified in place


def test_a_custom_transfer_hook_is_used_for_every_batch():
    seen = []

    class Hooked(make_class(L)):
        def transfer_batch_to_device(self, batch, device, dataloader_idx):
            seen.append((device.type, dataloader_idx))
            return super().transfer_batch_to_device(batch, device, dataloader_idx)

    trainer = L.Trainer(max_epochs=2, **QUIET)
    trainer.fit(Hooked(), train_dataloaders=dataloader())
    assert seen == [("cpu", 0)] * 6


# --------------------------------------------------------------------------- TPUs, through a faked torch_xla
import sys  # noqa: E402
import types  # noqa: E402

from ember.runtime import xla as ember_xla  # noqa: E402


class FakeTorchXLA(types.ModuleType):
    """The few torch_xla calls ember makes; the 'XLA device' is the CPU, so a run is checkable against one."""

    def __init__(self, cores: int) -> None:
        super().__init__("torch_xla")
        self.cores, self.syncs, self.devices_asked = cores, 0, []

    def device(self, index=None):
        self.devices_asked.append(index)
        return torch.device("cpu")

    def sync(self):
        self.syncs += 1


@pytest.fixture
def fake_xla(monkeypatch):
    fake = FakeTorchXLA(cores=4)
    runtime = types.ModuleType("torch_xla.runtime")
    runtime.global_runtime_device_count = lambda: fake.cores
    monkeypatch.setitem(sys.modules, "torch_xla", fake)
    monkeypatch.setitem(sys.modules, "torch_xla.runtime", runtime)
    monkeypatch.setitem(sys.modules, "torch_xla._internal", None)  # (an import of it fails: the runtime answers)
    return fake


def test_tpu_is_a_known_accelerator_that_without_torch_xla_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_xla", None)  # not installed
    assert "tpu" in acc.ACCELERATORS
    with pytest.raises(RuntimeError) as info:
        L.Trainer(accelerator="tpu", devices=1, **QUIET)
    message = str(info.value)
    assert "accelerator='tpu'" in message and "torch_xla" in message and "not installed" in message
    assert "pip install" in message and "torch_xla[tpu]==" in message
    assert acc.probe().tpu_count == 0  # and the probe finds no TPU, so "auto" stays on what there is


def test_a_tpu_run_uses_the_xla_device_and_runs_the_graph_once_per_step(fake_xla):
    reference = make_class(L)()
    L.Trainer(accelerator="cpu", devices=1, max_epochs=2, **QUIET).fit(reference, dataloader())
    model = make_class(L)()
    trainer = L.Trainer(accelerator="tpu", devices=1, max_epochs=2, **QUIET)
    assert trainer.accelerator.name == "xla" and trainer.accelerator.describe() == "tpu (xla) (1 device)"
    assert isinstance(trainer.strategy, ember_xla.XLAStrategy) and fake_xla.devices_asked == [0]
    trainer.fit(model, dataloader())
    assert fake_xla.syncs == 2 * 3 + 1  # before each of the 6 steps, and once at the end
    assert trainer.global_step == 6 and torch.equal(model.final_bias, reference.final_bias)


def test_tpu_devices_follow_lightnings_forms(fake_xla):
    assert acc.choose("tpu", 1).device_ids == (0,)
    assert acc.choose("tpu", [2]).device_ids == (2,) and fake_xla.cores == 4
    for several in ("auto", 4, "4"):
        with pytest.raises(NotImplementedError, match="4 TPU cores.*Use devices=1"):
            acc.choose("tpu", several)
    with pytest.raises(ValueError, match=r"devices=3\) is not valid; allowed: 1, 4 \(every core\)"):
        acc.choose("tpu", 3)
    with pytest.raises(ValueError, match=r"devices=\[4\]"):
        acc.choose("tpu", [4])


def test_auto_prefers_a_tpu_and_other_strategies_on_a_tpu_are_refused(fake_xla):
    tpu_machine = acc.MachineProbe(cuda_count=2, mps=False, tpu_count=8)
    assert acc.choose("auto", 1, tpu_machine).name == "xla"
    with pytest.raises(NotImplementedError, match="strategy='ddp'.*one core"):
        L.Trainer(accelerator="tpu", devices=1, strategy="ddp", **QUIET)
    fake_xla.cores = 0
    with pytest.raises(RuntimeError, match="torch_xla is installed but finds no TPU"):
        acc.choose("tpu", 1)
