"""Root pytest configuration (loaded for tests/ and for the nbval run of notebooks/).

* The notebooks write their runs to ``$DESTSEG_RUNS`` (default ``runs/notebooks``): point it at a
  fresh temporary folder so that a test run never loads a checkpoint left by an earlier session or
  library version, and never leaves one behind in the checkout.
* ``$DESTSEG_NOTEBOOK_PRESET=ci``: nbval executes every notebook at the tiny ``ci`` preset (seconds),
  whatever their parameters cell says (``quick``, the preset of the stored outputs).  The cells it
  compares (``# NBVAL_CHECK_OUTPUT``) print only what does not depend on the preset or on the CPU.
  Set the variable yourself to run them at another preset.
"""
import os
import tempfile


def pytest_configure(config):
    os.environ.setdefault("DESTSEG_RUNS", tempfile.mkdtemp(prefix="destseg-runs-"))
    os.environ.setdefault("DESTSEG_NOTEBOOK_PRESET", "ci")
