"""Where runs execute: in this process, one local process each, or submitit jobs (SLURM)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .grid import SUBMITIT_DEFAULTS, ReproduceError, RunSpec
from .runner import execute_run, last_line

# the folder holding the destseg_lib package: the child runs this library, whatever its own sys.path
LIBRARY_PARENT = Path(__file__).resolve().parents[2]


class RunHandle:
    """A run in flight: ``poll()`` returns True once it has ended; ``stop()`` ends it."""

    def __init__(self, spec: RunSpec, run_dir: Path):
        self.spec, self.run_dir, self.started = spec, run_dir, time.perf_counter()
        self.problem: str | None = None  # why it ended without a final status (exit code ...)

    def poll(self) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        pass


class InlineHandle(RunHandle):
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


class ProcessHandle(RunHandle):
    def __init__(self, spec, run_dir, engine, notebook, kernel):
        super().__init__(spec, run_dir)
        cmd = [sys.executable, "-m", "destseg_lib.reproduce", "_execute", str(run_dir), "--engine", engine]
        if notebook:
            cmd += ["--notebook", str(notebook)]
        if kernel:
            cmd += ["--kernel", kernel]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(LIBRARY_PARENT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
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


class SubmititHandle(RunHandle):
    def __init__(self, spec, run_dir, job):
        super().__init__(spec, run_dir)
        self.job = job

    def poll(self):
        if not self.job.done():
            return False
        try:
            self.job.result()
        except Exception as e:  # the job died before execute_run could record it (timeout, node failure)
            self.problem = f"submitit job {self.job.job_id} failed: {last_line(str(e))}"
        return True

    def stop(self):
        try:
            self.job.cancel(check=False)
        except Exception:
            pass


def submitit_executor(kind: str, folder: Path, params: dict):
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


