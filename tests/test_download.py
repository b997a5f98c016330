"""Tests for data_download.sh with local file:// archives (no network)."""
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "data_download.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("curl") is None,
                                reason="needs bash and curl")


def _sha(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _tar(path, files, mode):
    """files: {member name: bytes}; names ending in '/' are directories."""
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name.rstrip("/"))
            if name.endswith("/"):
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return path


def _zip(path, files):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _archives(d):
    d.mkdir(exist_ok=True)
    mvtec = _tar(d / "mvtec_anomaly_detection.tar.xz",
                 {"bottle/train/good/000.png": b"png0", "bottle/test/good/000.png": b"t0",
                  "readme.txt": b"MVTec"}, "w:xz")
    dtd = _tar(d / "dtd-r1.0.1.tar.gz", {"dtd/": b"", "dtd/images/banded/banded_0001.jpg": b"j"},
               "w:gz")
    mtd = _zip(d / "master.zip", {"Magnetic-tile-defect-datasets.-master/MT_Free/Imgs/a.jpg": b"a",
                                  "Magnetic-tile-defect-datasets.-master/README.md": b"r"})
    return mvtec, dtd, mtd


def _run(args, **env):
    e = {k: v for k, v in os.environ.items() if not k.startswith("DESTSEG_")}
    e["DESTSEG_PYTHON"] = sys.executable
    e.update(env)
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], env=e, capture_output=True,
                          text=True, timeout=60)


def _env(mvtec_arc=None, dtd_arc=None, mtd_arc=None, **hashes):
    env = {}
    for name, p in (("MVTEC", mvtec_arc), ("DTD", dtd_arc), ("MTD", mtd_arc)):
        if p is not None:
            env[f"DESTSEG_{name}_URL"] = Path(p).as_uri()
            env[f"DESTSEG_{name}_SHA256"] = hashes.get(name.lower(), _sha(p))
    return env


def test_success_then_idempotent(tmp_path):
    mvtec, dtd, mtd = _archives(tmp_path / "src")
    out = tmp_path / "data"
    env = _env(mvtec, dtd, mtd, mtd="")  # MTD: no recorded hash -> warning with computed hash
    r = _run(["all", out], **env)
    assert r.returncode == 0, r.stderr
    assert (out / "mvtec" / "bottle" / "train" / "good" / "000.png").read_bytes() == b"png0"
    assert (out / "dtd" / "images" / "banded" / "banded_0001.jpg").is_file()  # dtd/ unwrapped
    assert (out / "mtd" / "MT_Free" / "Imgs" / "a.jpg").is_file()  # GitHub folder unwrapped
    for n in ("mvtec", "dtd", "mtd"):
        assert (out / n / ".done").is_file()
    assert _sha(mtd) in r.stderr and "DESTSEG_MTD_SHA256" in r.stderr
    assert f"DESTSEG_DATA={out.resolve()}" in r.stdout and "--data-root" in r.stdout
    assert not (out / ".downloads").exists() and not list(out.glob(".*.staging"))
    r2 = _run(["mvtec", "dtd", "mtd", out], **env)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.count("nothing to do") == 3 and "downloading" not in r2.stdout


def test_target_from_env_and_usage(tmp_path):
    mvtec, _, _ = _archives(tmp_path / "src")
    r = _run(["mvtec"], DESTSEG_DATA=str(tmp_path / "envdata"), **_env(mvtec))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "envdata" / "mvtec" / "readme.txt").is_file()
    r = _run([])
    assert r.returncode != 0 and "mvtec, mvtec:<category>, dtd, mtd or all" in r.stderr
    r = _run(["--help"])
    assert r.returncode == 0 and "mvtec:<category>" in r.stdout and "DESTSEG_PYTHON" in r.stdout
    assert "set -euo" not in r.stdout


def test_wrong_hash_fails_and_keeps_nothing(tmp_path):
    mvtec, _, _ = _archives(tmp_path / "src")
    out = tmp_path / "data"
    r = _run(["mvtec", out], **_env(mvtec, mvtec="0" * 64))
    assert r.returncode != 0
    assert "mismatch" in r.stderr and _sha(mvtec) in r.stderr
    assert not (out / "mvtec").exists()
    assert not (out / ".downloads").exists() or not any((out / ".downloads").iterdir())
    r = _run(["mvtec", out], **_env(mvtec))  # the next run starts afresh and succeeds
    assert r.returncode == 0 and (out / "mvtec" / ".done").is_file(), r.stderr


@pytest.mark.parametrize("kind", ["tar_dotdot", "tar_abs", "tar_symlink", "zip_dotdot"])
def test_unsafe_archive_refused(tmp_path, kind):
    src = tmp_path / "src"
    src.mkdir()
    out = tmp_path / "box" / "data"
    if kind == "tar_dotdot":
        arc = _tar(src / "evil.tar.gz", {"ok.txt": b"ok", "../evil": b"x"}, "w:gz")
    elif kind == "tar_abs":
        arc = _tar(src / "evil.tar.gz", {"ok.txt": b"ok", "/tmp/destseg_evil_abs": b"x"}, "w:gz")
    elif kind == "tar_symlink":
        arc = src / "evil.tar.gz"
        with tarfile.open(arc, "w:gz") as tf:
            ti = tarfile.TarInfo("d/link")
            ti.type, ti.linkname = tarfile.SYMTYPE, "../../.."
            tf.addfile(ti)
    else:
        arc = _zip(src / "evil.zip", {"ok.txt": b"ok", "../evil": b"x"})
    r = _run(["dtd", out], **_env(dtd_arc=arc))
    assert r.returncode != 0 and "refusing unsafe archive members" in r.stderr, r.stderr
    assert ("evil" if kind != "tar_symlink" else "d/link -> ../../..") in r.stderr
    assert not (out / "dtd").exists() and not (out.parent / "evil").exists()
    assert not (out / "evil").exists() and not list(out.glob(".*.staging"))


def test_resume_from_partial_download(tmp_path):
    mvtec, _, _ = _archives(tmp_path / "src")
    good = mvtec.read_bytes()
    n = len(good) // 2
    # the served file has a garbage first half: only a real resume (keeping the .part's
    # correct first half and fetching from byte n) yields the expected hash
    served = tmp_path / "served.tar.xz"
    served.write_bytes(b"\0" * n + good[n:])
    out = tmp_path / "data"
    (out / ".downloads").mkdir(parents=True)
    (out / ".downloads" / "mvtec_anomaly_detection.tar.xz.part").write_bytes(good[:n])
    r = _run(["mvtec", out], DESTSEG_MVTEC_URL=served.as_uri(), DESTSEG_MVTEC_SHA256=_sha(mvtec))
    assert r.returncode == 0, r.stderr
    assert f"from byte {n}" in r.stdout
    assert (out / "mvtec" / "bottle" / "test" / "good" / "000.png").read_bytes() == b"t0"


# ---------------------------------------------------------------- nothing gets stuck
def test_oversized_partial_is_discarded_and_the_download_restarted(tmp_path):
    mvtec, _, _ = _archives(tmp_path / "src")
    out = tmp_path / "data"
    (out / ".downloads").mkdir(parents=True)
    part = out / ".downloads" / "mvtec_anomaly_detection.tar.xz.part"
    part.write_bytes(mvtec.read_bytes() + b"\0" * 4096)  # larger than the file: cannot be resumed
    r = _run(["mvtec", out], **_env(mvtec))
    assert r.returncode == 0, r.stderr
    assert "cannot be resumed" in r.stderr and "downloading again from the start" in r.stderr
    assert (out / "mvtec" / ".done").is_file() and not part.exists()


def test_stale_partial_is_discarded_and_the_download_restarted(tmp_path):
    mvtec, _, _ = _archives(tmp_path / "src")
    out = tmp_path / "data"
    (out / ".downloads").mkdir(parents=True)
    part = out / ".downloads" / "mvtec_anomaly_detection.tar.xz.part"
    part.write_bytes(b"\1" * (len(mvtec.read_bytes()) // 2))  # the start of some other file
    r = _run(["mvtec", out], **_env(mvtec))
    assert r.returncode == 0, r.stderr
    assert "was stale" in r.stderr and (out / "mvtec" / ".done").is_file()
    assert (out / "mvtec" / "bottle" / "test" / "good" / "000.png").read_bytes() == b"t0"


def test_html_instead_of_archive_is_moved_aside_and_fetched_again(tmp_path):
    _, _, mtd = _archives(tmp_path / "src")
    page = tmp_path / "src" / "login.html"
    page.write_text("<!DOCTYPE html><html><body>Please sign in</body></html>")
    out = tmp_path / "data"
    r = _run(["mtd", out], DESTSEG_MTD_URL=page.as_uri(), DESTSEG_MTD_SHA256="")  # no published hash
    assert r.returncode != 0
    assert "web page" in r.stderr and "moved it aside" in r.stderr and "run the script again" in r.stderr
    dl = out / ".downloads"
    assert not (dl / "Magnetic-tile-defect-datasets-master.zip").exists()  # not reused as the archive
    assert [p.read_text() for p in dl.glob("*.bad-*")] == [page.read_text()]  # kept for inspection
    assert not (out / "mtd").exists() and not (out / ".mtd.sha256").exists()  # nothing recorded
    r = _run(["mtd", out], DESTSEG_MTD_URL=mtd.as_uri(), DESTSEG_MTD_SHA256="")  # the next run refetches
    assert r.returncode == 0, r.stderr
    assert (out / "mtd" / "MT_Free" / "Imgs" / "a.jpg").is_file()


def test_first_good_download_hash_is_recorded_and_enforced(tmp_path):
    _, _, mtd = _archives(tmp_path / "src")
    out = tmp_path / "data"
    env = dict(DESTSEG_MTD_URL=mtd.as_uri(), DESTSEG_MTD_SHA256="")
    r = _run(["mtd", out], **env)
    assert r.returncode == 0, r.stderr
    record = out / ".mtd.sha256"
    assert record.read_text().split()[0] == _sha(mtd)
    shutil.rmtree(out / "mtd")  # redo the download (e.g. after deleting the data) ...
    other = _zip(tmp_path / "src" / "other.zip", {"Magnetic-tile-defect-datasets.-master/MT_Free/Imgs/b.jpg": b"b"})
    r = _run(["mtd", out], DESTSEG_MTD_URL=other.as_uri(), DESTSEG_MTD_SHA256="")  # ... upstream changed
    assert r.returncode != 0 and "mismatch" in r.stderr and str(record) in r.stderr, r.stderr
    assert _sha(other) in r.stderr and not (out / "mtd").exists()
    r = _run(["mtd", out], **env)  # the recorded file still verifies
    assert r.returncode == 0 and "recorded at the first download" in r.stdout, r.stderr


# ------------------------------------------------------------ one MVTec category (mvtec:<name>)
def _category_archive(path, category="bottle", counts=(209, 83, 63)):
    """A per-category archive as the publisher ships it (one top folder named after the
    category), with `counts` = (train/good, test, ground_truth) PNG files of a few bytes."""
    train, test, masks = counts
    files = {f"{category}/train/good/{i:03d}.png": b"t" for i in range(train)}
    files[f"{category}/license.txt"] = b"CC BY-NC-SA 4.0"
    good = test - masks
    files.update({f"{category}/test/good/{i:03d}.png": b"g" for i in range(good)})
    files.update({f"{category}/test/broken/{i:03d}.png": b"d" for i in range(masks)})
    files.update({f"{category}/ground_truth/broken/{i:03d}_mask.png": b"m" for i in range(masks)})
    return _tar(path, files, "w:xz")


def test_one_category_is_counted_recorded_and_enforced(tmp_path):
    arc = _category_archive(tmp_path / "bottle.tar.xz")
    out = tmp_path / "data"
    env = dict(DESTSEG_MVTEC_BOTTLE_URL=arc.as_uri())
    r = _run(["mvtec:bottle", out], **env)
    assert r.returncode == 0, r.stderr
    bottle = out / "mvtec" / "bottle"
    assert len(list((bottle / "train" / "good").glob("*.png"))) == 209 and (bottle / ".done").is_file()
    assert "file counts ok (train / test / masks: 209 / 83 / 63)" in r.stdout
    record = out / ".mvtec_bottle.sha256"  # no published per-category hash: recorded at first download
    assert record.read_text().split()[0] == _sha(arc)
    assert "DESTSEG_MVTEC_BOTTLE_SHA256" in r.stderr and f"DESTSEG_DATA={out.resolve()}" in r.stdout
    r = _run(["mvtec:bottle", out], **env)
    assert r.returncode == 0 and "nothing to do" in r.stdout and "downloading" not in r.stdout
    # deleted and fetched again, but upstream now serves other bytes: refused against the record
    shutil.rmtree(bottle)
    other = _category_archive(tmp_path / "other.tar.xz", counts=(209, 83, 63))
    with open(other, "ab") as f:
        f.write(b"\0" * 1024)  # same members, other bytes
    r = _run(["mvtec:bottle", out], DESTSEG_MVTEC_BOTTLE_URL=other.as_uri())
    assert r.returncode != 0 and "mismatch" in r.stderr and str(record) in r.stderr, r.stderr
    assert not bottle.exists()
    # a published hash given by the user wins over no hash; a wrong one fails and installs nothing
    r = _run(["mvtec:bottle", tmp_path / "d2"], DESTSEG_MVTEC_BOTTLE_URL=arc.as_uri(),
             DESTSEG_MVTEC_BOTTLE_SHA256="0" * 64)
    assert r.returncode != 0 and "mismatch" in r.stderr and not (tmp_path / "d2" / "mvtec" / "bottle").exists()


def test_a_category_with_the_wrong_file_counts_is_not_installed(tmp_path):
    arc = _category_archive(tmp_path / "bottle.tar.xz", counts=(209, 83, 62))  # one mask short
    out = tmp_path / "data"
    r = _run(["mvtec:bottle", out], DESTSEG_MVTEC_BOTTLE_URL=arc.as_uri())
    assert r.returncode != 0
    assert "train / test / masks = 209 / 83 / 62 PNG files, the official counts are 209 / 83 / 63" in r.stderr
    assert not (out / "mvtec" / "bottle").exists() and not (out / ".mvtec_bottle.sha256").exists()
    assert not list(out.glob(".*.staging")) and list((out / ".downloads").glob("bottle.tar.xz.bad-*"))
    good = _category_archive(tmp_path / "good.tar.xz")  # the next run downloads afresh
    r = _run(["mvtec:bottle", out], DESTSEG_MVTEC_BOTTLE_URL=good.as_uri())
    assert r.returncode == 0, r.stderr


def test_an_interrupted_category_download_resumes(tmp_path):
    arc = _category_archive(tmp_path / "bottle.tar.xz")
    out = tmp_path / "data"
    part = out / ".downloads" / "bottle.tar.xz.part"
    part.parent.mkdir(parents=True)
    data = arc.read_bytes()
    part.write_bytes(data[: len(data) // 2])  # what a cut connection leaves
    (out / ".downloads" / "bottle.tar.xz.part.url").write_text(arc.as_uri() + "\n")
    r = _run(["mvtec:bottle", out], DESTSEG_MVTEC_BOTTLE_URL=arc.as_uri(),
             DESTSEG_MVTEC_BOTTLE_SHA256=_sha(arc))
    assert r.returncode == 0, r.stderr
    assert f"from byte {len(data) // 2}" in r.stdout and (out / "mvtec" / "bottle" / ".done").is_file()


def test_categories_beside_the_whole_archive(tmp_path):
    out = tmp_path / "data"
    r = _run(["mvtec:nope", out])
    assert r.returncode != 0 and "unknown MVTec AD category 'nope'" in r.stderr and "metal_nut" in r.stderr
    cable = _category_archive(tmp_path / "cable.tar.xz", "cable", (224, 150, 92))
    bottle = _category_archive(tmp_path / "bottle.tar.xz")
    env = dict(DESTSEG_MVTEC_BOTTLE_URL=bottle.as_uri(), DESTSEG_MVTEC_CABLE_URL=cable.as_uri())
    r = _run(["mvtec:bottle", "mvtec:cable", out], **env)
    assert r.returncode == 0, r.stderr
    assert (out / "mvtec" / "cable" / "ground_truth" / "broken").is_dir()
    whole, _, _ = _archives(tmp_path / "src")
    r = _run(["mvtec", out], **_env(whole))  # the whole archive would overwrite them: refused, named
    assert r.returncode != 0 and "categories downloaded one by one (bottle cable" in r.stderr, r.stderr
    r = _run(["mvtec", tmp_path / "d2"], **_env(whole))
    assert r.returncode == 0, r.stderr
    r = _run(["mvtec:bottle", tmp_path / "d2"], **env)  # already there from the whole archive
    assert r.returncode == 0 and "from the whole MVTec AD archive" in r.stdout and "downloading" not in r.stdout
