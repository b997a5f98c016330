"""One run: its library calls (:func:`run_one`) or the run notebook through papermill, with its log and status."""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

from ..config import get_preset

from .grid import NOTEBOOK, ReproduceError, RunBusy
from .records import claim, now, read_json, release, run_metrics, write_status


class RunInterrupted(BaseException):
    """SIGTERM (or SIGINT) in a run: record ``interrupted`` and stop."""


def raise_interrupted(signum, frame):
    raise RunInterrupted(f"signal {signum}")


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
    spec = read_json(run_dir / "run.json")
    if spec is None:
        raise ReproduceError(f"{run_dir}/run.json is missing or unreadable: not a run folder of a batch")
    try:
        claim(run_dir)
    except RunBusy as e:
        return {"state": "busy", "error": str(e)}
    t0 = time.perf_counter()
    started = now()
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
                previous_term = signal.signal(signal.SIGTERM, raise_interrupted)
        except ValueError:
            pass
        write_status(run_dir, "running", started=started, engine=engine)
        print(f"[{now()}] run {spec['key']} ({spec['label']}, variant {spec['variant']}, seed {spec['seed']}), "
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
        print(f"[{now()}] done in {seconds:.0f} s", flush=True)
        return write_status(run_dir, "done", started=started, finished=now(), seconds=seconds, engine=engine,
                            method=spec["method"])
    except (KeyboardInterrupt, RunInterrupted) as e:
        write_status(run_dir, "interrupted", started=started, seconds=round(time.perf_counter() - t0, 1),
                     error=f"interrupted ({type(e).__name__} {e})".strip(), engine=engine)
        print(f"[{now()}] interrupted", flush=True)
        raise KeyboardInterrupt from None
    except Exception as e:
        tb = traceback.format_exc()
        print(tb, file=sys.stderr, flush=True)
        return write_status(run_dir, "failed", started=started, finished=now(),
                            seconds=round(time.perf_counter() - t0, 1), engine=engine,
                            error=f"{type(e).__name__}: {last_line(str(e))}", traceback=tb)
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        sys.stdout, sys.stderr = saved
        if log is not None:
            log.close()
        release(run_dir)


def last_line(text: str) -> str:
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
    """The library calls of one run (what the run notebook (``run_notebook.ipynb``) shows cell by cell):
    config, data, train-or-load with a progress line every 5 %, then ``experiment.run`` (predict,
    evaluate, write ``metrics.json`` and the figures).  Returns the :class:`experiment.Report`."""
    import torch

    from .. import experiment
    from ..viz import resolve_device

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
    """The papermill parameters of the run notebook (``run_notebook.ipynb``) for one run."""
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
                            cwd=os.getcwd(), kernel_name=kernel, progress_bar=False, log_output=True)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


