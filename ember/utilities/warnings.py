"""ember's advisory warnings, and the one switch that silences them.

An advisory is ember guessing that something *might* be unintended: a DataLoader without workers,
modules in eval mode when fit starts, a validation_step without a val loader, a shuffling evaluation
loader, a checkpoint folder that already holds files. On a program where the guess is wrong, the same
lines on every run only teach people to skip warnings, so they can be switched off:

    ember.utilities.quiet_advisories()     # in the program, for the rest of the process
    EMBER_QUIET=1 python train.py          # or from outside, without touching the program

Everything else stays: errors, and the warnings that mean results change or data is lost (a resume
that may differ, a hyperparameter that cannot be saved, precision falling back, ...).
``AdvisoryWarning`` subclasses ``UserWarning``, so existing filters and ``pytest.warns(UserWarning)``
keep working; Lightning's name for it, ``PossibleUserWarning``, is the same class.
"""
from __future__ import annotations

import os
import warnings

QUIET_ENV = "EMBER_QUIET"
_ON = ("1", "true", "yes", "on")
_OFF = ("", "0", "false", "no", "off")


class AdvisoryWarning(UserWarning):
    """A hint about a setting that may well be intended; silenced by ``quiet_advisories()`` or ``EMBER_QUIET=1``."""


PossibleUserWarning = AdvisoryWarning  # Lightning's name, so its filters keep working after the import change

_quiet: bool | None = None  # None: follow $EMBER_QUIET


def quiet_advisories(quiet: bool = True) -> None:
    """Silence ember's advisory warnings from now on (``quiet=False`` brings them back; it also wins over
    ``EMBER_QUIET``). Errors and the warnings about real problems are not affected."""
    global _quiet
    if not isinstance(quiet, bool):
        raise TypeError(f"quiet_advisories(quiet={quiet!r}) needs a bool: True silences ember's advisory "
                        "warnings, False shows them.")
    _quiet = quiet


def advisories_quiet() -> bool:
    """Whether advisories are silenced: the last ``quiet_advisories()`` call, else ``$EMBER_QUIET``.

    Read when a warning is about to be shown (never per batch), so a test runner that resets the warning
    filters around each test does not bring them back.
    """
    if _quiet is not None:
        return _quiet
    value = os.environ.get(QUIET_ENV, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ValueError(f"{QUIET_ENV}={os.environ[QUIET_ENV]!r} is not valid; allowed: one of {', '.join(_ON)} to "
                     f"silence ember's advisory warnings, or 0/false/no/off (or unset) to show them.")


def advise(message: str, stacklevel: int = 2) -> None:
    """``warnings.warn(message, AdvisoryWarning)`` unless advisories are silenced; ``stacklevel`` as for
    ``warnings.warn`` called at the caller's place."""
    if not advisories_quiet():
        warnings.warn(message, AdvisoryWarning, stacklevel=stacklevel + 1)


def disable_possible_user_warnings(module: str = "") -> None:
    """Lightning's switch: ignore ``PossibleUserWarning`` (ember's advisories), from ``module`` only if given."""
    warnings.filterwarnings("ignore", module=module, category=AdvisoryWarning)
