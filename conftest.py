"""Root pytest configuration (loaded for tests/ and for the nbval run of notebooks/).

The notebooks write their runs to ``$DESTSEG_RUNS`` (default ``runs/notebooks``): point it at a fresh
temporary folder so that a test run never loads a checkpoint left by an earlier session or library
version, and never leaves one behind in the checkout.
"""
import os
import tempfile


def pytest_configure(config):
    os.environ.setdefault("DESTSEG_RUNS", tempfile.mkdtemp(prefix="destseg-runs-"))
