"""Choosing the strategy, the launcher and each rank's device, in-process and without starting anything.

CUDA and NCCL are tested by faking the machine (MachineProbe) and the launcher's variables; the
multi-process behaviour itself is in tests/distributed/.
"""
import sys
import warnings

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, IterableDataset, SequentialSampler, TensorDataset

import ember as L
from ember.runtime import accelerator as acc
from ember.runtime import launcher as launch
from ember.runtime import strategy as strat
from ember.runtime.ddp import DDPStrategy
from ember.runtime.fsdp import FSDPStrategy
from ember.runtime.precision import Precision
from ember.runtime.samplers import DistributedSamplerWrapper, UnrepeatedDistributedSamplerWrapper

FOUR_GPUS = acc.MachineProbe(cuda_count=4, mps=False)
CPU = acc.MachineProbe(cuda_count=0, mps=False)
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR",
               "MASTER_PORT", "EMBER_LAUNCHER_PID", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID", "SLURM_NODEID", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_NAME",
               "SLURM_JOB_ID", "PL_GLOBAL_SEED")


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch):
    """A plain `python script.py` process: nobody launched it."""
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def launched_as(monkeypatch, **env):
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))


def cpu(n):
    return acc.choose("cpu", n, CPU)


def quiet_trainer(**kwargs):
    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     **kwargs)


# --------------------------------------------------------------------------- which strategy
def test_auto_is_one_device_in_one_process_and_ddp_for_more():
    assert type(strat.choose("auto", cpu(1))) is strat.SingleDeviceStrategy
    chosen = strat.choose("auto", cpu(2))
    assert isinstance(chosen, DDPStrategy) and chosen.world_size == 2
    assert isinstance(chosen.launcher, launch.ScriptLauncher)


@pytest.mark.parametrize("name, launcher, start", [
    ("ddp", launch.ScriptLauncher, "popen"),
    ("ddp_spawn", launch.SpawnLauncher, "spawn"),
    ("ddp_fork", launch.SpawnLauncher, "fork"),
    ("ddp_notebook", launch.SpawnLauncher, "fork"),
])
def test_ddp_names_pick_how_processes_start(name, launcher, start):
    chosen = strat.choose(name, cpu(2))
    assert type(chosen.launcher) is launcher and chosen.launcher.start_method == start


def test_ddp_options_reach_distributed_data_parallel():
    assert strat.choose("ddp_find_unused_parameters_true", cpu(2))._ddp_kwargs == {"find_unused_parameters": True}
    s = DDPStrategy(find_unused_parameters=True, static_graph=True, process_group_backend="gloo")
    assert s._ddp_kwargs == {"find_unused_parameters": True, "static_graph": True}
    assert strat.choose(s, cpu(2)) is s and s.backend() == "gloo"


def test_fsdp_by_name_and_by_object():
    assert isinstance(strat.choose("fsdp", cpu(2)), FSDPStrategy)
    s = FSDPStrategy(auto_wrap_policy={torch.nn.Linear}, sharding_strategy="SHARD_GRAD_OP", state_dict_type="sharded")
    assert strat.choose(s, cpu(2)) is s and s.world_size == 2
    with pytest.raises(ValueError, match="sharding_strategy"):
        FSDPStrategy(sharding_strategy="HALF_SHARD")


def test_unknown_or_impossible_strategies_are_clear_errors():
    with pytest.raises(ValueError, match="'ddp_spawn'"):
        strat.choose("horovod", cpu(2))
    with pytest.raises(ValueError, match="strategy='single_device'.*Use strategy='ddp'"):
        strat.choose("single_device", cpu(2))


def test_num_nodes_multiplies_the_processes_and_nothing_starts_before_fit():
    trainer = quiet_trainer(accelerator="cpu", devices=2, num_nodes=3)
    assert (trainer.world_size, trainer.num_nodes, trainer.num_devices) == (6, 3, 2)
    assert trainer.global_rank == 0 and trainer.is_global_zero
    assert not trainer.strategy.launcher._launched


# --------------------------------------------------------------------------- who launched us
def test_torchrun_variables_give_the_ranks_and_ember_launches_nothing(no_launcher):
    launched_as(no_launcher, RANK=3, LOCAL_RANK=1, WORLD_SIZE=4, LOCAL_WORLD_SIZE=2, GROUP_RANK=1,
                MASTER_ADDR="10.0.0.5", MASTER_PORT=29500, TORCHELASTIC_RUN_ID="x")
    trainer = quiet_trainer(accelerator="cpu", devices=2, num_nodes=2)
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank, trainer.world_size) == (3, 1, 1, 4)
    assert not trainer.is_global_zero and trainer.strategy.launcher is None
    assert trainer.strategy.cluster.source == "torchrun"


def test_a_launch_that_disagrees_with_devices_times_num_nodes_says_how_to_fix_it(no_launcher):
    launched_as(no_launcher, RANK=0, LOCAL_RANK=0, WORLD_SIZE=4, MASTER_ADDR="127.0.0.1", MASTER_PORT=1)
    with pytest.raises(ValueError, match="WORLD_SIZE=4.*devices=2 x num_nodes=1.*nproc_per_node"):
        quiet_trainer(accelerator="cpu", devices=2)


def test_slurm_variables_give_the_ranks_and_the_master_node(no_launcher):
    launched_as(no_launcher, SLURM_NTASKS=4, SLURM_PROCID=2, SLURM_LOCALID=0, SLURM_NODEID=1,
                SLURM_JOB_NODELIST="gpu[07-08]", SLURM_JOB_ID=123, SLURM_JOB_NAME="train")
    env = launch.ClusterEnvironment.detect()
    assert (env.source, env.global_rank, env.local_rank, env.node_rank, env.world_size) == ("slurm", 2, 0, 1, 4)
    assert (env.master_addr, env.master_port) == ("gpu07", 20123)


@pytest.mark.parametrize("tasks, name", [("1", "train"), ("4", "bash"), ("4", "interactive")])
def test_one_slurm_task_or_an_interactive_shell_lets_ember_launch(no_launcher, tasks, name):
    launched_as(no_launcher, SLURM_NTASKS=tasks, SLURM_PROCID=0, SLURM_JOB_NAME=name)
    assert launch.ClusterEnvironment.detect().source == "local"


@pytest.mark.parametrize("nodes, first", [("node1", "node1"), ("node[03-05,7],gpu1", "node03"),
                                          ("a[1,3],b[2-4]", "a1"), ("host-1,host-2", "host-1")])
def test_the_first_host_of_a_slurm_node_list(nodes, first):
    assert launch._first_slurm_host({"SLURM_JOB_NODELIST": nodes}) == first


def test_a_ddp_program_that_is_not_a_script_is_told_to_use_a_script_or_ddp_spawn(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["-c"])
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None, raising=False)
    with pytest.raises(RuntimeError, match="ddp_spawn"):
        launch.script_command()


# --------------------------------------------------------------------------- devices and backends (faked CUDA)
@pytest.mark.parametrize("devices, local_rank, device", [("0,2", 1, "cuda:2"), ([1, 3], 0, "cuda:1"), (4, 3, "cuda:3"),
                                                          (-1, 2, "cuda:2")])
def test_each_cuda_rank_gets_its_own_gpu_and_nccl(no_launcher, devices, local_rank, device):
    chosen = acc.choose("gpu", devices, FOUR_GPUS)
    launched_as(no_launcher, RANK=local_rank, LOCAL_RANK=local_rank, WORLD_SIZE=chosen.num_devices,
                MASTER_ADDR="127.0.0.1", MASTER_PORT=1)
    s = strat.choose("auto", chosen)
    s.connect(chosen, Precision("32-true", "cuda"))
    assert isinstance(s, DDPStrategy) and s.root_device == torch.device(device)
    assert s.backend() == "nccl"
    assert DDPStrategy(process_group_backend="gloo").backend() == "gloo"  # an explicit backend wins


def test_cpu_processes_use_gloo():
    s = strat.choose("ddp", cpu(2))
    s.connect(cpu(2), Precision("32-true", "cpu"))
    assert s.root_device == torch.device("cpu") and s.backend() == "gloo"


# --------------------------------------------------------------------------- data
def rank_one_of_two(monkeypatch):
    launched_as(monkeypatch, RANK=1, LOCAL_RANK=1, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=1,
                PL_GLOBAL_SEED=7)
    return strat.choose("ddp", cpu(2))


def dataset(n=10):
    return TensorDataset(torch.arange(n).float())


class Squares(IterableDataset):
    def __iter__(self):
        return iter(range(4))


def test_the_train_sampler_shuffles_even_when_the_loader_does_not(no_launcher):
    """Lightning's rule: the injected train sampler always shuffles, seeded from PL_GLOBAL_SEED."""
    s = rank_one_of_two(no_launcher)
    for shuffle in (True, False):
        loader = s.distribute_loader(DataLoader(dataset(), batch_size=2, shuffle=shuffle, drop_last=True), "train", True)
        sampler = loader.sampler
        assert type(sampler) is DistributedSampler and sampler.shuffle is True
        assert (sampler.num_replicas, sampler.rank, sampler.seed, sampler.drop_last) == (2, 1, 7, False)
        assert loader.batch_size == 2 and loader.drop_last and len(loader) == 2


def test_overfit_batches_turns_the_train_shuffle_off(no_launcher):
    s = rank_one_of_two(no_launcher)
    loader = s.distribute_loader(DataLoader(dataset(), batch_size=2, shuffle=True), "train", True, overfit=True)
    assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.shuffle is False
    assert [int(v) for b in loader for v in b[0]] == [1, 3, 5, 7, 9]


def test_evaluation_samplers_keep_the_loaders_shuffle_and_warn_when_it_shuffles(no_launcher):
    s = rank_one_of_two(no_launcher)
    for stage in ("validate", "test"):
        plain = s.distribute_loader(DataLoader(dataset(), batch_size=2), stage, True)
        assert isinstance(plain.sampler, DistributedSampler) and plain.sampler.shuffle is False
        assert [int(v) for b in plain for v in b[0]] == [1, 3, 5, 7, 9]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rank 1 stays quiet: the warning is rank 0's
        shuffled = s.distribute_loader(DataLoader(dataset(), batch_size=2, shuffle=True), "validate", True)
    assert shuffled.sampler.shuffle is True
    launched_as(no_launcher, RANK=0, LOCAL_RANK=0)
    with pytest.warns(UserWarning, match="The test DataLoader shuffles"):
        strat.choose("ddp", cpu(2)).distribute_loader(DataLoader(dataset(), shuffle=True), "test", True)


def test_a_ddp_strategy_on_one_process_still_injects_the_sampler(no_launcher):
    s = strat.choose("ddp", cpu(1))
    loader = s.distribute_loader(DataLoader(dataset(), batch_size=2), "train", True)
    assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.num_replicas == 1
    assert sorted(int(v) for b in loader for v in b[0]) == list(range(10))


def test_what_is_left_alone(no_launcher):
    s = rank_one_of_two(no_launcher)
    plain = DataLoader(dataset(), batch_size=2)
    assert s.distribute_loader(plain, "train", use_distributed_sampler=False) is plain
    already = DataLoader(dataset(), sampler=DistributedSampler(dataset(), 2, 1))
    assert s.distribute_loader(already, "train", True) is already
    iterable = DataLoader(Squares(), batch_size=2)
    assert s.distribute_loader(iterable, "train", True) is iterable
    assert s.distribute_loader([1, 2], "train", True) == [1, 2]


def test_a_dataloader_subclass_keeps_its_class_and_settings(no_launcher):
    class MyLoader(DataLoader):
        marker = "mine"

    s = rank_one_of_two(no_launcher)
    # (validate: an unshuffled loader stays in order, so the batch can be written down)
    loader = s.distribute_loader(MyLoader(dataset(), batch_size=3, collate_fn=lambda b: b), "validate", True)
    assert type(loader) is MyLoader and loader.batch_size == 3 and list(loader)[0] == [(torch.tensor(1.0),),
                                                                                       (torch.tensor(3.0),),
                                                                                       (torch.tensor(5.0),)]


class Pairs(BatchSampler):
    pass


def test_a_batch_sampler_subclass_is_rebuilt_around_the_distributed_sampler(no_launcher):
    s = rank_one_of_two(no_launcher)
    loader = s.distribute_loader(DataLoader(dataset(), batch_sampler=Pairs(SequentialSampler(dataset()), 2, True)),
                                 "train", True)
    assert type(loader.batch_sampler) is Pairs and loader.batch_sampler.drop_last is True
    inner = loader.batch_sampler.sampler
    assert isinstance(inner, DistributedSampler) and inner.shuffle and loader.sampler is inner  # set_epoch reaches it
    assert len(loader) == 2


def test_a_batch_sampler_that_cannot_be_rebuilt_is_refused_naming_it(no_launcher):
    class Fixed:
        def __iter__(self):
            return iter([[0, 1], [2, 3]])

        def __len__(self):
            return 2

    s = rank_one_of_two(no_launcher)
    with pytest.raises(TypeError, match="batch_sampler \\(Fixed\\).*use_distributed_sampler=False"):
        s.distribute_loader(DataLoader(dataset(), batch_sampler=Fixed()), "train", True)


class EveryOther(torch.utils.data.Sampler):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __iter__(self):
        return iter(list(range(0, self.n, 2)) + list(range(1, self.n, 2)))


def test_a_custom_sampler_is_wrapped_and_its_output_sharded_like_a_dataset(no_launcher):
    s = rank_one_of_two(no_launcher)
    loader = s.distribute_loader(DataLoader(dataset(), batch_size=1, sampler=EveryOther(10)), "train", True)
    assert isinstance(loader.sampler, DistributedSamplerWrapper) and loader.sampler.shuffle
    order = list(EveryOther(10))
    positions = torch.randperm(10, generator=torch.Generator().manual_seed(7)).tolist()[1::2]  # seed 7, epoch 0
    assert [int(b[0]) for b in loader] == [order[p] for p in positions]
    unshuffled = DistributedSamplerWrapper(EveryOther(5), num_replicas=2, rank=1, shuffle=False)
    assert list(unshuffled) == [2, 1, 0]  # positions 1, 3 and the pad (position 0) of [0, 2, 4, 1, 3]


def test_a_sampler_without_length_is_refused_with_the_way_out(no_launcher):
    class Endless(torch.utils.data.Sampler):
        def __iter__(self):
            return iter(range(10))

    s = rank_one_of_two(no_launcher)
    with pytest.raises(TypeError, match="Endless.*no finite __len__.*use_distributed_sampler=False"):
        s.distribute_loader(DataLoader(dataset(), sampler=Endless()), "train", True)


def test_predict_splits_every_sample_once_and_keeps_the_last_short_batch(no_launcher):
    s = rank_one_of_two(no_launcher)
    loader = s.distribute_loader(DataLoader(dataset(5), batch_size=1), "predict", True)
    assert isinstance(loader.sampler, UnrepeatedDistributedSamplerWrapper)
    assert [int(b[0]) for b in loader] == [1, 3]
    assert list(UnrepeatedDistributedSamplerWrapper(range(5), 2, 0, shuffle=False)) == [0, 2, 4]
    assert len(UnrepeatedDistributedSamplerWrapper(range(5), 2, 1)) == 2
    dropping = s.distribute_loader(DataLoader(dataset(7), batch_size=2, drop_last=True), "predict", True)
    assert [[int(v) for v in b[0]] for b in dropping] == [[1, 3], [5]] and not dropping.drop_last
    one = strat.SingleDeviceStrategy().distribute_loader(DataLoader(dataset(5), batch_size=2, drop_last=True), "predict", True)
    assert [len(b[0]) for b in one] == [2, 2, 1]  # one process, too: every sample gets a prediction


# --------------------------------------------------------------------------- one process costs nothing extra
def test_on_one_device_the_step_is_the_modules_own_method_and_collectives_are_identities():
    class Tiny(L.LightningModule):
        def training_step(self, batch, batch_idx):
            return batch

    s = strat.choose("auto", cpu(1))
    module = Tiny()
    assert s.step_method(module, "training_step") == module.training_step
    assert s.launcher is None and s.needs_no_sync is False
    t = torch.tensor([1.0, 2.0])
    assert s.reduce(t) is t and s.all_gather(t) is t and s.broadcast("x") == "x"
    assert s.reduce_boolean_decision(True) is True and s.all_gather_object(3) == [3]
    assert s.distribute_loader("loader", "train", True) == "loader"


def test_ddp_collectives_before_the_process_group_exists_pass_values_through():
    s = strat.choose("ddp", cpu(2))
    t = torch.tensor(2.0)
    assert s.reduce(t) is t and s.broadcast({"a": 1}) == {"a": 1} and s.all_gather(t) is t
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.barrier()
