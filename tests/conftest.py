import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    """A small toy dataset (MVTec layout), made once per test session."""
    from destseg_lib.toy import make_toy_dataset

    return make_toy_dataset(tmp_path_factory.mktemp("toy"), n_train=8, n_test_good=4, n_per_defect=2, size=80)


@pytest.fixture(scope="session")
def toy_split(toy_root):
    from destseg_lib.data import mvtec_split

    return mvtec_split(toy_root, "toy_part")


@pytest.fixture
def ci_cfg():
    from destseg_lib.config import get_preset

    return get_preset("ci")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``$DESTSEG_DATA`` (the folder holding mtd/ and dtd_subset/); skip when unset."""
    root = os.environ.get("DESTSEG_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("DESTSEG_DATA not set: real-data test skipped")
    return Path(root)
