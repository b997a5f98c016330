"""Reproduction batches: {dataset/category} x {seed} x {variant} -> one record per run, the paper's
tables side by side, figures and a ``REPORT.md``.

    destseg reproduce grid.json --out runs/repro          # or: python -m destseg_lib.reproduce ...
    destseg reproduce --dataset mtd --seeds 0 1 2 --variants ablations --preset quick --out runs/mtd

or from Python::

    from destseg_lib import reproduce
    grid = reproduce.Grid.from_file("grid.json")           # or reproduce.Grid(...)
    result = reproduce.run_batch(grid, "runs/repro", workers=1)
    print(result.report)                                   # runs/repro/REPORT.md

**Grid.**  A JSON file (YAML too when PyYAML is installed; it comes with papermill)::

    {
      "name": "MTD ablations",                    # a title for REPORT.md (optional)
      "preset": "quick",                          # base preset: "paper", "quick" or "ci"
      "overrides": {"student_steps": 140},        # config fields set in every run (like --set)
      "datasets": [                               # each: dataset, data_root, category / categories
        {"dataset": "mtd"},                       # data_root: default $DESTSEG_DATA
        {"dataset": "mvtec", "data_root": "/data/mvtec", "categories": "all"}
      ],
      "seeds": [0, 1, 2],
      "variants": ["destseg", "dest_only", {"name": "wide", "overrides": {"seg_width": 256}}],
      "device": "auto",                           # per run; "auto" = cuda when available
      "figures": true                             # per-run figures (losses, curves, examples)
    }

A variant is a named set of config overrides applied on top of the preset and the grid's
overrides; built-in names (``VARIANTS``) and groups (``GROUPS``: ``table4``, ``table5``,
``table6``, ``ablations``, ``paper``) can be listed by name.  ``destseg reproduce --list-variants``
prints them.  Relative paths in a grid file are relative to the file.

**Records.**  ``<out>/runs/<dataset[-category]>/<variant>/seed<N>/`` per run: ``run.json`` (what to
run: dataset, seed, variant, the full config), ``status.json`` (``running`` / ``done`` /
``failed`` with the error and traceback / ``interrupted``; written atomically, last), ``log.txt``,
``run.ipynb`` (the executed notebook ``notebooks/reproduce_run.ipynb``, papermill engine),
``metrics.json``, ``model.pt``, ``train_log.csv``, ``per_defect.csv``, ``per_image.csv``,
``figures/``.  A run is finished when its status says ``done`` and its ``metrics.json`` holds the
run's config and method; finished runs are skipped, everything else is (re)run: a run with a
``model.pt`` is re-evaluated without retraining, one with ``checkpoints/last.pt`` resumes.

The batch writes ``grid.json`` (the grid as run), ``batch.log`` (one line per start / skip / end),
``results.csv`` (one row per run), ``summary.csv`` / ``summary.md`` (mean ± std over seeds per
category and averaged over categories), ``figures/categories.png`` and ``figures/ablation.png``,
and ``REPORT.md``.  Numbers in these files are percent; std is the sample std (ddof = 1) over seeds.

**Execution.**  ``executor="local"`` (default): one process per run, ``workers`` at a time;
``"inline"``: in this process (debugging, tests); ``"submitit"``: submitit's AutoExecutor (SLURM
when available, else local processes), ``"submitit-local"``: submitit's LocalExecutor.  Each run
executes the run notebook through papermill (``engine="papermill"``, the default when papermill is
installed) or the same library calls directly (``engine="library"``).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import paper
from .config import PRESETS, DeSTSegConfig, get_preset, parse_field

try:
    from .config import VARIANTS as _CONFIG_VARIANTS
except ImportError:  # pragma: no cover - a config without named variants
    _CONFIG_VARIANTS = {}
from .errors import DestSegError

PKG_ROOT = Path(__file__).resolve().parent
NOTEBOOK = PKG_ROOT.parent / "notebooks" / "reproduce_run.ipynb"

#: Built-in variants: name -> config overrides (on top of the preset and the grid's overrides).
VARIANTS: dict[str, dict] = {
    "destseg": {},  # the paper's DeSTSeg (Table 4 row 8 = Table 5 "w/ L1" = Table 6 "DeSTSeg")
    "dest_only": {"segmentation": False},  # Table 4 row 5 (den+ed): DeST, no segmentation net
    "no_den": {"denoising": False},  # Table 4 row 7 (ed+seg)
    "no_ed": {"student_arch": "plain"},  # Table 4 row 6 (den+seg)
    "no_l1": {"l1_loss": False},  # Table 5 "w/o L1 loss"
    "t4_none": {"denoising": False, "student_arch": "plain", "segmentation": False},  # Table 4 row 1
    "t4_den": {"student_arch": "plain", "segmentation": False},  # Table 4 row 2
    "t4_ed": {"denoising": False, "segmentation": False},  # Table 4 row 3
    "t4_seg": {"denoising": False, "student_arch": "plain"},  # Table 4 row 4
    "concat_input": {"seg_input": "concat"},  # Table 6 "concatenated-ST input"
    "cosine_input": {"seg_input": "cosine"},  # Table 6 "cosine-distance input"
}
if "pfadseg" in _CONFIG_VARIANTS:  # PFADSeg (Song et al. 2025) as config values: config.VARIANTS
    VARIANTS["pfadseg"] = dict(_CONFIG_VARIANTS["pfadseg"])
VARIANT_HELP = {
    "destseg": "the paper's DeSTSeg (T4 #8, T5 w/ L1, T6 product)",
    "dest_only": "DeST only: segmentation net off (T4 #5 den+ed)",
    "no_den": "student sees the clean image (T4 #7 ed+seg)",
    "no_ed": "plain ResNet18 student (T4 #6 den+seg)",
    "no_l1": "segmentation loss without L1 (T5 w/o L1)",
    "t4_none": "vanilla S-T (T4 #1)",
    "t4_den": "denoising only (T4 #2)",
    "t4_ed": "encoder-decoder only (T4 #3)",
    "t4_seg": "segmentation net on a vanilla S-T (T4 #4)",
    "concat_input": "segmentation input: concatenated features (T6)",
    "cosine_input": "segmentation input: cosine distances (T6)",
    "pfadseg": "PFADSeg (Song et al. 2025) as config values, see config.VARIANTS",
}
#: Named groups of variants.
GROUPS: dict[str, list[str]] = {
    "table4": ["t4_none", "t4_den", "t4_ed", "t4_seg", "dest_only", "no_ed", "no_den", "destseg"],
    "table5": ["no_l1", "destseg"],
    "table6": ["concat_input", "cosine_input", "destseg"],
    "ablations": ["destseg", "dest_only", "no_den", "no_ed", "no_l1"],
    "paper": ["destseg"],
}
#: Metrics collected per run (``metrics.evaluate`` keys), reported in percent.
KEYS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "iap", "iap90", "iap_interp", "iap90_interp")
KEY_LABELS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pixel_ap": "pixel AP",
              "aupro": "AUPRO", "iap": "IAP step", "iap90": "IAP@90 step", "iap_interp": "IAP interp.",
              "iap90_interp": "IAP@90 interp."}
#: Columns of the summary tables: the issue's six plus the interpolated IAP the paper reports.
TABLE_KEYS = KEYS
STATES = ("done", "failed", "interrupted", "running")
SUBMITIT_DEFAULTS = {"timeout_min": 240}


class ReproduceError(DestSegError, ValueError):
    """A grid that cannot be run (bad variant, unknown field, records made with another config...)."""


class RunBusy(DestSegError, RuntimeError):
    """Another live process on this machine holds the run."""


# ============================================================================== the grid
@dataclass
class Target:
    """One dataset / category of the grid."""
    dataset: str
    data_root: str | None = None
    category: str | None = None

    @property
    def label(self) -> str:
        return self.dataset + (f"/{self.category}" if self.category else "")

    @property
    def slug(self) -> str:
        return (self.dataset + (f"-{self.category}" if self.category else "")).replace("/", "-").replace(" ", "_")


@dataclass
class Variant:
    name: str
    overrides: dict = field(default_factory=dict)


@dataclass
class RunSpec:
    """One run of the grid: what ``run.json`` holds."""
    target: Target
    variant: Variant
    seed: int
    preset: str
    overrides: dict  # the grid's and the variant's overrides (what the run notebook receives)
    config: dict  # the full resolved config
    device: str = "auto"
    figures: bool = True
    threads: int | None = None

    @property
    def key(self) -> str:
        return f"{self.target.slug}/{self.variant.name}/seed{self.seed}"

    @property
    def method(self) -> str:
        """The method whose numbers the run reports."""
        return "DeSTSeg" if self.config.get("segmentation", True) else "DeST"

    def to_dict(self) -> dict:
        return {"key": self.key, "dataset": self.target.dataset, "data_root": self.target.data_root,
                "category": self.target.category, "label": self.target.label, "variant": self.variant.name,
                "variant_overrides": self.variant.overrides, "seed": self.seed, "preset": self.preset,
                "overrides": self.overrides, "method": self.method, "device": self.device,
                "figures": self.figures, "threads": self.threads, "config": self.config}


def _safe_name(name: str) -> str:
    bad = set(name) - set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.+")
    if not name or bad or name.startswith("."):
        raise ReproduceError(f"variant name {name!r}: use letters, digits and _ - . + only "
                             "(it names a folder)")
    return name


def _parse_overrides(d, where: str) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ReproduceError(f"{where}: overrides must be an object {{field: value}}, got {d!r}")
    out = {}
    for k, v in d.items():
        try:
            out[k] = parse_field(k, v)
        except ValueError as e:
            raise ReproduceError(f"{where}: {e}") from None
    return out


def resolve_variants(spec) -> list[Variant]:
    """Variants from names (built-in variants or groups), ``{"name", "overrides"}`` objects, or a
    ``{name: overrides}`` mapping; duplicates (by name) are dropped, the first kept."""
    items: list = []
    if isinstance(spec, str):
        spec = [s for s in spec.replace(",", " ").split() if s]
    if isinstance(spec, dict):
        spec = [{"name": k, "overrides": v} for k, v in spec.items()]
    for s in spec or []:
        if isinstance(s, str):
            if s in GROUPS:
                items += [Variant(n, dict(VARIANTS[n])) for n in GROUPS[s]]
            elif s in VARIANTS:
                items.append(Variant(s, dict(VARIANTS[s])))
            else:
                raise ReproduceError(f"unknown variant {s!r}: built-in variants are {sorted(VARIANTS)}, groups "
                                     f"{sorted(GROUPS)}; define your own as {{\"name\": ..., \"overrides\": {{...}}}}")
        elif isinstance(s, dict) and "name" in s:
            unknown = set(s) - {"name", "overrides"}
            if unknown:
                raise ReproduceError(f"variant {s.get('name')!r}: unknown keys {sorted(unknown)} "
                                     "(a variant has a name and overrides)")
            items.append(Variant(str(s["name"]), dict(s.get("overrides") or {})))
        else:
            raise ReproduceError(f"variant {s!r}: give a name or {{\"name\": ..., \"overrides\": {{...}}}}")
    out, seen = [], set()
    for v in items:
        if v.name not in seen:
            seen.add(v.name)
            out.append(Variant(_safe_name(v.name), _parse_overrides(v.overrides, f"variant {v.name!r}")))
    if not out:
        raise ReproduceError("the grid has no variant: name at least one (e.g. \"destseg\")")
    return out


def _abs(path, base: Path | None) -> str | None:
    if path in (None, ""):
        return None
    p = Path(os.path.expanduser(str(path)))
    return str(p if p.is_absolute() else ((base or Path.cwd()) / p).resolve())


def resolve_targets(spec, base: Path | None = None) -> list[Target]:
    """``[{"dataset", "data_root", "category" | "categories"}]`` -> targets.  ``data_root`` defaults
    to ``$DESTSEG_DATA`` (``./data/toy`` for the toy data); ``"categories": "all"`` on MVTec AD is
    the paper's 15 categories."""
    from .experiment import default_data_root

    if isinstance(spec, dict):
        spec = [spec]
    out = []
    for s in spec or []:
        if isinstance(s, str):
            s = {"dataset": s}
        unknown = set(s) - {"dataset", "data_root", "category", "categories"}
        if unknown or "dataset" not in s:
            raise ReproduceError(f"dataset entry {s!r}: keys are dataset, data_root, category / categories")
        kind = s["dataset"]
        if kind not in ("toy", "mvtec", "mtd", "folder"):
            raise ReproduceError(f"dataset {kind!r}: choose toy, mvtec, mtd or folder")
        root = _abs(s.get("data_root"), base)
        if root is None:
            if kind == "toy":
                root = str((Path.cwd() / "data" / "toy").resolve())
            else:
                env = default_data_root()
                if env is None:
                    raise ReproduceError(f"dataset {kind!r} needs a data_root (or set DESTSEG_DATA)")
                root = str(env.resolve())
        cats = s.get("categories", s.get("category"))
        if cats == "all":
            if kind != "mvtec":
                raise ReproduceError("\"categories\": \"all\" means MVTec AD's 15 categories: name them for "
                                     f"dataset {kind!r}")
            cats = list(paper.CATEGORIES)
        if cats is None or isinstance(cats, str):
            cats = [cats]
        if kind == "mvtec" and None in cats:
            raise ReproduceError("dataset mvtec needs categories (e.g. [\"bottle\"] or \"all\")")
        if kind == "mtd":
            cats = [None]
        out += [Target(kind, root, c) for c in cats]
    if not out:
        raise ReproduceError("the grid has no dataset")
    return out


@dataclass
class Grid:
    """What to run: targets x seeds x variants at ``preset`` + ``overrides``."""
    targets: list[Target]
    variants: list[Variant]
    seeds: list[int] = field(default_factory=lambda: [0])
    preset: str = "quick"
    overrides: dict = field(default_factory=dict)
    device: str = "auto"
    figures: bool = True
    name: str = ""

    KEYS = ("name", "preset", "overrides", "datasets", "seeds", "variants", "device", "figures")

    @classmethod
    def from_dict(cls, d: dict, base: Path | None = None) -> "Grid":
        unknown = set(d) - set(cls.KEYS)
        if unknown:
            raise ReproduceError(f"grid: unknown keys {sorted(unknown)}; the keys are {list(cls.KEYS)}")
        seeds = d.get("seeds", [0])
        if isinstance(seeds, int):
            seeds = list(range(seeds))  # "seeds": 5 -> 0..4
        try:
            seeds = [int(parse_field("seed", s)) for s in seeds]
        except Exception as e:
            raise ReproduceError(f"grid: seeds must be integers ({e})") from None
        overrides = _parse_overrides(d.get("overrides"), "grid overrides")
        if overrides.get("texture_dir"):
            overrides["texture_dir"] = _abs(overrides["texture_dir"], base)
        return cls(targets=resolve_targets(d.get("datasets", [{"dataset": "toy"}]), base),
                   variants=resolve_variants(d.get("variants", ["destseg"])), seeds=list(dict.fromkeys(seeds)),
                   preset=d.get("preset", "quick"), overrides=overrides, device=str(d.get("device", "auto")),
                   figures=bool(d.get("figures", True)), name=str(d.get("name", "")))

    @classmethod
    def from_file(cls, path) -> "Grid":
        path = Path(path)
        if not path.is_file():
            raise ReproduceError(f"grid file {str(path)!r} does not exist")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ReproduceError(f"{path}: reading YAML needs PyYAML; write the grid as JSON") from None
            try:
                d = yaml.safe_load(text)
            except yaml.YAMLError as e:  # includes !!python/object tags: safe_load refuses to build them
                mark = getattr(e, "problem_mark", None)
                where = f" (line {mark.line + 1})" if mark is not None else ""
                what = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
                raise ReproduceError(f"grid file {path}{where}: not a plain YAML grid ({what}); tags such as "
                                     "!!python/object are refused: write plain keys, lists and numbers") from None
        else:
            try:
                d = json.loads(text)
            except json.JSONDecodeError as e:
                raise ReproduceError(f"grid file {path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ReproduceError(f"grid file {path}: expected an object at the top level")
        return cls.from_dict(d, base=path.resolve().parent)

    def to_dict(self) -> dict:
        datasets = []
        for t in self.targets:
            if datasets and (datasets[-1]["dataset"], datasets[-1]["data_root"]) == (t.dataset, t.data_root) \
                    and t.category is not None:
                datasets[-1]["categories"].append(t.category)
            else:
                datasets.append({"dataset": t.dataset, "data_root": t.data_root,
                                 "categories": [t.category] if t.category is not None else None})
        for d in datasets:
            if d["categories"] is None:
                d.pop("categories")
        return {"name": self.name, "preset": self.preset, "overrides": self.overrides, "datasets": datasets,
                "seeds": self.seeds, "variants": [asdict(v) for v in self.variants], "device": self.device,
                "figures": self.figures}

    def runs(self, threads: int | None = None) -> list[RunSpec]:
        """Every run, seed-major (all of seed 0 first: an interrupted batch has whole seeds done).
        Each config is built (and validated) here, so a bad override fails before any training."""
        out = []
        for seed in self.seeds:
            for t in self.targets:
                for v in self.variants:
                    over = {**self.overrides, **v.overrides}
                    try:
                        cfg = get_preset(self.preset, **{**over, "seed": seed})
                    except ValueError as e:
                        raise ReproduceError(f"variant {v.name!r}: {e}") from None
                    out.append(RunSpec(t, v, seed, self.preset, over, cfg.to_dict(), self.device, self.figures,
                                       threads))
        keys = [r.key for r in out]
        if len(set(keys)) != len(keys):
            raise ReproduceError("two runs of the grid share a folder (a dataset or category listed twice?)")
        return out


# ============================================================================== records
def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync, rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_status(run_dir) -> dict:
    """The run's ``status.json``, or ``{"state": "new"}``."""
    return _read_json(Path(run_dir) / "status.json") or {"state": "new"}


def write_status(run_dir, state: str, **fields) -> dict:
    status = {"state": state, "updated": _now(), "host": socket.gethostname(), "pid": os.getpid(), **fields}
    _atomic_write_text(Path(run_dir) / "status.json", json.dumps(status, indent=2, default=str))
    return status


def _config_diff(saved: dict, config: dict) -> list[str]:
    from .train import config_differences

    try:
        saved = DeSTSegConfig.from_dict(saved).to_dict()
    except Exception:
        pass
    return config_differences(saved, DeSTSegConfig.from_dict(config), evaluation=True)


def run_metrics(run_dir, spec: dict) -> dict | None:
    """The run's metrics (``metrics.json`` ``results[method]``) when they belong to ``spec`` (same
    config, the run's method present); else None."""
    m = _read_json(Path(run_dir) / "metrics.json")
    if not isinstance(m, dict) or not isinstance(m.get("results"), dict):
        return None
    res = m["results"].get(spec["method"])
    if not isinstance(res, dict) or not isinstance(m.get("config"), dict):
        return None
    if _config_diff(m["config"], spec["config"]):
        return None
    if "eval_size" not in m:  # computed before metrics were taken at eval_size: not comparable
        return None
    return res


def is_finished(run_dir, spec: dict) -> bool:
    """Finished = status ``done`` and a ``metrics.json`` that belongs to this run."""
    return read_status(run_dir).get("state") == "done" and run_metrics(run_dir, spec) is not None


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def _held_elsewhere(run_dir) -> dict | None:
    """The lock of a live process on this machine holding the run (else None)."""
    lock = _read_json(Path(run_dir) / ".lock")
    if lock and lock.get("host") == socket.gethostname() and lock.get("pid") != os.getpid() \
            and _pid_alive(lock.get("pid")):
        return lock
    return None


def _claim(run_dir: Path) -> None:
    """Take the run's lock (an O_EXCL file); a lock of a dead process or another host is taken over."""
    path = run_dir / ".lock"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _held_elsewhere(run_dir)
            if held:
                raise RunBusy(f"{run_dir} is being run by pid {held['pid']} on this machine") from None
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "since": _now()}, f)
        return
    raise RunBusy(f"cannot take the lock {path}")


def _release(run_dir: Path) -> None:
    lock = _read_json(run_dir / ".lock")
    if lock and lock.get("pid") == os.getpid() and lock.get("host") == socket.gethostname():
        (run_dir / ".lock").unlink(missing_ok=True)


class _Interrupted(BaseException):
    """SIGTERM (or SIGINT) in a run: record ``interrupted`` and stop."""


def _raise_interrupted(signum, frame):
    raise _Interrupted(f"signal {signum}")


class _Tee:
    """Write to a log file and (optionally) the original stream."""

    def __init__(self, log, stream=None):
        self.log, self.stream = log, stream

    def write(self, s):
        self.log.write(s)
        self.log.flush()
        if self.stream is not None:
            self.stream.write(s)
        return len(s)

    def flush(self):
        self.log.flush()
        if self.stream is not None:
            self.stream.flush()

    def isatty(self):
        return False


def execute_run(run_dir, engine: str = "library", notebook=None, kernel: str | None = None,
                log_to_file: bool = True, echo: bool = False) -> dict:
    """Execute the run described by ``run_dir/run.json`` and record it; returns its status dict.

    The job function of every executor (local processes, submitit, inline).  Writes ``status.json``
    ``running`` first and ``done`` (after ``metrics.json``) or ``failed`` (error + traceback) last;
    an exception in the run never escapes (the batch goes on), an interruption (Ctrl-C, SIGTERM) is
    recorded as ``interrupted`` and re-raised.  ``log_to_file``: also write this process's output
    to ``run_dir/log.txt`` (the local executor redirects the whole process there instead).
    """
    run_dir = Path(run_dir).resolve()
    spec = _read_json(run_dir / "run.json")
    if spec is None:
        raise ReproduceError(f"{run_dir}/run.json is missing or unreadable: not a run folder of a batch")
    try:
        _claim(run_dir)
    except RunBusy as e:
        return {"state": "busy", "error": str(e)}
    t0 = time.perf_counter()
    started = _now()
    log = open(run_dir / "log.txt", "a", encoding="utf-8") if log_to_file else None
    saved = sys.stdout, sys.stderr
    previous_term = None
    try:
        if log is not None:
            sys.stdout = _Tee(log, saved[0] if echo else None)
            sys.stderr = _Tee(log, saved[1] if echo else None)
        try:
            import threading

            if threading.current_thread() is threading.main_thread():
                previous_term = signal.signal(signal.SIGTERM, _raise_interrupted)
        except ValueError:
            pass
        write_status(run_dir, "running", started=started, engine=engine)
        print(f"[{_now()}] run {spec['key']} ({spec['label']}, variant {spec['variant']}, seed {spec['seed']}), "
              f"engine {engine}, host {socket.gethostname()}, pid {os.getpid()}", flush=True)
        if engine == "papermill":
            _run_papermill(spec, run_dir, notebook, kernel)
        elif engine == "library":
            _run_library(spec, run_dir)
        else:
            raise ReproduceError(f"engine {engine!r}: choose papermill or library")
        if run_metrics(run_dir, spec) is None:
            raise ReproduceError(f"the run finished but {run_dir / 'metrics.json'} lacks the {spec['method']} "
                                 "results of this run's config")
        seconds = round(time.perf_counter() - t0, 1)
        print(f"[{_now()}] done in {seconds:.0f} s", flush=True)
        return write_status(run_dir, "done", started=started, finished=_now(), seconds=seconds, engine=engine,
                            method=spec["method"])
    except (KeyboardInterrupt, _Interrupted) as e:
        write_status(run_dir, "interrupted", started=started, seconds=round(time.perf_counter() - t0, 1),
                     error=f"interrupted ({type(e).__name__} {e})".strip(), engine=engine)
        print(f"[{_now()}] interrupted", flush=True)
        raise KeyboardInterrupt from None
    except Exception as e:
        tb = traceback.format_exc()
        print(tb, file=sys.stderr, flush=True)
        return write_status(run_dir, "failed", started=started, finished=_now(),
                            seconds=round(time.perf_counter() - t0, 1), engine=engine,
                            error=f"{type(e).__name__}: {_last_line(str(e))}", traceback=tb)
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        sys.stdout, sys.stderr = saved
        if log is not None:
            log.close()
        _release(run_dir)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else text


def training_logger(total: int):
    """A train callback printing one line every 5 % of ``total`` steps (the runs' logs)."""
    every = max(1, total // 20)
    t0 = time.perf_counter()

    def log(row: dict) -> None:
        step = int(row.get("step", 0)) + 1
        if step == 1 or step % every == 0 or step == total:
            print(f"  step {step}/{total}  stage {row.get('stage')}  loss {row.get('loss', float('nan')):.4f}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return log


def run_one(preset: str, overrides: dict, dataset: str, data_root, category, seed: int, out_dir,
            device: str = "auto", figures: bool = True, threads: int | None = None, log=print):
    """The library calls of one run (what ``notebooks/reproduce_run.ipynb`` shows cell by cell):
    config, data, train-or-load with a progress line every 5 %, then ``experiment.run`` (predict,
    evaluate, write ``metrics.json`` and the figures).  Returns the :class:`experiment.Report`."""
    import torch

    from . import experiment
    from .viz import resolve_device

    if threads:
        torch.set_num_threads(int(threads))
    cfg = get_preset(preset, **{**overrides, "seed": int(seed)})
    split = experiment.open_split(dataset, data_root, category)
    device = resolve_device(device)
    log(f"{split.name}: {len(split.train)} train / {len(split.test)} test images; preset {preset} + {overrides}; "
        f"seed {seed}; {cfg.image_size}px, {cfg.student_steps} + {cfg.seg_steps if cfg.segmentation else 0} steps; "
        f"device {device}, {torch.get_num_threads()} threads")
    try:
        experiment.load_or_train(cfg, split, out_dir, device, progress=False,
                                 callback=training_logger(cfg.total_steps))
    except TypeError:  # a load_or_train without the callback argument
        experiment.load_or_train(cfg, split, out_dir, device, progress=False)
    report = experiment.run(cfg, split, out_dir, device=device, progress=False, figures=figures)
    log(experiment.format_table(report.results))
    return report


def _run_library(spec: dict, run_dir: Path) -> None:
    run_one(spec["preset"], spec["overrides"], spec["dataset"], spec["data_root"], spec["category"], spec["seed"],
            run_dir, spec["device"], spec["figures"], spec.get("threads"))


def notebook_parameters(spec: dict, run_dir) -> dict:
    """The papermill parameters of ``notebooks/reproduce_run.ipynb`` for one run."""
    return {"preset": spec["preset"], "overrides": spec["overrides"], "dataset": spec["dataset"],
            "data_root": spec["data_root"], "category": spec["category"], "seed": spec["seed"],
            "device": spec["device"], "out_dir": str(run_dir), "figures": spec["figures"],
            "threads": spec.get("threads")}


def _run_papermill(spec: dict, run_dir: Path, notebook=None, kernel=None) -> None:
    import logging

    import papermill as pm

    template = Path(notebook) if notebook else NOTEBOOK
    if not template.is_file():
        raise ReproduceError(f"run notebook {template} not found (use engine='library', or pass notebook=)")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("papermill")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        pm.execute_notebook(str(template), str(run_dir / "run.ipynb"), parameters=notebook_parameters(spec, run_dir),
                            cwd=str(template.parent), kernel_name=kernel, progress_bar=False, log_output=True)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# ============================================================================== executors
class _Handle:
    """A run in flight: ``poll()`` returns True once it has ended; ``stop()`` ends it."""

    def __init__(self, spec: RunSpec, run_dir: Path):
        self.spec, self.run_dir, self.started = spec, run_dir, time.perf_counter()
        self.problem: str | None = None  # why it ended without a final status (exit code ...)

    def poll(self) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        pass


class _InlineHandle(_Handle):
    def __init__(self, spec, run_dir, engine, notebook, kernel):
        super().__init__(spec, run_dir)
        execute_run(run_dir, engine, notebook, kernel, log_to_file=True)

    def poll(self):
        return True


def _die_with_parent():  # pragma: no cover - runs in the child
    """Linux: the child gets SIGTERM when the batch process dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class _ProcessHandle(_Handle):
    def __init__(self, spec, run_dir, engine, notebook, kernel):
        super().__init__(spec, run_dir)
        cmd = [sys.executable, "-m", "destseg_lib.reproduce", "_execute", str(run_dir), "--engine", engine]
        if notebook:
            cmd += ["--notebook", str(notebook)]
        if kernel:
            cmd += ["--kernel", kernel]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(PKG_ROOT.parent)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        if spec.threads:
            env.setdefault("OMP_NUM_THREADS", str(spec.threads))
        self.log = open(run_dir / "log.txt", "a", encoding="utf-8")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                     preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)

    def poll(self):
        code = self.proc.poll()
        if code is None:
            return False
        self.log.close()
        if code != 0:
            self.problem = (f"the run's process exited with code {code}" if code > 0 else
                            f"the run's process was killed by signal {-code} ({signal.Signals(-code).name})")
        return True

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()


class _SubmititHandle(_Handle):
    def __init__(self, spec, run_dir, job):
        super().__init__(spec, run_dir)
        self.job = job

    def poll(self):
        if not self.job.done():
            return False
        try:
            self.job.result()
        except Exception as e:  # the job died before execute_run could record it (timeout, node failure)
            self.problem = f"submitit job {self.job.job_id} failed: {_last_line(str(e))}"
        return True

    def stop(self):
        try:
            self.job.cancel(check=False)
        except Exception:
            pass


def _submitit_executor(kind: str, folder: Path, params: dict):
    try:
        import submitit
    except ImportError:
        raise ReproduceError("executor 'submitit' needs the submitit package: pip install 'destseg-kit[cluster]' "
                             "(or pip install submitit)") from None
    params = {**SUBMITIT_DEFAULTS, **params}
    if kind == "submitit-local":
        ex = submitit.LocalExecutor(folder=str(folder))
        params = {k: v for k, v in params.items() if k in ("timeout_min", "gpus_per_node", "visible_gpus",
                                                           "tasks_per_node", "signal_delay_s", "setup")}
    else:
        ex = submitit.AutoExecutor(folder=str(folder))
    ex.update_parameters(**params)
    return ex


# ============================================================================== the batch
@dataclass
class BatchResult:
    out_dir: Path
    counts: dict  # state -> number of runs
    ran: int  # runs executed by this call
    skipped: int  # finished runs skipped
    interrupted: bool
    report: Path | None


def _log_line(out_dir: Path, text: str, echo) -> None:
    line = f"{_now()}  {text}"
    with open(out_dir / "batch.log", "a", encoding="utf-8") as f:
        f.write(line + "\n")
    if echo:
        echo(line)


def plan(grid: Grid, out_dir, threads: int | None = None) -> list[RunSpec]:
    """The grid's runs, each with its folder's ``run.json`` written (or checked: a folder holding a
    run of another config is an error, never silently overwritten or reused)."""
    out_dir = Path(out_dir)
    specs = grid.runs(threads)
    conflicts = []
    for s in specs:
        old = _read_json(out_dir / "runs" / s.key / "run.json")
        if old and isinstance(old.get("config"), dict):
            diff = _config_diff(old["config"], s.config)
            if diff:
                conflicts.append(f"{s.key} (differs in {diff})")
    if conflicts:
        raise ReproduceError(f"{out_dir} holds runs made with another config: {'; '.join(conflicts[:5])}"
                             f"{' ...' if len(conflicts) > 5 else ''}.  Use another --out, or delete those run "
                             "folders to redo them")
    for s in specs:
        d = out_dir / "runs" / s.key
        d.mkdir(parents=True, exist_ok=True)
        old = _read_json(d / "run.json")
        if old != s.to_dict():
            _atomic_write_text(d / "run.json", json.dumps(s.to_dict(), indent=2))
    return specs


def run_batch(grid: Grid, out_dir, workers: int | None = None, executor: str = "local", engine: str = "auto",
              retry_failed: bool = True, progress: bool = True, submitit_params: dict | None = None,
              notebook=None, kernel: str | None = None, command: str | None = None, echo=print,
              poll_s: float = 0.5) -> BatchResult:
    """Run every unfinished run of ``grid`` under ``out_dir``, then aggregate (:func:`write_outputs`).

    ``workers``: runs at a time (local executors; default 1) or the most jobs in flight (submitit;
    default: all).  ``retry_failed=False`` leaves failed runs as they are.  Ctrl-C / SIGTERM stops
    the runs in flight (recorded ``interrupted``; the next call redoes them), writes the outputs
    for what is done, and re-raises KeyboardInterrupt.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if executor not in ("local", "inline", "submitit", "submitit-local"):
        raise ReproduceError(f"executor {executor!r}: choose local, inline, submitit or submitit-local")
    engine = resolve_engine(engine, notebook)
    local = executor in ("local", "inline", "submitit-local")
    if workers is None:
        workers = 1 if local else 0
    if workers < 0 or (executor == "inline" and workers > 1):
        raise ReproduceError(f"workers={workers}: use >= 1 (inline: 1)")
    threads = max(1, (os.cpu_count() or 1) // workers) if local and workers > 1 else None
    specs = plan(grid, out_dir, threads)
    _atomic_write_text(out_dir / "grid.json", json.dumps(grid.to_dict(), indent=2) + "\n")
    meta = {"command": command, "executor": executor, "engine": engine, "workers": workers,
            "started": _now(), "host": socket.gethostname()}
    todo, skipped, busy = [], 0, 0
    for s in specs:
        d = out_dir / "runs" / s.key
        st = read_status(d).get("state")
        if is_finished(d, s.to_dict()):
            skipped += 1
            _log_line(out_dir, f"skip     {s.key} (done)", None)
        elif st == "failed" and not retry_failed:
            skipped += 1
            _log_line(out_dir, f"skip     {s.key} (failed before; retry_failed is off)", None)
        elif _held_elsewhere(d):
            busy += 1
            _log_line(out_dir, f"skip     {s.key} (being run by another process on this machine)", echo)
        else:
            todo.append(s)
    _log_line(out_dir, f"batch: {len(specs)} runs, {skipped} finished (skipped), {busy} busy, {len(todo)} to run; "
                       f"executor {executor}, engine {engine}, workers {workers or 'all'}", echo)
    _atomic_write_text(out_dir / "batch.json", json.dumps(meta, indent=2))

    ex = None
    if executor.startswith("submitit") and todo:
        ex = _submitit_executor(executor, out_dir / "submitit", submitit_params or {})
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="run", desc="reproduce", smoothing=0, dynamic_ncols=True)
    say = (bar.write if bar is not None else echo) if echo else None
    pending, active, ran, interrupted = list(todo), [], 0, False
    counts = {"done": 0, "failed": 0}

    def start(s: RunSpec) -> _Handle:
        d = out_dir / "runs" / s.key
        _log_line(out_dir, f"start    {s.key}", None)
        if executor == "inline":
            return _InlineHandle(s, d, engine, notebook, kernel)
        if executor == "local":
            return _ProcessHandle(s, d, engine, notebook, kernel)
        job = ex.submit(execute_run, str(d), engine, str(notebook) if notebook else None, kernel)
        return _SubmititHandle(s, d, job)

    def finish(h: _Handle) -> None:
        nonlocal ran
        st = read_status(h.run_dir)
        if st.get("state") in ("running", "new"):  # the process died before it could record its end
            st = write_status(h.run_dir, "failed", seconds=round(time.perf_counter() - h.started, 1),
                              error=h.problem or "the run ended without recording its state",
                              log_tail=_tail(h.run_dir / "log.txt"))
        state = st.get("state")
        ran += 1
        if state == "done":
            counts["done"] += 1
            _log_line(out_dir, f"done     {h.spec.key} in {st.get('seconds', 0):.0f} s", say)
        elif state == "busy":
            _log_line(out_dir, f"busy     {h.spec.key}: {st.get('error')}", say)
        else:
            counts["failed"] += 1
            _log_line(out_dir, f"FAILED   {h.spec.key}: {st.get('error')} (see {h.run_dir / 'status.json'})", say)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(done=counts["done"], failed=counts["failed"])

    previous = None
    try:
        try:
            previous = signal.signal(signal.SIGTERM, _raise_interrupted)
        except ValueError:  # not the main thread
            pass
        batch_all = ex is not None and workers == 0
        if batch_all:  # a cluster: submit everything at once (one job array)
            with ex.batch():
                jobs = [(s, ex.submit(execute_run, str(out_dir / "runs" / s.key), engine,
                                      str(notebook) if notebook else None, kernel)) for s in pending]
            active = [_SubmititHandle(s, out_dir / "runs" / s.key, j) for s, j in jobs]
            for s, j in jobs:
                _log_line(out_dir, f"submit   {s.key} (job {j.job_id})", None)
            pending = []
        while pending or active:
            while pending and len(active) < workers:
                s = pending.pop(0)
                if bar is not None:
                    bar.set_description(f"reproduce [{s.key}]")
                h = start(s)
                if executor == "inline":
                    finish(h)
                else:
                    active.append(h)
            still = []
            for h in active:
                if h.poll():
                    finish(h)
                else:
                    still.append(h)
            active = still
            if active:
                time.sleep(poll_s)
    except (KeyboardInterrupt, _Interrupted):
        interrupted = True
        for h in active:
            h.stop()
        for h in active:
            if read_status(h.run_dir).get("state") in ("running", "new"):
                write_status(h.run_dir, "interrupted", error="the batch was interrupted")
            _log_line(out_dir, f"interrupted {h.spec.key}", say)
        _log_line(out_dir, f"batch interrupted: {len(pending) + len(active)} runs not finished; run the same "
                           "command again to resume", say)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if bar is not None:
            bar.close()
    report = write_outputs(out_dir, grid, meta={**meta, "finished": _now()})
    states = {}
    for s in specs:
        st = read_status(out_dir / "runs" / s.key).get("state", "new")
        states[st] = states.get(st, 0) + 1
    _log_line(out_dir, "batch end: " + ", ".join(f"{v} {k}" for k, v in sorted(states.items())) +
              f"; report {report}", echo)
    result = BatchResult(out_dir, states, ran, skipped, interrupted, report)
    if interrupted:
        raise KeyboardInterrupt
    return result


def resolve_engine(engine: str, notebook=None) -> str:
    """``"auto"``: papermill when it is installed and the run notebook exists, else the library."""
    if engine == "auto":
        try:
            import papermill  # noqa: F401
        except ImportError:
            return "library"
        return "papermill" if Path(notebook or NOTEBOOK).is_file() else "library"
    if engine not in ("papermill", "library"):
        raise ReproduceError(f"engine {engine!r}: choose auto, papermill or library")
    return engine


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ============================================================================== aggregation
def _pct(v) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return math.nan
    return 100.0 * v if math.isfinite(v) else math.nan


def collect(out_dir, grid: Grid | None = None) -> list[dict]:
    """One row per run of the grid (``grid.json`` of ``out_dir`` by default): identity, state,
    seconds, error, and the run's metrics in percent (NaN where missing or undefined)."""
    out_dir = Path(out_dir)
    if grid is None:
        grid = load_grid(out_dir)
    rows = []
    for s in grid.runs():
        d = out_dir / "runs" / s.key
        st = read_status(d)
        res = run_metrics(d, s.to_dict()) if st.get("state") == "done" else None
        state = st.get("state", "new")
        if state == "done" and res is None:
            state = "incomplete"  # status done, but metrics.json is missing or of another config
        row = {"dataset": s.target.dataset, "category": s.target.category or "", "group": s.target.label,
               "variant": s.variant.name, "seed": s.seed, "method": s.method, "state": state,
               "seconds": st.get("seconds", ""), "error": "" if state == "done" else st.get("error", "")}
        row.update({k: _pct(res.get(k)) if res else math.nan for k in KEYS})
        rows.append(row)
    return rows


def load_grid(out_dir) -> Grid:
    g = _read_json(Path(out_dir) / "grid.json")
    if g is None:
        raise ReproduceError(f"{out_dir}/grid.json not found: not the folder of a reproduce batch")
    return Grid.from_dict(g)


def _mean_std(values, ddof: int = 1) -> tuple[float, float, int]:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(v) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - ddof)) if n > ddof else math.nan
    return mean, std, n


def summarize(rows: list[dict], keys=KEYS, ddof: int = 1) -> list[dict]:
    """Mean ± std over seeds, per (category, variant), and per (dataset, variant) over the
    categories' averages: for each seed where every category of the dataset is done, the mean over
    categories; then mean ± std of these over seeds (how the paper's "average" rows have a smaller
    std than their categories).  Rows: ``dataset, category ("average" for the average), group,
    variant, n`` (seeds), ``n_categories``, and ``<key>_mean``, ``<key>_std`` per key."""
    done = [r for r in rows if r.get("state") == "done"]
    order_groups, order_variants = [], []
    for r in rows:
        if r["group"] not in order_groups:
            order_groups.append(r["group"])
        if r["variant"] not in order_variants:
            order_variants.append(r["variant"])
    out = []
    for g in order_groups:
        for v in order_variants:
            sel = [r for r in done if r["group"] == g and r["variant"] == v]
            if not any(r["group"] == g and r["variant"] == v for r in rows):
                continue
            first = next(r for r in rows if r["group"] == g)
            row = {"dataset": first["dataset"], "category": first["category"], "group": g, "variant": v,
                   "n": len(sel), "n_categories": 1}
            for k in keys:
                m, s, _ = _mean_std([r[k] for r in sel], ddof)
                row[f"{k}_mean"], row[f"{k}_std"] = m, s
            out.append(row)
    datasets = []
    for r in rows:
        if r["dataset"] not in datasets:
            datasets.append(r["dataset"])
    for ds in datasets:
        cats = list(dict.fromkeys(r["category"] for r in rows if r["dataset"] == ds))
        if len(cats) < 2:
            continue
        for v in order_variants:
            seeds = list(dict.fromkeys(r["seed"] for r in rows if r["dataset"] == ds and r["variant"] == v))
            if not seeds:
                continue
            per_seed = []
            for sd in seeds:
                sel = {r["category"]: r for r in done if r["dataset"] == ds and r["variant"] == v and r["seed"] == sd}
                if all(c in sel for c in cats):
                    per_seed.append({k: _mean_std([sel[c][k] for c in cats])[0] if all(
                        math.isfinite(sel[c][k]) for c in cats) else math.nan for k in keys})
            row = {"dataset": ds, "category": "average", "group": f"{ds}/average", "variant": v,
                   "n": len(per_seed), "n_categories": len(cats)}
            for k in keys:
                m, s, _ = _mean_std([p[k] for p in per_seed], ddof)
                row[f"{k}_mean"], row[f"{k}_std"] = m, s
            out.append(row)
    return out


def variant_overrides(grid: Grid) -> dict[str, dict]:
    return {v.name: v.overrides for v in grid.variants}


def _variant_config(grid: Grid, name: str) -> dict:
    v = next(v for v in grid.variants if v.name == name)
    return get_preset(grid.preset, **{**grid.overrides, **v.overrides}).to_dict()


def paper_comparison(summary: list[dict], grid: Grid) -> list[dict]:
    """Tables 1-3 beside ours, for MVTec AD runs of the paper's DeSTSeg (a variant that changes no
    ablation switch).  One row per (category or average, metric): ours mean/std (percent, the
    paper's column's counterpart: interpolated IAP for Table 3), the paper's mean/std, ``delta``
    (ours - paper) and ``within`` (``|delta| <= paper std + 0.05``, see :func:`paper.within_std`).
    The average is compared only when all 15 categories were run."""
    out = []
    destseg = [v.name for v in grid.variants
               if any(r["table"] == 4 and r["row"].startswith("8") for r in
                      paper.ablation_rows(_variant_config(grid, v.name), v.overrides))]
    for row in summary:
        if row["dataset"] != "mvtec" or row["variant"] not in destseg or row["n"] == 0:
            continue
        cat = row["category"]
        if cat == "average":
            if row["n_categories"] != len(paper.CATEGORIES):
                continue
        elif cat not in paper.CATEGORIES:
            continue
        ref = paper.paper_table(cat)
        for pk in paper.KEYS:
            ours_key = paper.OURS_FOR_PAPER[pk]
            m, s = row[f"{ours_key}_mean"], row[f"{ours_key}_std"]
            entry = {"category": cat, "variant": row["variant"], "metric": pk, "ours_key": ours_key, "n": row["n"],
                     "ours_mean": m, "ours_std": s, "paper_mean": None, "paper_std": None, "delta": None,
                     "within": None}
            if ref[pk] is not None:
                pm, ps = ref[pk]
                entry.update(paper_mean=pm, paper_std=ps)
                if math.isfinite(m):
                    entry.update(delta=m - pm, within=paper.within_std(m, pm, ps))
            out.append(entry)
    return out


def ablation_comparison(summary: list[dict], grid: Grid) -> list[dict]:
    """Tables 4-6 beside ours: for each dataset's headline group (its average over categories, or
    its only category) and each variant that reproduces a row of Tables 4-6 (see
    :func:`paper.ablation_rows`), ours (image AUROC, pixel AP, interpolated IAP) and the paper's
    row; a table is listed when at least two of its rows were run.  ``comparable``: MVTec AD with
    all 15 categories (else only the orderings compare)."""
    out = []
    heads = _headline_groups(summary)
    for v in grid.variants:
        rows = paper.ablation_rows(_variant_config(grid, v.name), v.overrides)
        for ds, group in heads.items():
            srow = next((r for r in summary if r["group"] == group and r["variant"] == v.name), None)
            if srow is None:
                continue
            comparable = ds == "mvtec" and srow["n_categories"] == len(paper.CATEGORIES)
            for pr in rows:
                e = {"dataset": ds, "group": group, "table": pr["table"], "row": pr["row"], "variant": v.name,
                     "n": srow["n"], "comparable": comparable}
                for k in paper.ABLATION_KEYS:
                    ok = "iap_interp" if k == "iap" else k
                    e[f"{k}_mean"], e[f"{k}_std"] = srow[f"{ok}_mean"], srow[f"{ok}_std"]
                    e[f"{k}_paper"] = pr[k]
                    e[f"{k}_delta"] = srow[f"{ok}_mean"] - pr[k] if comparable else None
                out.append(e)
    per_table: dict = {}
    for e in out:
        per_table[(e["dataset"], e["table"])] = per_table.get((e["dataset"], e["table"]), 0) + 1
    out = [e for e in out if per_table[(e["dataset"], e["table"])] >= 2]  # a table needs two of its rows
    return sorted(out, key=lambda e: (e["dataset"], e["table"], e["row"]))


def _headline_groups(summary: list[dict]) -> dict:
    heads = {}
    for r in summary:
        if r["category"] == "average":
            heads[r["dataset"]] = r["group"]
        else:
            heads.setdefault(r["dataset"], r["group"])
    return heads


def ordering_check(ablation: list[dict]) -> list[dict]:
    """Does the paper's ordering of the ablation rows hold for ours?  Per (dataset, table, metric):
    every pair of rows with different paper values, ``agree`` when ours differ the same way;
    ``close`` counts the pairs whose difference is smaller than the larger of their seed stds."""
    out = []
    keyed = {}
    for e in ablation:
        keyed.setdefault((e["dataset"], e["table"]), []).append(e)
    for (ds, table), entries in keyed.items():
        for k in paper.ABLATION_KEYS:
            pairs = agree = close = 0
            items = [e for e in entries if math.isfinite(e[f"{k}_mean"])]
            for i in range(len(items)):
                for j in range(i + 1, len(items)):
                    a, b = items[i], items[j]
                    dp = a[f"{k}_paper"] - b[f"{k}_paper"]
                    if dp == 0:
                        continue
                    do = a[f"{k}_mean"] - b[f"{k}_mean"]
                    pairs += 1
                    agree += (do > 0) == (dp > 0) and do != 0
                    spread = max(x for x in (a[f"{k}_std"], b[f"{k}_std"], 0.0) if math.isfinite(x))
                    close += abs(do) < spread
            if len(items) < 2:
                continue
            ours = sorted(items, key=lambda e: -e[f"{k}_mean"])
            theirs = sorted(items, key=lambda e: -e[f"{k}_paper"])
            out.append({"dataset": ds, "table": table, "metric": k, "pairs": pairs, "agree": agree, "close": close,
                        "ours_order": [e["variant"] for e in ours], "paper_order": [e["variant"] for e in theirs]})
    return out


# ============================================================================== outputs
def _fmt(m, s=None, n=None) -> str:
    if m is None or not math.isfinite(m):
        return "n/a"
    text = f"{m:.1f}"
    if s is not None:
        text += f" ± {s:.1f}" if math.isfinite(s) else " ± –"
    return text


def _md_table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """A Markdown table; the first ``left`` columns left-aligned, the others (numbers) right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def summary_markdown(summary: list[dict], keys=TABLE_KEYS) -> str:
    """Per dataset, one table: rows (category, variant), columns mean ± std (percent)."""
    parts = []
    for ds in dict.fromkeys(r["dataset"] for r in summary):
        rows = [r for r in summary if r["dataset"] == ds]
        multi = len({r["category"] for r in rows}) > 1
        header = (["category"] if multi else []) + ["variant", "n"] + [KEY_LABELS[k] for k in keys]
        body = [([r["category"] or "-"] if multi else []) + [r["variant"], r["n"]] +
                [_fmt(r[f"{k}_mean"], r[f"{k}_std"]) for k in keys] for r in rows]
        label = rows[0]["group"] if not multi else ds
        parts.append(f"### {label}\n\n" + _md_table(header, body, left=2 if multi else 1))
    return "\n\n".join(parts)


def paper_markdown(comparison: list[dict]) -> str:
    if not comparison:
        return ""
    rows = []
    for e in comparison:
        rows.append([e["category"], e["variant"], paper.LABELS[e["metric"]] + ("" if e["ours_key"] == e["metric"] else
                                                                             f" vs ours `{e['ours_key']}`"),
                     _fmt(e["ours_mean"], e["ours_std"]),
                     "-" if e["paper_mean"] is None else f"{e['paper_mean']:.1f} ± {e['paper_std']:.1f}",
                     "-" if e["delta"] is None else f"{e['delta']:+.1f}",
                     "-" if e["within"] is None else ("yes" if e["within"] else "**no**")])
    return _md_table(["category", "variant", "metric", "ours", "paper", "Δ", "within paper ± std"], rows, left=3)


def ablation_markdown(ablation: list[dict]) -> str:
    if not ablation:
        return ""
    parts = []
    for ds in dict.fromkeys(e["dataset"] for e in ablation):
        es = [e for e in ablation if e["dataset"] == ds]
        comparable = all(e["comparable"] for e in es)
        rows = []
        for e in es:
            cells = []
            for k in paper.ABLATION_KEYS:
                cells += [_fmt(e[f"{k}_mean"], e[f"{k}_std"]), f"{e[f'{k}_paper']:.1f}"]
                if comparable:
                    cells.append(f"{e[f'{k}_delta']:+.1f}" if e[f"{k}_delta"] is not None and
                                 math.isfinite(e[f"{k}_delta"]) else "n/a")
            rows.append([f"T{e['table']}", e["row"], e["variant"], e["n"]] + cells)
        head = ["table", "paper row", "variant", "n"]
        for lab in ("image AUROC", "pixel AP", "IAP interp."):
            head += [f"{lab} ours", "paper"] + (["Δ"] if comparable else [])
        note = "" if comparable else (f"\n\n*{es[0]['group']}: the paper's Tables 4–6 are MVTec AD averages "
                                      "(15 categories); the numbers are not comparable, the orderings are.*")
        parts.append(f"### {es[0]['group']}\n\n" + _md_table(head, rows, left=3) + note)
    return "\n\n".join(parts)


def ordering_markdown(checks: list[dict]) -> str:
    if not checks:
        return ""
    rows = []
    for c in checks:
        verdict = ("holds" if c["agree"] == c["pairs"] else
                   f"{c['pairs'] - c['agree']} of {c['pairs']} pairs reversed")
        rows.append([c["dataset"], f"T{c['table']}", paper.LABELS.get(c["metric"], c["metric"]).split(" (")[0],
                     " > ".join(c["paper_order"]), " > ".join(c["ours_order"]),
                     f"{c['agree']}/{c['pairs']}", c["close"], verdict])
    return _md_table(["dataset", "table", "metric", "paper's order", "ours", "pairs agreeing",
                      "pairs within seed std", "ordering"], rows, left=5)


def _write_csv(rows: list[dict], path: Path) -> None:
    if not rows:
        _atomic_write_text(path, "")
        return
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else
                        (round(v, 4) if isinstance(v, float) else v)) for k, v in r.items()})
    _atomic_write_text(path, buf.getvalue())


def plot_categories(summary: list[dict], comparison: list[dict], path=None,
                    keys=("image_auroc", "pixel_auroc", "pixel_ap", "iap_interp")):
    """Per-category bars (one per variant) with seed-std error bars, one panel per metric; the
    paper's Table 1-3 value (mean ± std) as a black mark where it exists."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    groups = list(dict.fromkeys(r["group"] for r in summary))
    variants = list(dict.fromkeys(r["variant"] for r in summary))
    fig, axes = plt.subplots(len(keys), 1, figsize=(max(6.0, 0.9 * len(groups) * max(1, len(variants)) / 2 + 3),
                                                    2.4 * len(keys)), squeeze=False)
    width = 0.8 / max(1, len(variants))
    x = np.arange(len(groups))
    colors = plt.get_cmap("tab10")
    for ax, k in zip(axes[:, 0], keys):
        for i, v in enumerate(variants):
            means, stds = [], []
            for g in groups:
                r = next((r for r in summary if r["group"] == g and r["variant"] == v), None)
                means.append(r[f"{k}_mean"] if r else np.nan)
                stds.append(r[f"{k}_std"] if r and math.isfinite(r[f"{k}_std"]) else 0.0)
            ax.bar(x - 0.4 + width * (i + 0.5), means, width, yerr=stds, capsize=2, label=v, color=colors(i % 10))
        pk = next((p for p, o in paper.OURS_FOR_PAPER.items() if o == k), None)
        for gi, g in enumerate(groups):
            cat = g.split("/", 1)[1] if "/" in g else ""
            e = next((e for e in comparison if e["metric"] == pk and e["category"] == cat and
                      e["paper_mean"] is not None and g.startswith("mvtec")), None)
            if e:
                ax.errorbar(gi, e["paper_mean"], yerr=e["paper_std"], fmt="_", color="black", markersize=18,
                            capsize=4, label="paper (Tables 1-3)")
        ax.set_ylabel(KEY_LABELS[k] + " (%)")
        finite = [r[f"{k}_mean"] for r in summary if math.isfinite(r[f"{k}_mean"])]
        lo = min(finite) if finite else 0
        ax.set_ylim(max(0, min(lo - 10, 50 if lo > 60 else 0)), 100)
        ax.set_xticks(x, groups, rotation=30 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    # above the first panel, where it hides no bar (tight_layout leaves room for it)
    axes[0, 0].legend(uniq.values(), uniq.keys(), fontsize=7, ncol=min(len(uniq), 6), loc="lower center",
                      bbox_to_anchor=(0.5, 1.02), frameon=False, title_fontsize=9,
                      title="per category: mean ± std over seeds" + (" (black: the paper's Tables 1–3)"
                                                                    if comparison else ""))
    fig.tight_layout()
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def plot_ablation(summary: list[dict], ablation: list[dict], path=None):
    """The ablation table as a figure: per dataset (its headline group: the average over categories,
    or the only category), one panel per column of Tables 4-6 (image AUROC, pixel AP, interpolated
    IAP): our bar per variant (mean ± std over seeds) and, for the variants that reproduce a row of
    Tables 4-6, the paper's value as a grey bar beneath it (MVTec AD averages: on other data compare
    the orderings, not the values)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    heads = _headline_groups(summary)
    keys = (("image_auroc", "image_auroc", "image AUROC"), ("pixel_ap", "pixel_ap", "pixel AP"),
            ("iap", "iap_interp", "IAP interp."))
    n_var = max(2, max(sum(r["group"] == g for r in summary) for g in heads.values()))
    fig, axes = plt.subplots(len(heads), 3, figsize=(12, (0.55 * n_var + 1.0) * len(heads) + 0.4), squeeze=False)
    h = 0.38
    for row_axes, (ds, group) in zip(axes, heads.items()):
        rows = [r for r in summary if r["group"] == group]
        names, refs = [], []
        for r in rows:
            es = [e for e in ablation if e["group"] == group and e["variant"] == r["variant"]]
            refs.append(es[0] if es else None)
            tags = sorted({f"T{e['table']} {e['row'].split(' (')[0]}" for e in es})
            names.append(r["variant"] + (f"\n({', '.join(tags)})" if tags else ""))
        comparable = all(e is None or e["comparable"] for e in refs)
        for ax, (pk, ok, lab) in zip(row_axes, keys):
            y = list(range(len(rows)))[::-1]
            means = [r[f"{ok}_mean"] for r in rows]
            stds = [r[f"{ok}_std"] if math.isfinite(r[f"{ok}_std"]) else 0.0 for r in rows]
            ax.barh([v + h / 2 for v in y], means, h, xerr=stds, capsize=3, color="tab:blue", label="ours")
            py = [v - h / 2 for v, e in zip(y, refs) if e is not None]
            pv = [e[f"{pk}_paper"] for e in refs if e is not None]
            if pv:
                ax.barh(py, pv, h, color="0.75", label="paper, Tables 4-6 (MVTec AD, 15-category average" +
                        (")" if comparable else "; not comparable here: compare the orderings)"))
            for v, m, sd in zip(y, means, stds):
                if math.isfinite(m):
                    ax.text(min(m + sd, 100) + 1, v + h / 2, f"{m:.1f}", va="center", fontsize=7)
            for v, val in zip(py, pv):
                ax.text(val + 1, v, f"{val:.1f}", va="center", fontsize=7, color="0.35")
            ax.set_xlim(0, 112)
            ax.set_yticks(y, names if ax is row_axes[0] else [""] * len(rows), fontsize=7)
            ax.set_title(f"{group}: {lab} (%)", fontsize=9)
            ax.grid(axis="x", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle("ablations: ours (mean ± std over seeds) beside the paper's Tables 4–6", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def write_outputs(out_dir, grid: Grid | None = None, meta: dict | None = None) -> Path:
    """Aggregate the records of ``out_dir``: ``results.csv``, ``summary.csv``, ``summary.md``,
    ``figures/{categories,ablation}.png`` and ``REPORT.md`` (returned)."""
    out_dir = Path(out_dir)
    grid = grid or load_grid(out_dir)
    meta = meta or _read_json(out_dir / "batch.json") or {}
    rows = collect(out_dir, grid)
    summary = summarize(rows)
    comparison = paper_comparison(summary, grid)
    ablation = ablation_comparison(summary, grid)
    checks = ordering_check(ablation)
    _write_csv(rows, out_dir / "results.csv")
    _write_csv(summary, out_dir / "summary.csv")
    md = summary_markdown([r for r in summary if r["n"] > 0]) if any(r["n"] for r in summary) else "(no finished run yet)"
    _atomic_write_text(out_dir / "summary.md", "# Summary (percent, mean ± std over seeds)\n\n" + md + "\n")
    figures = []
    if any(r["n"] for r in summary):
        import matplotlib.pyplot as plt

        done = [r for r in summary if r["n"] > 0]
        plt.close(plot_categories(done, comparison, out_dir / "figures" / "categories.png"))
        figures.append("figures/categories.png")
        plt.close(plot_ablation(done, ablation, out_dir / "figures" / "ablation.png"))
        figures.append("figures/ablation.png")
    report = out_dir / "REPORT.md"
    _atomic_write_text(report, _report_text(grid, meta, rows, md, comparison, ablation, checks, figures))
    return report


def _report_text(grid, meta, rows, summary_md, comparison, ablation, checks, figures) -> str:
    states = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    secs = sum(float(r["seconds"]) for r in rows if r["state"] == "done" and r["seconds"] not in ("", None))
    L = [f"# Reproduction report{': ' + grid.name if grid.name else ''}", ""]
    L += [f"Generated {_now()} by `destseg reproduce` (destseg kit). Numbers are percent; ± is the sample "
          "standard deviation (ddof = 1) over seeds; *n* is the number of finished seeds.", ""]
    if meta.get("command"):
        L += ["```", meta["command"], "```", ""]
    L += ["## Setup", ""]
    base = get_preset(grid.preset)
    L += [f"* preset **{grid.preset}** ({base.image_size}², batch {base.batch_size}, {base.student_steps} + "
          f"{base.seg_steps} steps, teacher {base.teacher})" +
          (f", overrides `{json.dumps(grid.overrides)}`" if grid.overrides else ""),
          f"* data: {', '.join(sorted(set(t.label for t in grid.targets)))}",
          f"* seeds: {', '.join(map(str, grid.seeds))}",
          f"* executor {meta.get('executor', '?')}, engine {meta.get('engine', '?')}, workers "
          f"{meta.get('workers', '?')}, device {grid.device}; host {meta.get('host', '?')}", ""]
    vrows = []
    for v in grid.variants:
        tags = [f"T{e['table']} {e['row']}" for e in paper.ablation_rows(_variant_config(grid, v.name), v.overrides)]
        vrows.append([v.name, f"`{json.dumps(v.overrides)}`" if v.overrides else "(none)",
                      ", ".join(tags) or "-", VARIANT_HELP.get(v.name, "") if VARIANTS.get(v.name) == v.overrides else ""])
    L += [_md_table(["variant", "overrides", "paper rows", "what"], vrows, left=4), ""]
    L += ["## Runs", "", f"{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) +
          f"; {secs / 60:.1f} min of run time in the finished runs.", ""]
    bad = [r for r in rows if r["state"] not in ("done",)]
    if bad:
        L += [_md_table(["run", "state", "error"], left=3, rows=
                        [[f"`runs/{_key_of(r)}`", r["state"], (r["error"] or "").replace("|", "\\|")[:200]]
                         for r in bad]), ""]
        L += ["Unfinished runs are redone by running the same command again (finished runs are skipped; a "
              "run with a `model.pt` is re-evaluated without retraining). Each run's `status.json` holds its "
              "traceback, `log.txt` its output.", ""]
    L += ["## Results", "", "IAP step: the kit's step-wise IAP; IAP interp.: the precision interpolated "
          "(running maximum) as in the official code — the paper's Tables 3–6 report that one. "
          "DeST-only runs (segmentation off) report the DeST map's numbers.", "", summary_md.replace("### ", "### "), ""]
    if comparison:
        L += ["## Beside the paper (Tables 1–3, MVTec AD)", "",
              "Ours next to the paper's DeSTSeg (mean ± std over 5 seeds), like with like: the paper's IAP "
              "is compared with our interpolated IAP. Δ = ours − paper; *within* = |Δ| ≤ paper's std + 0.05 "
              "(the printed values are rounded to 0.1). Image AUROC per category is only in the paper's "
              "supplement.", "", paper_markdown(comparison), ""]
    if ablation:
        L += ["## Ablations beside Tables 4–6", "", "Source: " + paper.SOURCE["paper"] + " Tables 4–6 are MVTec AD "
              "averages without std; their IAP is the interpolated one.", "", ablation_markdown(ablation), ""]
    if checks:
        L += ["### Does the paper's ordering hold?", "",
              "For every pair of variants whose paper values differ: do ours differ the same way? "
              "(*within seed std*: pairs whose difference is smaller than the larger of their two seed "
              "stds — an ordering there is not resolved at this number of seeds.)", "", ordering_markdown(checks), ""]
    if figures:
        L += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    L += ["## Records", "", "`runs/<dataset[-category]>/<variant>/seed<N>/`: `run.json` (the run's full config), "
          "`status.json`, `log.txt`, `run.ipynb` (papermill engine), `metrics.json`, `model.pt`, "
          "`train_log.csv`, `per_defect.csv`, `per_image.csv`, `figures/`. Batch: `grid.json`, `batch.log`, "
          "`results.csv` (one row per run), `summary.csv`, `summary.md`, `figures/`.", "",
          f"Published numbers: `destseg_lib/paper_numbers.json` ({paper.SOURCE['paper']} {paper.SOURCE['arxiv']}).", ""]
    return "\n".join(L)


def _key_of(r: dict) -> str:
    slug = (r["dataset"] + (f"-{r['category']}" if r["category"] else "")).replace("/", "-").replace(" ", "_")
    return f"{slug}/{r['variant']}/seed{r['seed']}"


# ============================================================================== command line
def _set_pair(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: use KEY=VALUE, e.g. student_steps=200")
    k, v = text.split("=", 1)
    return k.strip(), v


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``destseg reproduce`` (see :func:`command`)."""
    p.add_argument("grid", nargs="?", default=None, help="grid file (JSON, or YAML with PyYAML); the options "
                   "below override its entries")
    p.add_argument("--out", default=None, help="batch folder (default runs/reproduce_<dataset>_<preset>)")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS), help="base preset (default quick)")
    p.add_argument("--dataset", default=None, choices=["toy", "mvtec", "mtd", "folder"])
    p.add_argument("--data-root", default=None, help="dataset folder (default $DESTSEG_DATA)")
    p.add_argument("--categories", nargs="+", default=None, metavar="CAT", help="categories, or 'all' (MVTec AD)")
    p.add_argument("--seeds", nargs="+", default=None, metavar="SEED", help="e.g. --seeds 0 1 2 3 4")
    p.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                   help="variant or group names (see --list-variants)")
    p.add_argument("--set", action="append", default=[], type=_set_pair, metavar="KEY=VALUE",
                   help="a config field for every run (repeatable)")
    p.add_argument("--texture-dir", default=None, help="DTD-layout folder (anomaly source of Eq. 1)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda ... (per run)")
    p.add_argument("--no-figures", action="store_true", help="no per-run figures (the batch's own are made)")
    p.add_argument("--name", default=None, help="a title for REPORT.md")
    p.add_argument("--workers", type=int, default=None, help="runs at a time (local; default 1) or jobs in "
                   "flight (submitit; default all)")
    p.add_argument("--executor", default="local", choices=["local", "inline", "submitit", "submitit-local"],
                   help="local: one process per run (default); inline: in this process; submitit: SLURM "
                        "when available (pip install 'destseg-kit[cluster]'); submitit-local: submitit's local executor")
    p.add_argument("--submitit", action="append", default=[], type=_set_pair, metavar="KEY=VALUE",
                   help="submitit executor parameter, e.g. slurm_partition=gpu gpus_per_node=1 timeout_min=120")
    p.add_argument("--engine", default="auto", choices=["auto", "papermill", "library"],
                   help="papermill: execute notebooks/reproduce_run.ipynb per run (default when installed); "
                        "library: the same calls without a notebook")
    p.add_argument("--notebook", default=None, help="another run notebook with the same parameters")
    p.add_argument("--kernel", default=None, help="Jupyter kernel for papermill (default: the notebook's)")
    p.add_argument("--no-retry-failed", action="store_true", help="leave runs that failed before as they are")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their state, run nothing")
    p.add_argument("--report-only", action="store_true", help="only aggregate the records of --out again")
    p.add_argument("--list-variants", action="store_true", help="print the built-in variants and groups")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def grid_from_args(args) -> Grid:
    """The grid file (if any) with the command line's options on top."""
    d: dict = {}
    base = None
    if args.grid:
        g = Grid.from_file(args.grid)
        d = g.to_dict()
        base = Path(args.grid).resolve().parent
    if args.dataset or args.data_root or args.categories:
        kind = args.dataset or (d.get("datasets") or [{}])[0].get("dataset") or "toy"
        entry = {"dataset": kind, "data_root": args.data_root}
        if args.categories:
            entry["categories"] = "all" if args.categories == ["all"] else args.categories
        d["datasets"] = [entry]
        base = None
    for key, value in (("preset", args.preset), ("device", args.device), ("name", args.name)):
        if value is not None:
            d[key] = value
    if args.seeds is not None:
        try:
            d["seeds"] = [int(s) for s in args.seeds]
        except ValueError:
            raise ReproduceError(f"--seeds {' '.join(args.seeds)}: seeds are integers, e.g. --seeds 0 1 2") from None
    if args.variants is not None:
        d["variants"] = [v for item in args.variants for v in item.replace(",", " ").split()]
    if args.set or args.texture_dir:
        d["overrides"] = {**d.get("overrides", {}), **dict(args.set)}
        if args.texture_dir:
            d["overrides"]["texture_dir"] = str(Path(args.texture_dir).expanduser().resolve())
    if args.no_figures:
        d["figures"] = False
    return Grid.from_dict(d, base=base)


def _list_variants() -> str:
    lines = ["variants (name: overrides -- what):"]
    for n, o in VARIANTS.items():
        lines.append(f"  {n:<13} {json.dumps(o):<62} {VARIANT_HELP.get(n, '')}")
    lines.append("groups:")
    for n, vs in GROUPS.items():
        lines.append(f"  {n:<13} {' '.join(vs)}")
    return "\n".join(lines)


def command(args) -> int:
    """``destseg reproduce``."""
    if args.list_variants:
        print(_list_variants())
        return 0
    if args.report_only:
        if not args.out:
            raise ReproduceError("--report-only needs --out (the batch folder)")
        report = write_outputs(args.out)
        print((Path(args.out) / "summary.md").read_text())
        print(f"report: {report}")
        return 0
    grid = grid_from_args(args)
    out = Path(args.out or f"runs/reproduce_{grid.targets[0].dataset}_{grid.preset}")
    if args.dry_run:
        specs = grid.runs()
        for s in specs:
            d = out / "runs" / s.key
            state = "done" if is_finished(d, s.to_dict()) else read_status(d).get("state", "new")
            print(f"{state:<12} {s.key:<50} {json.dumps(s.overrides)}")
        print(f"{len(specs)} runs -> {out}; engine {resolve_engine(args.engine, args.notebook)}")
        return 0
    argv = sys.argv[sys.argv.index("reproduce") + 1:] if "reproduce" in sys.argv else sys.argv[1:]
    cmd = "destseg reproduce " + " ".join(shlex.quote(a) for a in argv)
    try:
        result = run_batch(grid, out, workers=args.workers, executor=args.executor, engine=args.engine,
                           retry_failed=not args.no_retry_failed, progress=not args.quiet,
                           submitit_params={k: _literal(v) for k, v in args.submitit}, notebook=args.notebook,
                           kernel=args.kernel, command=cmd)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are kept; run the same command again to resume ({out}/batch.log)",
              file=sys.stderr)
        return 130
    print()
    print((out / "summary.md").read_text())
    print(f"report: {result.report}")
    failed = result.counts.get("failed", 0)
    if failed:
        print(f"{failed} run(s) failed: see the report's Runs section; run the same command again to retry them",
              file=sys.stderr)
    return 1 if failed else 0


def _literal(v: str):
    import ast

    try:
        return ast.literal_eval(v)
    except (ValueError, SyntaxError):
        return v


def main(argv=None) -> int:
    """``python -m destseg_lib.reproduce ...`` = ``destseg reproduce ...``; ``_execute RUN_DIR`` runs one
    run folder (what the local executor starts per run)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_execute"]:
        ap = argparse.ArgumentParser(prog="destseg_lib.reproduce _execute")
        ap.add_argument("run_dir")
        ap.add_argument("--engine", default="library")
        ap.add_argument("--notebook", default=None)
        ap.add_argument("--kernel", default=None)
        a = ap.parse_args(argv[1:])
        try:
            status = execute_run(a.run_dir, a.engine, a.notebook, a.kernel, log_to_file=False)
        except KeyboardInterrupt:
            return 130
        return 0 if status.get("state") in ("done", "busy") else 1
    ap = argparse.ArgumentParser(prog="destseg reproduce", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    try:
        return command(ap.parse_args(argv))
    except (ValueError, FileNotFoundError) as e:
        print(f"destseg reproduce: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
