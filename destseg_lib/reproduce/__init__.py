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
``run.ipynb`` (the executed run notebook ``destseg_lib/reproduce/run_notebook.ipynb``, papermill engine),
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

Modules: :mod:`.grid` (the grid and its runs), :mod:`.records` (status, metrics and locks on disk),
:mod:`.runner` (one run), :mod:`.executors` (where runs execute), :mod:`.batch` (plan, run, report),
:mod:`.aggregate` (rows, mean ± std, the paper beside them), :mod:`.report` (CSV, Markdown, figures,
``REPORT.md``) and :mod:`.cli` (``destseg reproduce``).
"""
from __future__ import annotations

from .aggregate import (ablation_comparison, collect, load_grid, ordering_check, paper_comparison,
                        summarize)
from .batch import BatchResult, plan, resolve_engine, run_batch
from .cli import add_arguments, command, main
from .grid import (GROUPS, KEY_LABELS, KEYS, NOTEBOOK, TABLE_KEYS, VARIANT_HELP, VARIANTS, Grid, ReproduceError,
                   RunBusy, RunSpec, Target, Variant, resolve_targets, resolve_variants)
from .records import is_finished, read_status, run_metrics, write_status
from .report import summary_markdown, write_outputs
from .runner import execute_run, notebook_parameters, run_one, training_logger

__all__ = ["BatchResult", "GROUPS", "Grid", "KEYS", "KEY_LABELS", "NOTEBOOK", "ReproduceError", "RunBusy",
           "RunSpec", "TABLE_KEYS", "Target", "VARIANTS", "VARIANT_HELP", "Variant", "ablation_comparison",
           "add_arguments", "collect", "command", "execute_run", "is_finished", "load_grid", "main",
           "notebook_parameters", "ordering_check", "paper_comparison", "plan", "read_status", "resolve_engine",
           "resolve_targets", "resolve_variants", "run_batch", "run_metrics", "run_one", "summarize",
           "summary_markdown", "training_logger", "write_outputs", "write_status"]
