"""The batch: plan the grid's run folders, run the unfinished ones with an executor, then report."""
from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_write_text
from .executors import InlineHandle, ProcessHandle, RunHandle, SubmititHandle, submitit_executor
from .grid import NOTEBOOK, Grid, ReproduceError, RunSpec
from .records import config_mismatch, held_elsewhere, is_finished, now, read_json, read_status, write_status
from .report import write_outputs
from .runner import RunInterrupted, execute_run, raise_interrupted


@dataclass
class BatchResult:
    out_dir: Path
    counts: dict  # state -> number of runs
    ran: int  # runs executed by this call
    skipped: int  # finished runs skipped
    interrupted: bool
    report: Path | None


def _log_line(out_dir: Path, text: str, echo) -> None:
    line = f"{now()}  {text}"
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
        old = read_json(out_dir / "runs" / s.key / "run.json")
        if old and isinstance(old.get("config"), dict):
            diff = config_mismatch(old["config"], s.config)
            if diff:
                conflicts.append(f"{s.key} (differs in {diff})")
    if conflicts:
        raise ReproduceError(f"{out_dir} holds runs made with another config: {'; '.join(conflicts[:5])}"
                             f"{' ...' if len(conflicts) > 5 else ''}.  Use another --out, or delete those run "
                             "folders to redo them")
    for s in specs:
        d = out_dir / "runs" / s.key
        d.mkdir(parents=True, exist_ok=True)
        old = read_json(d / "run.json")
        if old != s.to_dict():
            atomic_write_text(d / "run.json", json.dumps(s.to_dict(), indent=2))
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
    atomic_write_text(out_dir / "grid.json", json.dumps(grid.to_dict(), indent=2) + "\n")
    meta = {"command": command, "executor": executor, "engine": engine, "workers": workers,
            "started": now(), "host": socket.gethostname()}
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
        elif held_elsewhere(d):
            busy += 1
            _log_line(out_dir, f"skip     {s.key} (being run by another process on this machine)", echo)
        else:
            todo.append(s)
    _log_line(out_dir, f"batch: {len(specs)} runs, {skipped} finished (skipped), {busy} busy, {len(todo)} to run; "
                       f"executor {executor}, engine {engine}, workers {workers or 'all'}", echo)
    atomic_write_text(out_dir / "batch.json", json.dumps(meta, indent=2))

    if todo:
        ensure_toy_data(grid)
    ex = None
    if executor.startswith("submitit") and todo:
        ex = submitit_executor(executor, out_dir / "submitit", submitit_params or {})
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="run", desc="reproduce", smoothing=0, dynamic_ncols=True)
    say = (bar.write if bar is not None else echo) if echo else None
    pending, active, ran, interrupted = list(todo), [], 0, False
    counts = {"done": 0, "failed": 0}

    def start(s: RunSpec) -> RunHandle:
        d = out_dir / "runs" / s.key
        _log_line(out_dir, f"start    {s.key}", None)
        if executor == "inline":
            return InlineHandle(s, d, engine, notebook, kernel)
        if executor == "local":
            return ProcessHandle(s, d, engine, notebook, kernel)
        job = ex.submit(execute_run, str(d), engine, str(notebook) if notebook else None, kernel)
        return SubmititHandle(s, d, job)

    def finish(h: RunHandle) -> None:
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
            previous = signal.signal(signal.SIGTERM, raise_interrupted)
        except ValueError:  # not the main thread
            pass
        batch_all = ex is not None and workers == 0
        if batch_all:  # a cluster: submit everything at once (one job array)
            with ex.batch():
                jobs = [(s, ex.submit(execute_run, str(out_dir / "runs" / s.key), engine,
                                      str(notebook) if notebook else None, kernel)) for s in pending]
            active = [SubmititHandle(s, out_dir / "runs" / s.key, j) for s, j in jobs]
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
    except (KeyboardInterrupt, RunInterrupted):
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
    report = write_outputs(out_dir, grid, meta={**meta, "finished": now()})
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


def ensure_toy_data(grid: Grid) -> None:
    """The kit makes the toy set only in its own folder, ``./data/toy`` (``experiment.open_split``):
    a grid on it at its default ``data_root`` (that folder) gets it made here, once, before any run
    (or worker, or papermill kernel) reads it — a batch started in a fresh folder works too."""
    from ..experiment import TOY_ROOT, open_split

    own = str(TOY_ROOT.resolve())
    if any(t.dataset == "toy" and t.data_root == own for t in grid.targets):
        open_split("toy", None)


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
    if engine == "papermill":  # said once, before any run starts (not as each run's failure)
        try:
            import papermill  # noqa: F401
        except ImportError:
            raise ReproduceError("--engine papermill needs papermill and ipykernel: pip install "
                                 "'destseg-kit[notebooks]' (or use --engine library, the same runs "
                                 "without notebooks)") from None
    return engine


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return ""


