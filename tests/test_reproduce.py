"""The reproduction batch (``destseg reproduce``): aggregation against hand-computed values, and a
tiny two-category MVTec-layout dataset through the whole batch — a crashing run, resume, the
submitit local executor, papermill records, and a kill mid-way followed by a restart."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from destseg_lib import paper, reproduce
from destseg_lib.reproduce import Grid, ReproduceError, run_batch, summarize

REPO = Path(__file__).resolve().parents[1]
KEYS = reproduce.KEYS


def _row(group, variant, seed, dataset="mvtec", state="done", **metrics):
    cat = group.split("/", 1)[1] if "/" in group else ""
    r = {"dataset": dataset, "category": cat, "group": group, "variant": variant, "seed": seed,
         "method": "DeSTSeg", "state": state, "seconds": 1, "error": ""}
    r.update({k: metrics.get(k, math.nan) for k in KEYS})
    return r


# ------------------------------------------------------------------------------------ aggregation
def test_mean_and_sample_std_over_seeds_by_hand():
    rows = [_row("mvtec/bottle", "destseg", 0, image_auroc=90.0, pixel_ap=50.0),
            _row("mvtec/bottle", "destseg", 1, image_auroc=94.0, pixel_ap=54.0),
            _row("mvtec/bottle", "destseg", 2, image_auroc=98.0, pixel_ap=58.0),
            _row("mvtec/bottle", "destseg", 3, state="failed", image_auroc=0.0)]  # not counted
    (s,) = summarize(rows)
    assert s["n"] == 3
    assert s["image_auroc_mean"] == pytest.approx(94.0)
    assert s["image_auroc_std"] == pytest.approx(4.0)  # sqrt((16 + 0 + 16) / 2)
    assert s["pixel_ap_mean"] == pytest.approx(54.0) and s["pixel_ap_std"] == pytest.approx(4.0)
    assert math.isnan(s["aupro_mean"])  # no run had it


def test_the_average_over_categories_is_taken_per_seed_first():
    # seed 0: (80 + 90) / 2 = 85; seed 1: (84 + 98) / 2 = 91 -> 88 ± sqrt(18) = 4.2426
    rows = [_row("mvtec/bottle", "destseg", 0, image_auroc=80.0), _row("mvtec/cable", "destseg", 0, image_auroc=90.0),
            _row("mvtec/bottle", "destseg", 1, image_auroc=84.0), _row("mvtec/cable", "destseg", 1, image_auroc=98.0),
            _row("mvtec/bottle", "destseg", 2, image_auroc=99.0)]  # seed 2 lacks cable: not in the average
    summary = summarize(rows)
    avg = next(r for r in summary if r["category"] == "average")
    assert (avg["n"], avg["n_categories"]) == (2, 2)
    assert avg["image_auroc_mean"] == pytest.approx(88.0)
    assert avg["image_auroc_std"] == pytest.approx(math.sqrt(18.0))
    bottle = next(r for r in summary if r["group"] == "mvtec/bottle")
    assert bottle["n"] == 3 and bottle["image_auroc_mean"] == pytest.approx((80 + 84 + 99) / 3)


def test_paper_comparison_deltas_and_within_std_by_hand(tmp_path):
    grid = Grid.from_dict({"datasets": [{"dataset": "mvtec", "data_root": str(tmp_path), "categories": ["bottle"]}],
                           "variants": ["destseg", "no_l1"], "preset": "ci"})
    ref = paper.paper_table("bottle")
    pm, ps = ref["pixel_auroc"]
    im, is_ = ref["iap"]
    summary = [{"dataset": "mvtec", "category": "bottle", "group": "mvtec/bottle", "variant": v, "n": 3,
                "n_categories": 1, **{f"{k}_{x}": math.nan for k in KEYS for x in ("mean", "std")}}
               for v in ("destseg", "no_l1")]
    summary[0].update(pixel_auroc_mean=pm + ps + 0.2, pixel_auroc_std=0.1,  # just outside
                      iap_interp_mean=im - ps / 2, iap_interp_std=0.3,  # the paper's IAP is the interpolated one
                      iap_mean=0.0)
    comp = reproduce.paper_comparison(summary, grid)
    assert {c["variant"] for c in comp} == {"destseg"}  # no_l1 is an ablation, not the paper's DeSTSeg
    by = {c["metric"]: c for c in comp}
    assert by["pixel_auroc"]["delta"] == pytest.approx(ps + 0.2) and by["pixel_auroc"]["within"] is False
    assert by["iap"]["ours_key"] == "iap_interp"
    assert by["iap"]["delta"] == pytest.approx(-ps / 2) and by["iap"]["within"] is (ps / 2 <= is_ + 0.05)
    assert by["image_auroc"]["paper_mean"] is None  # the paper gives no per-category image AUROC
    assert paper.within_std(95.0, 94.0, 0.95) and not paper.within_std(95.0, 94.0, 0.9)


def test_bad_grids_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(ReproduceError, match="unknown variant"):
        Grid.from_dict({"variants": ["nope"]})
    with pytest.raises(ReproduceError, match="unknown keys"):
        Grid.from_dict({"seedz": [0]})
    with pytest.raises(ReproduceError, match="student_steps"):
        Grid.from_dict({"variants": [{"name": "x", "overrides": {"student_steps": "many"}}]}).runs()


# ------------------------------------------------------------------------------------ whole batches
@pytest.fixture(scope="module")
def two_categories(tmp_path_factory) -> Path:
    from destseg_lib.toy import make_toy_dataset

    root = tmp_path_factory.mktemp("mvtec_tiny")
    for i, cat in enumerate(("part_a", "part_b")):
        make_toy_dataset(root, n_train=6, n_test_good=3, n_per_defect=1, size=64, seed=i, category=cat)
    return root


def _grid(root, variants, categories=("part_a", "part_b"), seeds=(0,)) -> Grid:
    return Grid.from_dict({"name": "tiny", "preset": "ci", "datasets": [
        {"dataset": "mvtec", "data_root": str(root), "categories": list(categories)}],
        "seeds": list(seeds), "variants": variants, "device": "cpu", "figures": False})


def _log(out: Path) -> str:
    return (out / "batch.log").read_text()


@pytest.mark.slow
def test_batch_with_a_crashing_run_then_resume(two_categories, tmp_path):
    crash = {"name": "crash", "overrides": {"texture_dir": str(tmp_path / "no_such_textures")}}
    grid = _grid(two_categories, ["destseg", "dest_only", crash])
    out = tmp_path / "batch"
    res = run_batch(grid, out, executor="inline", engine="library", progress=False, echo=None)
    assert res.counts == {"done": 4, "failed": 2} and res.ran == 6
    st = json.loads((out / "runs" / "mvtec-part_a" / "crash" / "seed0" / "status.json").read_text())
    assert st["state"] == "failed" and "no_such_textures" in st["error"] and "Traceback" in st["traceback"]
    for name in ("results.csv", "summary.csv", "summary.md", "REPORT.md", "grid.json"):
        assert (out / name).is_file(), name
    assert (out / "figures" / "categories.png").is_file()
    summary = (out / "summary.md").read_text()
    assert "part_a" in summary and "average" in summary and "dest_only" in summary
    # the training-free baseline: one row per category and seed, the values of the first run's metrics.json
    rows = reproduce.collect(out, grid)
    base = [r for r in rows if r["variant"] == "nn_baseline"]
    assert sorted(r["category"] for r in base) == ["part_a", "part_b"] and "nn_baseline" in summary
    m = json.loads((out / "runs" / "mvtec-part_a" / "destseg" / "seed0" / "metrics.json").read_text())
    got = next(r for r in base if r["category"] == "part_a")
    assert math.isclose(got["pixel_ap"], 100 * m["results"]["NN-baseline"]["pixel_ap"])
    assert not math.isclose(got["pixel_ap"], 100 * m["results"]["DeSTSeg"]["pixel_ap"])
    report = (out / "REPORT.md").read_text()
    assert "crash" in report and "failed" in report
    done_model = out / "runs" / "mvtec-part_b" / "destseg" / "seed0" / "model.pt"
    mtime = done_model.stat().st_mtime_ns

    again = run_batch(grid, out, executor="inline", engine="library", progress=False, echo=None,
                      retry_failed=False)
    assert (again.ran, again.skipped) == (0, 6)
    retried = run_batch(grid, out, executor="inline", engine="library", progress=False, echo=None)
    assert (retried.ran, retried.skipped) == (2, 4) and retried.counts == {"done": 4, "failed": 2}
    assert done_model.stat().st_mtime_ns == mtime  # finished runs are never redone
    assert _log(out).count("skip     mvtec-part_b/destseg/seed0 (done)") == 2


@pytest.mark.slow
def test_submitit_local_executor_and_papermill_records(two_categories, tmp_path):
    pytest.importorskip("submitit")
    pytest.importorskip("papermill")
    grid = _grid(two_categories, ["destseg"], categories=("part_a",))
    out = tmp_path / "batch"
    res = run_batch(grid, out, executor="submitit-local", engine="papermill", workers=1, progress=False,
                    echo=None, poll_s=0.2)
    run_dir = out / "runs" / "mvtec-part_a" / "destseg" / "seed0"
    assert res.counts == {"done": 1}, (run_dir / "log.txt").read_text() if (run_dir / "log.txt").exists() else ""
    nb = json.loads((run_dir / "run.ipynb").read_text())
    params = next(c for c in nb["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", []))
    assert "seed = 0" in "".join(params["source"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["config"]["seed"] == 0 and "DeSTSeg" in metrics["results"]
    assert list((out / "submitit").glob("*_result.pkl"))  # submitit really ran the job


@pytest.mark.slow
def test_killed_batch_restarts_without_redoing_finished_runs(two_categories, tmp_path):
    out = tmp_path / "batch"
    cmd = [sys.executable, "-m", "destseg_lib.reproduce", "--dataset", "mvtec", "--data-root", str(two_categories),
           "--categories", "part_a", "part_b", "--seeds", "0", "1", "--variants", "destseg", "--preset", "ci",
           "--device", "cpu", "--no-figures", "--engine", "library", "--quiet", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and "done     " not in (_log(out) if (out / "batch.log").exists() else ""):
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)  # no handler runs: the worst case
    first.wait()
    log1 = _log(out)
    finished = [ln.split()[2] for ln in log1.splitlines() if ln.split()[1:2] == ["done"]]
    assert finished, log1
    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    log2 = _log(out)[len(log1):]
    for key in finished:
        assert f"skip     {key} (done)" in log2 and f"start    {key}" not in log2
    states = [json.loads(p.read_text())["state"] for p in (out / "runs").glob("*/*/seed*/status.json")]
    assert sorted(states) == ["done"] * 4


def test_the_papermill_engine_without_papermill_is_one_clear_error(monkeypatch):
    """A non-editable install without the [notebooks] extra: --engine papermill says what to
    install before any run starts (it used to fail every run with ModuleNotFoundError); auto falls
    back to the library."""
    from destseg_lib.reproduce.batch import resolve_engine
    from destseg_lib.reproduce.grid import ReproduceError

    monkeypatch.setitem(sys.modules, "papermill", None)  # import papermill -> ImportError
    with pytest.raises(ReproduceError, match=r"destseg-kit\[notebooks\]"):
        resolve_engine("papermill")
    assert resolve_engine("auto") == "library" and resolve_engine("library") == "library"


@pytest.mark.slow
def test_a_toy_batch_started_in_a_fresh_folder_gets_its_toy_set(tmp_path, monkeypatch):
    """From a folder without data/toy (a non-editable install run elsewhere) every run used to fail
    with 'holds no toy dataset': the batch makes it in ./data/toy first, as open_split does."""
    from destseg_lib.reproduce.batch import ensure_toy_data
    from destseg_lib.reproduce.grid import Grid

    monkeypatch.chdir(tmp_path)
    grid = Grid.from_dict({"datasets": [{"dataset": "toy"}], "preset": "ci", "seeds": [0], "variants": ["destseg"]})
    assert grid.targets[0].data_root == str((tmp_path / "data" / "toy").resolve())
    ensure_toy_data(grid)
    assert (tmp_path / "data" / "toy" / "toy_part" / "toy_manifest.json").is_file()
    other = tmp_path / "elsewhere"
    grid = Grid.from_dict({"datasets": [{"dataset": "toy", "data_root": str(other)}], "preset": "ci"})
    ensure_toy_data(grid)  # a data_root of the user's: never written into
    assert not other.exists()
