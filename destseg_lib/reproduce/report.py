"""A batch's outputs: ``results.csv``, ``summary.csv`` / ``.md``, figures and ``REPORT.md``."""
from __future__ import annotations

import json
import math
from pathlib import Path

from .. import paper
from ..config import get_preset

from ..files import atomic_write_text, write_csv
from .aggregate import (BASELINE_VARIANT, ablation_comparison, collect, headline_groups, load_grid, ordering_check,
                        paper_comparison, summarize, variant_config)
from .grid import KEY_LABELS, TABLE_KEYS, VARIANT_HELP, VARIANTS, Grid
from .records import now, read_json


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

    heads = headline_groups(summary)
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
    meta = meta or read_json(out_dir / "batch.json") or {}
    rows = collect(out_dir, grid)
    summary = summarize(rows)
    comparison = paper_comparison(summary, grid)
    ablation = ablation_comparison(summary, grid)
    checks = ordering_check(ablation)
    write_csv(rows, out_dir / "results.csv", digits=4)
    write_csv(summary, out_dir / "summary.csv", digits=4)
    md = summary_markdown([r for r in summary if r["n"] > 0]) if any(r["n"] for r in summary) else "(no finished run yet)"
    atomic_write_text(out_dir / "summary.md", "# Summary (percent, mean ± std over seeds)\n\n" + md + "\n")
    figures = []
    if any(r["n"] for r in summary):
        import matplotlib.pyplot as plt

        done = [r for r in summary if r["n"] > 0]
        plt.close(plot_categories(done, comparison, out_dir / "figures" / "categories.png"))
        figures.append("figures/categories.png")
        plt.close(plot_ablation(done, ablation, out_dir / "figures" / "ablation.png"))
        figures.append("figures/ablation.png")
    report = out_dir / "REPORT.md"
    atomic_write_text(report, _report_text(grid, meta, rows, md, comparison, ablation, checks, figures))
    return report


def _report_text(grid, meta, rows, summary_md, comparison, ablation, checks, figures) -> str:
    rows = [r for r in rows if r["variant"] != BASELINE_VARIANT]  # the runs themselves
    states = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    secs = sum(float(r["seconds"]) for r in rows if r["state"] == "done" and r["seconds"] not in ("", None))
    L = [f"# Reproduction report{': ' + grid.name if grid.name else ''}", ""]
    L += [f"Generated {now()} by `destseg reproduce` (destseg kit). Numbers are percent; ± is the sample "
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
        tags = [f"T{e['table']} {e['row']}" for e in paper.ablation_rows(variant_config(grid, v.name), v.overrides)]
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
          "DeST-only runs (segmentation off) report the DeST map's numbers. `nn_baseline`: the "
          "training-free nearest-neighbour baseline on the same frozen teacher (`baseline.py`), scored "
          "by each seed's first run beside its own method.", "", summary_md.replace("### ", "### "), ""]
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


