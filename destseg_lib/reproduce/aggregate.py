"""The records of a batch as rows, mean +- std over seeds, and the paper's tables beside them."""
from __future__ import annotations

import math
from pathlib import Path

from .. import paper
from ..config import get_preset

from .grid import KEYS, Grid, ReproduceError
from .records import read_json, read_status, run_results


def _pct(v) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return math.nan
    return 100.0 * v if math.isfinite(v) else math.nan


#: The pseudo-variant of the training-free yardstick's rows (``metrics.json`` "NN-baseline").
BASELINE_VARIANT = "nn_baseline"
BASELINE_METHOD = "NN-baseline"


def collect(out_dir, grid: Grid | None = None) -> list[dict]:
    """One row per run of the grid (``grid.json`` of ``out_dir`` by default): identity, state,
    seconds, error, and the run's metrics in percent (NaN where missing or undefined).

    Then, per dataset / category and seed, one row of variant ``nn_baseline``: the training-free
    nearest-neighbour baseline (``baseline.py``) that the first finished run of that seed (in the
    grid's variant order) scored beside its own method (the baseline uses only the frozen teacher
    and the seed's memory bank, so every variant with the same teacher scores the same)."""
    out_dir = Path(out_dir)
    if grid is None:
        grid = load_grid(out_dir)
    rows, baseline_rows, seen = [], [], set()
    for s in grid.runs():
        d = out_dir / "runs" / s.key
        st = read_status(d)
        results = run_results(d, s.to_dict()) if st.get("state") == "done" else None
        res = results[s.method] if results else None
        state = st.get("state", "new")
        if state == "done" and res is None:
            state = "incomplete"  # status done, but metrics.json is missing or of another config
        ident = {"dataset": s.target.dataset, "category": s.target.category or "", "group": s.target.label}
        row = {**ident, "variant": s.variant.name, "seed": s.seed, "method": s.method, "state": state,
               "seconds": st.get("seconds", ""), "error": "" if state == "done" else st.get("error", "")}
        row.update({k: _pct(res.get(k)) if res else math.nan for k in KEYS})
        rows.append(row)
        base = (results or {}).get(BASELINE_METHOD)
        if isinstance(base, dict) and (s.target.label, s.seed) not in seen:
            seen.add((s.target.label, s.seed))
            baseline_rows.append({**ident, "variant": BASELINE_VARIANT, "seed": s.seed, "method": BASELINE_METHOD,
                                  "state": "done", "seconds": "", "error": "",
                                  **{k: _pct(base.get(k)) for k in KEYS}})
    return rows + baseline_rows


def load_grid(out_dir) -> Grid:
    g = read_json(Path(out_dir) / "grid.json")
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


def variant_config(grid: Grid, name: str) -> dict:
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
                      paper.ablation_rows(variant_config(grid, v.name), v.overrides))]
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
    heads = headline_groups(summary)
    for v in grid.variants:
        rows = paper.ablation_rows(variant_config(grid, v.name), v.overrides)
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


def headline_groups(summary: list[dict]) -> dict:
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


