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


WIDE_ASPECTS = (2.5, 1.0, 0.5, 2.0)  # width / height, cycled over the images


@pytest.fixture(scope="session")
def wide_root(toy_root, tmp_path_factory) -> Path:
    """The toy dataset with its images and masks stretched to several aspect ratios (landscape
    1:2.5 and 1:2, square, portrait 2:1), in MVTec layout: a non-square dataset for aspect="keep"."""
    import cv2
    import numpy as np

    src, dst = toy_root / "toy_part", tmp_path_factory.mktemp("wide") / "toy_part"
    for k, img_path in enumerate(sorted(p for p in src.rglob("*.png") if "ground_truth" not in p.parts)):
        rel = img_path.relative_to(src)
        img = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
        h = img.shape[0]
        w = int(round(h * WIDE_ASPECTS[k % len(WIDE_ASPECTS)]))
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(dst / rel), cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR))
        mask_path = src / "ground_truth" / rel.parent.name / f"{img_path.stem}_mask.png"
        if rel.parts[0] == "test" and mask_path.exists():
            mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            out = dst / "ground_truth" / rel.parent.name / mask_path.name
            out.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out), (cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST) > 127)
                        .astype(np.uint8) * 255)
    return dst.parent


@pytest.fixture(autouse=True)
def _training_needs_the_slow_marker(request, monkeypatch):
    """A test that trains a model must be marked ``slow`` (``make test-fast`` skips those): in any
    other test, a training run's first step raises (a single ``training_step`` called directly, or a
    run refused before its first step, stays allowed).  Trainings in module- or session-scoped
    fixtures run before this check; every test using such a fixture is marked."""
    if request.node.get_closest_marker("slow") is None:
        import importlib

        train_module = importlib.import_module("destseg_lib.train")

        def refuse(*args, **kwargs):
            raise AssertionError(f"{request.node.nodeid} trains a model: mark it @pytest.mark.slow")

        monkeypatch.setattr(train_module, "training_step", refuse)
    yield
