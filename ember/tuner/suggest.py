"""Reading a learning rate off a range-test curve.

Every method takes the two lists a range test records (``lrs[i]`` is the rate
used for step ``i``, ``losses[i]`` the recorder's smoothed loss after it) and
returns ``(index, lr)`` with ``lr == lrs[index]``, one of the tested rates, or
``None`` when too few losses are finite to say anything.

``"steepest"``
    Lightning 2.6.6's rule, reproduced exactly: where the recorded curve falls
    fastest against the learning rate itself. The recorded curve is a running
    mean that trails the real loss by tens of steps, so on easy problems this
    lands far below any rate that trains (0.002 on the StatQuest tutorial,
    whose bias then stops at -2.2 instead of -16.01).
``"stable"`` (the default)
    A tenth of the rate at which the test started to break down, or, when it
    never broke down, the rate at which the loss reached its floor. See
    :func:`stable`.

Only ``math`` is imported at module level (``torch`` inside ``steepest``).
"""
from __future__ import annotations

import math

__all__ = ["DEFAULT_METHOD", "METHODS", "RECORDER_BETA", "stable", "steepest", "suggest"]

DEFAULT_METHOD = "stable"

#: Forget factor of the running mean the range test records (Lightning's ``beta``).
RECORDER_BETA = 0.98


def steepest(lrs: list[float], losses: list[float], skip_begin: int = 10,
             skip_end: int = 1) -> tuple[int, float] | None:
    """Lightning's suggestion: the most negative ``d loss / d lr`` once the ends are skipped.

    Computed the way Lightning computes it (float32 tensors, ``torch.gradient``
    with the rates as coordinates, non-finite losses dropped, and the same
    ``[skip_begin:-skip_end]`` slice, so ``skip_end=0`` leaves nothing), so that
    it returns the very rate Lightning would.
    """
    import torch

    kept_losses = torch.tensor(list(losses)[skip_begin:-skip_end])
    kept_lrs = torch.tensor(list(lrs)[skip_begin:-skip_end])
    finite = torch.isfinite(kept_losses)
    kept_losses, kept_lrs = kept_losses[finite], kept_lrs[finite]
    if len(kept_losses) < 2:  # a gradient needs two points
        return None
    slope = torch.gradient(kept_losses, spacing=[kept_lrs])[0]
    position = int(torch.argmin(slope).item())
    index = int(torch.arange(len(losses))[skip_begin:-skip_end][finite][position].item())
    return index, lrs[index]


def _split_tail(values: list[float]) -> tuple[list[float], bool]:
    """Drop a trailing run of non-finite values (the loss blew up); say whether there was one."""
    end = len(values)
    while end > 0 and not math.isfinite(values[end - 1]):
        end -= 1
    return list(values[:end]), end < len(values)


def _per_step(losses: list[float], beta: float) -> list[float]:
    """Undo the recorder's running mean, giving back each step's own loss (NaN where there was none).

    The recorder keeps ``avg_i = beta * avg_(i-1) + (1 - beta) * loss_i`` and
    stores ``avg_i / (1 - beta ** (i + 2))`` (the bias correction counts the
    optimizer step after step ``i``, plus one, as Lightning's does); a step that
    returned no loss is stored as NaN and leaves the mean alone. Both are
    inverted exactly.
    """
    raw = []
    previous = 0.0  # the mean before the first step
    for i, value in enumerate(losses):
        if not math.isfinite(value):
            raw.append(math.nan)
            continue
        mean = value * (1.0 - beta ** (i + 2))
        raw.append((mean - beta * previous) / (1.0 - beta))
        previous = mean
    return raw


def _centred_mean(values: list[float], half_width: int) -> list[float]:
    """Mean of the finite values in a window centred on each point (narrower at the ends)."""
    out = []
    for i in range(len(values)):
        window = [v for v in values[max(0, i - half_width):i + half_width + 1] if not math.isnan(v)]
        out.append(sum(window) / len(window) if window else math.nan)
    return out


def _nearest(lrs: list[float], target: float, first: int, last: int) -> int:
    """Index in ``[first, last]`` of the tested rate closest to ``target`` on a log scale."""
    def distance(i: int) -> float:
        if lrs[i] > 0 and target > 0:
            return abs(math.log(lrs[i] / target))
        return abs(lrs[i] - target)
    return min(range(first, last + 1), key=distance)


def stable(lrs: list[float], losses: list[float], skip_begin: int = 0, skip_end: int = 0, *,
           safety: float = 10.0, give_back: float = 0.5, floor_tolerance: float = 0.01,
           window: float = 0.04, significance: float = 3.0,
           beta: float | None = RECORDER_BETA) -> tuple[int, float] | None:
    """A rate that trains: a tenth of where the range test broke down, or where it hit the floor.

    Reading the curve. The recorded losses trail the real ones by tens of
    steps, so the per-step losses are recovered first (``beta`` is the
    recorder's forget factor; ``None`` means ``losses`` are per-step already),
    then averaged over a centred window of ``window * len(losses)`` points on
    each side, which damps batch noise without shifting anything. On that
    curve, ``start`` is the first value, ``low`` the minimum, ``gain`` their
    difference, and ``noise`` how far the curve wanders by chance (from the
    median step between neighbours).

    Choosing the rate.

    * Broke down: after its minimum the curve climbs above
      ``low + max(give_back * gain, significance * noise)`` (it gave back half
      of what it had won, by more than noise), or it ends in non-finite values.
      Training at a fixed rate fails well below the rate at which a short ramp
      starts failing (measured: 3 to 25 times below), and a rate too small
      costs far less than one too large, so the first rate past that point is
      divided by ``safety``.
    * Reached a floor: no breakdown, and the curve got within
      ``floor_tolerance * gain`` of its minimum with a window's worth of points
      to spare. The test itself finished the job at that rate, with more
      steps to come at larger ones, so a fixed-rate run at it will too: it is
      returned as is. (This is what a small convex problem looks like, such as
      the StatQuest tutorial, where ``steepest`` fails.)
    * Neither (still falling at the end, or a curve that never moved): nothing
      is known above the largest rate; take the smaller of that rate divided by
      ``safety`` and the rate at which the curve had made half its gain.

    The answer is the tested rate nearest the target on a log scale, within
    ``[skip_begin, len(lrs) - 1 - skip_end]`` when that is not empty (the whole
    curve is still read). ``None`` if fewer than three losses are finite.
    """
    n = len(losses)
    if len(lrs) != n:
        raise ValueError(f"lrs and losses must have the same length, got {len(lrs)} and {n}")
    kept, blew_up = _split_tail(list(losses))
    raw = _per_step(kept, beta) if beta is not None else [v if math.isfinite(v) else math.nan for v in kept]
    if sum(1 for v in raw if not math.isnan(v)) < 3:
        return None

    half_width = max(1, round(window * len(raw)))
    curve = _centred_mean(raw, half_width)
    points = [i for i, v in enumerate(curve) if not math.isnan(v)]
    lowest = min(points, key=lambda i: curve[i])
    low = curve[lowest]
    gain = max(curve[points[0]] - low, 0.0)
    steps = sorted(abs(curve[b] - curve[a]) for a, b in zip(points, points[1:]))
    # Neighbouring window means differ by two points' worth of noise; scale back to one mean's.
    noise = 1.4826 * steps[len(steps) // 2] * math.sqrt((2 * half_width + 1) / 2)

    level = low + max(give_back * gain, significance * noise)
    rise = next((i for i in points if i > lowest and curve[i] > level), None)
    if rise is not None or blew_up:
        edge = rise if rise is not None else len(kept)  # else: the first non-finite point
        target = lrs[edge] / safety
    else:
        floor = next(i for i in points if curve[i] <= low + floor_tolerance * gain)
        if gain > significance * noise and floor < points[-1] - half_width:
            target = lrs[floor]
        else:
            halfway = next(i for i in points if curve[i] <= low + 0.5 * gain)
            target = min(lrs[points[-1]] / safety, lrs[halfway])

    first, last = skip_begin, n - 1 - skip_end
    if not 0 <= first <= last:
        first, last = 0, n - 1
    index = _nearest(lrs, target, first, last)
    return index, lrs[index]


METHODS = {"stable": stable, "steepest": steepest}


def suggest(lrs: list[float], losses: list[float], method: str = DEFAULT_METHOD,
            **kwargs: object) -> tuple[int, float] | None:
    """Apply the named method (see ``METHODS``); keyword arguments go to it."""
    chosen = METHODS.get(method)
    if chosen is None:
        raise ValueError(f"suggest() got method={method!r}; the argument 'method' must be one of "
                         f"{', '.join(repr(m) for m in sorted(METHODS))}")
    return chosen(lrs, losses, **kwargs)
