"""Root pytest configuration (loaded for tests/ and for the nbval run of notebooks/).

* The notebooks write their runs to ``$DESTSEG_RUNS`` (default ``runs/notebooks``): point it at a
  fresh temporary folder so that a test run never loads a checkpoint left by an earlier session or
  library version, and never leaves one behind in the checkout.
* ``$DESTSEG_NOTEBOOK_PRESET=ci``: nbval executes every notebook at the tiny ``ci`` preset (seconds),
  whatever their parameters cell says (``quick``, the preset of the stored outputs).  The cells it
  compares (``# NBVAL_CHECK_OUTPUT``) print only what does not depend on the preset or on the CPU.
  Set the variable yourself to run them at another preset.
* Disk: one checkpoint is ~100 MB (~200 MB with the optimiser state), and a full run writes dozens.
  The temporary runs folder made here is removed when pytest ends, and ``pyproject.toml`` sets
  ``tmp_path_retention_policy = "failed"``: a passing test's ``tmp_path`` is deleted as soon as it
  ends (kept only for failures, to inspect).  Without both, one run left ~15 GB under /tmp and CI
  ran out of disk.
"""
import os
import shutil
import tempfile

_RUNS_MADE_HERE = None


def pytest_configure(config):
    global _RUNS_MADE_HERE
    if "DESTSEG_RUNS" not in os.environ:
        _RUNS_MADE_HERE = tempfile.mkdtemp(prefix="destseg-runs-")
        os.environ["DESTSEG_RUNS"] = _RUNS_MADE_HERE
    os.environ.setdefault("DESTSEG_NOTEBOOK_PRESET", "ci")


def pytest_unconfigure(config):
    if _RUNS_MADE_HERE is not None:
        shutil.rmtree(_RUNS_MADE_HERE, ignore_errors=True)
