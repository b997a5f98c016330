"""``destseg reproduce``: its options, and the ``_execute`` entry point of the local executor."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ..config import PRESETS

from .batch import resolve_engine, run_batch
from .grid import GROUPS, VARIANT_HELP, VARIANTS, Grid, ReproduceError
from .records import is_finished, read_status
from .report import write_outputs
from .runner import execute_run


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
                   help="papermill: execute the run notebook per run (default when installed); "
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

