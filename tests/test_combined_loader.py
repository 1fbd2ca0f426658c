"""CombinedLoader on its own, and the single-loader fast path it must not touch."""
from __future__ import annotations

import math

import pytest
from torch.utils.data import DataLoader, IterableDataset

import ember as L
from boring import BoringLinear, sum_dataset
from ember.utilities import CombinedLoader
from ember.utilities.combined_loader import CombinedLoader as SameClass
from ember.utilities.combined_loader import ZippedBatches

A, B = [0, 1, 2, 3, 4], [10, 11, 12]


def test_importable_where_lightning_has_it():
    assert CombinedLoader is SameClass
    from ember.pytorch.utilities.combined_loader import CombinedLoader as Aliased

    assert Aliased is CombinedLoader


@pytest.mark.parametrize("mode,expected", [
    ("min_size", [([0, 10], 0, 0), ([1, 11], 1, 0), ([2, 12], 2, 0)]),
    ("max_size_cycle", [([0, 10], 0, 0), ([1, 11], 1, 0), ([2, 12], 2, 0), ([3, 10], 3, 0), ([4, 11], 4, 0)]),
    ("max_size", [([0, 10], 0, 0), ([1, 11], 1, 0), ([2, 12], 2, 0), ([3, None], 3, 0), ([4, None], 4, 0)]),
    ("sequential", [(0, 0, 0), (1, 1, 0), (2, 2, 0), (3, 3, 0), (4, 4, 0), (10, 0, 1), (11, 1, 1), (12, 2, 1)]),
])
def test_each_mode_yields_batch_index_and_loader_index(mode, expected):
    combined = CombinedLoader([A, B], mode)
    assert list(combined) == expected
    assert len(combined) == len(expected)
    assert list(combined) == expected  # a second pass starts from the beginning


def test_dicts_and_nesting_keep_their_structure():
    combined = CombinedLoader({"x": [A, B], "y": B}, "min_size")
    assert combined.flattened == [A, B, B]
    assert list(combined)[0] == ({"x": [0, 10], "y": 10}, 0, 0)
    assert combined.sampler == {"x": [None, None], "y": None}


def test_limits_cut_each_loader_in_sequential_and_the_pass_in_zipping_modes():
    seq = CombinedLoader([A, B], "sequential")
    seq.limits = [2, 1]
    assert list(seq) == [(0, 0, 0), (1, 1, 0), (10, 0, 1)] and len(seq) == 3
    cycle = CombinedLoader([A, B], "max_size_cycle")
    cycle.limits = 4
    assert len(cycle) == 4 and [b for b, _, _ in cycle] == [[0, 10], [1, 11], [2, 12], [3, 10]]
    with pytest.raises(ValueError, match=r"limits=\[1\].*2 numbers"):
        cycle.limits = [1]


def test_bad_mode_and_bad_flattened_are_refused_with_the_value():
    with pytest.raises(ValueError, match=r"mode='zip'.*'min_size', 'max_size_cycle', 'max_size', 'sequential'"):
        CombinedLoader([A], "zip")
    combined = CombinedLoader({"a": A, "b": B})
    with pytest.raises(ValueError, match="got 1 loaders; it holds 2"):
        combined.flattened = [A]
    combined.flattened = [B, A]
    assert combined.iterables == {"a": B, "b": A}


def test_len_of_an_unsized_loader_is_a_type_error():
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(3))

    combined = CombinedLoader([A, DataLoader(Stream())], "max_size_cycle")
    with pytest.raises(TypeError, match="no length"):
        len(combined)


def test_one_train_loader_is_iterated_as_it_is():
    # The hot path: no wrapper around a single DataLoader, so no extra call per batch.
    loader = DataLoader(sum_dataset(8), batch_size=4)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False)
    trainer.fit(BoringLinear(), loader)
    assert trainer.data.train_iterable is trainer.train_dataloader is loader
    assert not isinstance(trainer.data.train_iterable, ZippedBatches)
    assert trainer.num_training_batches == 2 and trainer.global_step == 2
    assert math.isinf(trainer.data.val_check_seconds)  # no time-based validation, no clock read
