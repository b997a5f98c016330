import cv2
import numpy as np
import pytest

from destseg_lib.textures import (BuiltinTextures, FolderTextures, TextureError, augment_texture,
                                  make_texture_source)


def _write(path, rng):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))


def test_folder_textures_dtd_layout(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("banded", "bubbly"):
        for i in range(2):
            _write(tmp_path / c / f"{c}_{i:04d}.jpg", rng)
    src = FolderTextures(tmp_path)
    assert len(src) == 4
    t = src.sample(np.random.default_rng(1), (16, 20))
    assert t.shape == (16, 20, 3) and t.dtype == np.float32 and 0 <= t.min() and t.max() <= 1
    assert np.array_equal(t, src.sample(np.random.default_rng(1), (16, 20)))


def test_missing_and_empty_texture_folder(tmp_path):
    with pytest.raises(TextureError, match="does not exist"):
        FolderTextures(tmp_path / "nope")
    (tmp_path / "empty" / "banded").mkdir(parents=True)
    with pytest.raises(TextureError, match="holds no images"):
        FolderTextures(tmp_path / "empty")


def test_unreadable_texture_names_the_file(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(TextureError, match="bad.jpg"):
        FolderTextures(tmp_path).sample(np.random.default_rng(0), (8, 8))


def test_builtin_covers_every_kind():
    src = BuiltinTextures(augment=False)
    rng = np.random.default_rng(0)
    for _ in range(30):
        t = src.sample(rng, (32, 32))
        assert t.shape == (32, 32, 3) and np.isfinite(t).all()
    assert isinstance(make_texture_source(None), BuiltinTextures)


def test_augment_keeps_range():
    img = np.random.default_rng(0).uniform(0, 1, (16, 16, 3)).astype(np.float32)
    for s in range(20):
        out = augment_texture(img, np.random.default_rng(s))
        assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1


def test_real_dtd_subset(shared_data):
    src = FolderTextures(shared_data / "dtd_subset" / "images")
    assert len(src) == 240
    t = src.sample(np.random.default_rng(0), (64, 64), grayscale=True)
    assert np.allclose(t[..., 0], t[..., 2])
