"""A run's records on disk: ``status.json``, ``metrics.json`` read back, the run lock."""
from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from pathlib import Path

from ..config import DeSTSegConfig

from ..files import atomic_write_text
from .grid import RunBusy


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def read_json(path: Path):
    """The JSON in ``path``, or None when it is missing or unreadable (a record being written)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_status(run_dir) -> dict:
    """The run's ``status.json``, or ``{"state": "new"}``."""
    return read_json(Path(run_dir) / "status.json") or {"state": "new"}


def write_status(run_dir, state: str, **fields) -> dict:
    status = {"state": state, "updated": now(), "host": socket.gethostname(), "pid": os.getpid(), **fields}
    atomic_write_text(Path(run_dir) / "status.json", json.dumps(status, indent=2, default=str))
    return status


def config_mismatch(saved: dict, config: dict) -> list[str]:
    """The fields in which a record's saved config differs from the run's (``train.config_differences``,
    as for an evaluation: engineering fields such as ``amp`` may differ)."""
    from ..train import config_differences  # torch: imported when a record is checked

    return config_differences(saved, DeSTSegConfig.from_dict(config), evaluation=True)


def run_results(run_dir, spec: dict) -> dict | None:
    """Every method's metrics of the run (``metrics.json`` ``results``: DeSTSeg, DeST, NN-baseline)
    when they belong to ``spec`` (same config, the run's method present, taken at ``eval_size``);
    else None."""
    m = read_json(Path(run_dir) / "metrics.json")
    if not isinstance(m, dict) or not isinstance(m.get("results"), dict):
        return None
    if not isinstance(m["results"].get(spec["method"]), dict) or not isinstance(m.get("config"), dict):
        return None
    if config_mismatch(m["config"], spec["config"]):
        return None
    if "eval_size" not in m:  # computed before metrics were taken at eval_size: not comparable
        return None
    return m["results"]


def run_metrics(run_dir, spec: dict) -> dict | None:
    """The metrics of the run's own method (``results[method]``, see :func:`run_results`), or None."""
    res = run_results(run_dir, spec)
    return None if res is None else res[spec["method"]]


def is_finished(run_dir, spec: dict) -> bool:
    """Finished = status ``done`` and a ``metrics.json`` that belongs to this run."""
    return read_status(run_dir).get("state") == "done" and run_metrics(run_dir, spec) is not None


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def held_elsewhere(run_dir) -> dict | None:
    """The lock of a live process on this machine holding the run (else None)."""
    lock = read_json(Path(run_dir) / ".lock")
    if lock and lock.get("host") == socket.gethostname() and lock.get("pid") != os.getpid() \
            and _pid_alive(lock.get("pid")):
        return lock
    return None


def claim(run_dir: Path) -> None:
    """Take the run's lock (an O_EXCL file); a lock of a dead process or another host is taken over."""
    path = run_dir / ".lock"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = held_elsewhere(run_dir)
            if held:
                raise RunBusy(f"{run_dir} is being run by pid {held['pid']} on this machine") from None
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "since": now()}, f)
        return
    raise RunBusy(f"cannot take the lock {path}")


def release(run_dir: Path) -> None:
    lock = read_json(run_dir / ".lock")
    if lock and lock.get("pid") == os.getpid() and lock.get("host") == socket.gethostname():
        (run_dir / ".lock").unlink(missing_ok=True)


