#!/usr/bin/env python
"""Execute the tutorial notebooks in order with papermill; stop at the first that fails.

    python notebooks/run_all.py                                   # ci preset, toy data (seconds)
    python notebooks/run_all.py --param preset=quick              # meaningful numbers (minutes, CPU)
    python notebooks/run_all.py --param preset=paper --param dataset=mvtec --param category=bottle \\
        --param data_root=/data/destseg --param texture_dir=/data/destseg/dtd/images --param device=cuda

Executed copies go to ``--out`` (default ``notebooks/_executed/``, git-ignored), their figures to
``<out>/figures/NN_*.png`` (through ``$DESTSEG_FIG_DIR``).  Parameters are passed to every notebook
as papermill parameters; values are read as Python literals when they parse (``seed=1`` -> 1,
``data_root=None`` -> None), else kept as strings.  On the first failure the script prints the
notebook's name and the path of its executed copy (which shows the error) and exits with status 1;
later notebooks are not run.

``--inplace`` re-executes the notebooks themselves, with their default parameters, to refresh the
outputs stored in git (widget state is not stored; papermill's bookkeeping metadata is removed).
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTEBOOK = re.compile(r"^\d\d_.*\.ipynb$")


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
    """Remove papermill's per-run metadata (timings, status) so re-executions diff cleanly."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.metadata.get("tags") == []:
            cell.metadata.pop("tags")
    nbformat.write(nb, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--param", "-p", action="append", type=parse_param, default=[], metavar="NAME=VALUE",
                    help="a notebook parameter (repeatable): preset, dataset, data_root, category, "
                         "texture_dir, device, seed, out_dir")
    ap.add_argument("--out", type=Path, default=HERE / "_executed", help="folder for the executed notebooks")
    ap.add_argument("--notebooks", type=Path, default=HERE, help="folder holding the NN_*.ipynb notebooks")
    ap.add_argument("--only", nargs="*", help="run only the notebooks whose names start with these prefixes")
    ap.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebooks' own)")
    ap.add_argument("--timeout", type=int, default=None, help="seconds allowed per cell (default: none)")
    ap.add_argument("--inplace", action="store_true",
                    help="execute the notebooks in place with their defaults (refresh the stored outputs)")
    args = ap.parse_args(argv)

    import papermill as pm

    params = dict(args.param)
    if args.inplace and params:
        ap.error("--inplace keeps the notebooks' default parameters: drop --param")
    books = notebooks_in(args.notebooks, args.only)
    if not books:
        print(f"no NN_*.ipynb notebooks in {args.notebooks}", file=sys.stderr)
        return 2
    out = args.notebooks if args.inplace else args.out
    out.mkdir(parents=True, exist_ok=True)
    if not args.inplace:
        os.environ["DESTSEG_FIG_DIR"] = str((out / "figures").resolve())
    print(f"{len(books)} notebooks -> {out}" + (f"  parameters {params}" if params else ""), flush=True)
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
        if args.inplace:
            _strip_papermill(target)
        print(f"  ok      {nb.name} ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"all {len(books)} notebooks ran; executed copies in {out}" +
          ("" if args.inplace else f", figures in {out / 'figures'}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
