"""The suggestion rules read off a range-test curve."""
import math
import random

import pytest

from ember.tuner import suggest


def _recorded(per_step, beta=0.98):
    """What the range test records for these per-step losses (Lightning's smoothing, step counted from 1)."""
    avg, out = 0.0, []
    for i, loss in enumerate(per_step):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 2)))
    return out


LRS = [1e-4 * (1e4) ** (k / 99) for k in range(100)]
# Neighbouring rates differ by 10**(4/99) = 1.097x; a window of 3 points either side is a factor of 1.32.
WINDOW = 3


def _index_of(rate):
    """The index of the tested rate nearest ``rate`` on a log scale."""
    return min(range(len(LRS)), key=lambda i: abs(math.log(LRS[i] / rate)))


def _assert_near(found, intended_rate):
    index, lr = found
    assert lr == LRS[index]
    assert abs(index - _index_of(intended_rate)) <= WINDOW, (index, lr, _index_of(intended_rate), intended_rate)


def test_steepest_matches_lightnings_rule_on_random_curves():
    lightning_finder = pytest.importorskip("lightning.pytorch.tuner.lr_finder")
    rng = random.Random(0)
    for trial in range(300):
        n = rng.randint(3, 60)
        lrs = sorted(rng.uniform(1e-6, 1.0) for _ in range(n))
        losses = [rng.choice([rng.uniform(0, 5), rng.uniform(0, 5), math.nan, math.inf]) for _ in range(n)]
        skip_begin, skip_end = rng.randint(0, 5), rng.randint(0, 2)
        theirs = lightning_finder._LRFinder("exponential", 1e-6, 1.0, n)
        theirs.results = {"lr": lrs, "loss": losses}
        expected = theirs.suggestion(skip_begin=skip_begin, skip_end=skip_end)
        ours = suggest.steepest(lrs, losses, skip_begin=skip_begin, skip_end=skip_end)
        assert (ours[1] if ours else None) == expected, trial


def test_stable_backs_off_a_tenth_from_where_the_loss_blows_up():
    # Falls until lr ~ 1e-2 (index 49), flat, then explodes from index 75 (lr ~ 1.1).
    per_step = [5.0 - 4.0 * min(k, 49) / 49 for k in range(75)] + [1.0 * 3 ** (k - 74) for k in range(75, 100)]
    # A tenth of the breakdown rate (the centred window sees the rise two points early: index 48 for 50).
    _assert_near(suggest.stable(LRS, _recorded(per_step)), LRS[75] / 10)


def test_stable_takes_the_floor_rate_when_the_curve_settles_without_breaking_down():
    per_step = [max(0.0, 10.0 - 0.25 * k) for k in range(100)]  # reaches 0 at index 40 and stays
    _assert_near(suggest.stable(LRS, _recorded(per_step)), LRS[40])  # the rate at which the floor was reached


def test_stable_handles_a_curve_still_falling_at_the_end():
    per_step = [10.0 - 0.05 * k for k in range(100)]
    # Nothing is known above the last rate: the smaller of LRS[-1] / 10 (0.1) and the rate at which the curve
    # had made half its gain (10 -> 5.05 falls linearly: half-way at point 49.5, lr 0.01).
    assert min(LRS[-1] / 10, LRS[49]) == LRS[49]
    _assert_near(suggest.stable(LRS, _recorded(per_step)), math.sqrt(LRS[49] * LRS[50]))


def test_stable_returns_none_for_too_few_points_and_tolerates_non_finite_tails():
    assert suggest.stable(LRS[:2], [1.0, 0.5]) is None
    per_step = [5.0 - 0.04 * k for k in range(60)] + [math.inf] * 40
    found = suggest.stable(LRS, _recorded(per_step[:60]) + [math.nan] * 40)
    _assert_near(found, LRS[60] / 10)  # the first non-finite point counts as a breakdown


def test_stable_on_a_plateau_before_the_drop_backs_off_from_the_later_breakdown():
    # Flat (rates too small to learn) until point 40, falls to 1 by point 60, flat, explodes from point 80.
    # The plateau must not count as a floor or a breakdown: a tenth of the rate at point 80.
    per_step = [5.0] * 40 + [5.0 - 4.0 * (k - 40) / 20 for k in range(40, 60)] + [1.0] * 20 + \
        [3.0 ** (k - 79) for k in range(80, 100)]
    _assert_near(suggest.stable(LRS, _recorded(per_step)), LRS[80] / 10)
    rng = random.Random(0)
    noisy = [v + rng.gauss(0, 0.1) for v in per_step]  # batch noise of 10% of the final loss
    _assert_near(suggest.stable(LRS, _recorded(noisy)), LRS[80] / 10)


def test_suggest_dispatches_and_rejects_unknown_methods():
    losses = _recorded([5.0 - 0.04 * k for k in range(100)])
    assert suggest.suggest(LRS, losses, method="steepest") == suggest.steepest(LRS, losses)
    assert suggest.suggest(LRS, losses) == suggest.stable(LRS, losses)
    with pytest.raises(ValueError) as info:
        suggest.suggest(LRS, losses, method="valley")
    assert "method" in str(info.value) and "'valley'" in str(info.value) and "steepest" in str(info.value)
