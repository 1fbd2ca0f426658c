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
