#!/usr/bin/env python
"""Execute the tutorial notebooks in order with papermill; stop at the first that fails.

    python notebooks/run_all.py                                   # quick preset, toy data (minutes, CPU)
    python notebooks/run_all.py --param preset=ci                 # the tiny CI preset (seconds)
    python notebooks/run_all.py --param preset=paper --param dataset=mvtec --param category=bottle \\
        --param data_root=/data/destseg --param texture_dir=/data/destseg/dtd/images --param device=cuda
    python notebooks/run_all.py --inplace                         # refresh the stored outputs (quick)

Executed copies go to ``--out`` (default ``notebooks/_executed/``, git-ignored), their figures to
``<out>/figures/NN_*.png`` (through ``$DESTSEG_FIG_DIR``).  Parameters are passed to every notebook
as papermill parameters; values are read as Python literals when they parse (``seed=1`` -> 1,
``data_root=None`` -> None), else kept as strings.  On the first failure the script prints the
notebook's name and the path of its executed copy (which shows the error) and exits with status 1;
later notebooks are not run.

``--inplace`` re-executes the notebooks themselves to refresh the outputs stored in git, training
from scratch in a fresh temporary run folder (``--runs`` to choose one); papermill's bookkeeping,
its injected-parameters cell and widget state are removed.  Every executed notebook gets, in its
cell tagged ``provenance`` (and in its metadata, ``destseg_provenance``), the preset and parameters
that produced its outputs, how long it and the whole chain took, on what machine, and how to re-run.
``$DESTSEG_NOTEBOOK_PRESET`` (which the notebooks obey, for ``make test``) is ignored here: use
``--param preset=...``.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTEBOOK = re.compile(r"^\d\d_.*\.ipynb$")
PRESET_ENV = "DESTSEG_NOTEBOOK_PRESET"  # destseg_lib.notebook.PRESET_ENV (not imported: no torch here)


def parse_param(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param {text!r}: use NAME=VALUE, e.g. preset=quick")
    name, value = text.split("=", 1)
    if not name.isidentifier():
        raise argparse.ArgumentTypeError(f"--param {text!r}: {name!r} is not a parameter name")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def notebooks_in(folder: Path, only=None) -> list[Path]:
    found = sorted(p for p in folder.iterdir() if NOTEBOOK.match(p.name))
    if only:
        found = [p for p in found if any(p.name.startswith(o) for o in only)]
    return found


def _strip_papermill(path: Path) -> None:
    """Remove papermill's per-run metadata (timings, status) and its injected-parameters cell, so
    re-executions diff cleanly and the parameters cell stays the only one."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.metadata.get("tags") == []:
            cell.metadata.pop("tags")
    nbformat.write(nb, path)


def notebook_defaults(path: Path) -> dict:
    """The values of the notebook's parameters cell (plain assignments of literals)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if "parameters" in cell.metadata.get("tags", []):
            out = {}
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    try:
                        out[node.targets[0].id] = ast.literal_eval(node.value)
                    except ValueError:
                        pass
            return out
    return {}


def machine() -> str:
    """The machine in words: OS, CPU model and cores, Python, torch, the GPU when there is one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [f"{platform.system()} {platform.machine()}", f"{cpu} ({cores} CPU cores)",
             f"Python {platform.python_version()}"]
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    except ImportError:
        pass
    return ", ".join(parts)


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def provenance(params: dict, seconds: float, chain_seconds: float, n_books: int, command: str, when: str,
               where: str) -> tuple[str, dict]:
    """The provenance cell's markdown and the matching metadata."""
    shown = {k: v for k, v in params.items()
             if k not in ("preset", "dataset", "resolved_dataset", "data_root", "texture_dir") and v not in (None, {}, "auto")}
    extra = "".join(f", {k} `{v!r}`" for k, v in shown.items())
    device = params.get("device", "auto")
    if device in (None, "auto"):
        try:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            device = "cpu"
    data = f"the `{params.get('dataset')}` data"
    if params.get("resolved_dataset"):
        data = f"`{params['resolved_dataset']}` (`dataset=\"{params.get('dataset')}\"`)"
    text = (f"> **Stored outputs** — preset `{params.get('preset')}` on {data}{extra}"
            f" (device `{device}`): this notebook ran in {_duration(seconds)}, the chain of {n_books} notebooks in "
            f"{_duration(chain_seconds)} (training included, from scratch), on {when} on {where}; written by "
            f"`{command}`.\n>\n"
            "> Re-run: `python notebooks/run_all.py --inplace` refreshes these outputs (the `quick` preset); "
            "without `--inplace` the executed copies go to `notebooks/_executed/` (`--param preset=ci`: "
            "seconds). `make test` executes this notebook at the `ci` preset and compares only the cells "
            "marked `# NBVAL_CHECK_OUTPUT`, which print what does not depend on the preset or the CPU.")
    meta = {"preset": params.get("preset"), "dataset": params.get("dataset"), "parameters": params,
            "seconds": round(seconds, 1), "chain_seconds": round(chain_seconds, 1), "date": when,
            "machine": where, "command": command}
    return text, meta


def write_provenance(path: Path, text: str, meta: dict) -> None:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "provenance" in cell.metadata.get("tags", []):
            cell.source = text
    nb.metadata["destseg_provenance"] = meta
    nbformat.write(nb, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--param", "-p", action="append", type=parse_param, default=[], metavar="NAME=VALUE",
                    help="a notebook parameter (repeatable): preset, dataset, data_root, category, "
                         "texture_dir, device, seed, out_dir, overrides (a dict, e.g. "
                         "overrides=\"{'l1_loss': False}\")")
    ap.add_argument("--out", type=Path, default=HERE / "_executed", help="folder for the executed notebooks")
    ap.add_argument("--notebooks", type=Path, default=HERE, help="folder holding the NN_*.ipynb notebooks")
    ap.add_argument("--only", nargs="*", help="run only the notebooks whose names start with these prefixes")
    ap.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebooks' own)")
    ap.add_argument("--timeout", type=int, default=None, help="seconds allowed per cell (default: none)")
    ap.add_argument("--inplace", action="store_true",
                    help="execute the notebooks in place (refresh the stored outputs), training from scratch")
    ap.add_argument("--runs", type=Path, default=None,
                    help="run folder root ($DESTSEG_RUNS) for the notebooks' checkpoints; default with "
                         "--inplace: a fresh temporary folder, else $DESTSEG_RUNS or runs/notebooks")
    args = ap.parse_args(argv)

    import papermill as pm

    params = dict(args.param)
    books = notebooks_in(args.notebooks, args.only)
    if not books:
        print(f"no NN_*.ipynb notebooks in {args.notebooks}", file=sys.stderr)
        return 2
    out = args.notebooks if args.inplace else args.out
    out.mkdir(parents=True, exist_ok=True)
    if os.environ.pop(PRESET_ENV, None):
        print(f"note: ${PRESET_ENV} ignored here (use --param preset=...)", flush=True)
    if not args.inplace:
        os.environ["DESTSEG_FIG_DIR"] = str((out / "figures").resolve())
    runs = args.runs or (Path(tempfile.mkdtemp(prefix="destseg-refresh-")) if args.inplace else None)
    if runs is not None:
        os.environ["DESTSEG_RUNS"] = str(Path(runs).resolve())
    print(f"{len(books)} notebooks -> {out}" + (f"  parameters {params}" if params else "")
          + (f"  runs in {runs}" if runs else ""), flush=True)
    command = "python notebooks/run_all.py" + "".join(f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:]))
    done = []
    t_chain = time.perf_counter()
    for nb in books:
        target = out / nb.name
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(target), parameters=params, cwd=str(args.notebooks),
                                kernel_name=args.kernel, progress_bar=False, execution_timeout=args.timeout)
        except Exception as e:  # papermill's PapermillExecutionError, or a kernel that died
            print(f"  FAILED  {nb.name}", flush=True)
            print(f"\nFAILED: {nb.name} ({type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e!r})",
                  file=sys.stderr)
            print(f"the executed copy with the error: {target}", file=sys.stderr)
            return 1
        seconds = time.perf_counter() - t0
        if args.inplace:
            _strip_papermill(target)
        effective = {**notebook_defaults(nb), **params}
        if effective.get("dataset") == "auto":  # which data "auto" found here (the notebook prints it too)
            from destseg_lib.notebook import resolve_dataset

            name, _, category, _, _ = resolve_dataset("auto", effective.get("data_root"), None, None)
            effective["resolved_dataset"] = f"{name}/{category}" if category else name
        done.append((target, effective, seconds))
        print(f"  ok      {nb.name} ({seconds:.0f} s)", flush=True)
    chain = time.perf_counter() - t_chain
    when, where = datetime.date.today().isoformat(), machine()
    for target, effective, seconds in done:
        write_provenance(target, *provenance(effective, seconds, chain, len(done), command, when, where))
    print(f"all {len(books)} notebooks ran in {chain:.0f} s; executed copies in {out}" +
          ("" if args.inplace else f", figures in {out / 'figures'}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
