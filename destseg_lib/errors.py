"""The kit's own error types.

Every problem the user can fix (bad config value, bad or missing data, a checkpoint that cannot be
used, a device that is not there, a training run that diverged, an output that cannot be written)
raises a subclass of :class:`DestSegError` whose message names the file / value / field and says
what to do.  The command line prints that message as one line and exits with code 2 (``--debug``
shows the traceback); Python callers can catch :class:`DestSegError`.

Several classes also derive from the built-in exception that was raised before they existed
(``ValueError``, ``FloatingPointError``, ``OSError``), so ``except ValueError`` keeps working.
"""
from __future__ import annotations

__all__ = ["DestSegError", "ConfigError", "DataError", "CheckpointError", "DeviceError",
           "TrainingDivergedError", "OutputError"]


class DestSegError(Exception):
    """Base class: a problem with the user's input, environment or run, with a clear message."""


class ConfigError(DestSegError, ValueError):
    """A config field with an unknown name, a value of the wrong type, or out of range."""


class DataError(DestSegError, ValueError):
    """Bad or missing input data; the message names the path/value and the remedy.

    (Defined here so that it can be caught without importing the data module; re-exported as
    ``destseg_lib.data.DataError``.)"""


class CheckpointError(DestSegError, ValueError):
    """A checkpoint that is damaged, not a destseg-kit checkpoint, or holds objects a checkpoint
    never holds (and which, if unpickled, could run code: it is refused, not loaded)."""


class DeviceError(DestSegError, ValueError):
    """The requested device (``cuda``, ``cuda:1``, ``mps`` ...) is unknown or not available."""


class TrainingDivergedError(DestSegError, FloatingPointError):
    """A training loss became NaN or infinite (usually: learning rate too high)."""


class OutputError(DestSegError, OSError):
    """An output file (map, figure, metrics) could not be written."""
