"""Glue for the tutorial notebooks (``notebooks/00-06``): the parameters cell turned into a
:class:`NotebookContext`, the run folder the notebooks share, training with a live loss curve,
the library's source shown next to the paper's equations, and the figures that need a model or the
data readers (drawn by :mod:`destseg_lib.viz`).

Layering: this module imports the pipeline (:mod:`~destseg_lib.experiment`, :mod:`~destseg_lib.train`)
and the figures (:mod:`~destseg_lib.viz`, a leaf); nothing in the package imports it.

Presets: the notebooks' parameters cell says ``preset = "quick"`` (the stored outputs come from it).
``$DESTSEG_NOTEBOOK_PRESET`` (set by the root ``conftest.py`` for ``make test``, and by the browser
test) overrides it, so that CI executes every notebook at the tiny ``ci`` preset while the parameters
cell stays a plain assignment (papermill).
"""
from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from . import viz

PRESET_ENV = "DESTSEG_NOTEBOOK_PRESET"
resolve_device = viz.resolve_device


def find_repo_root(start=None) -> Path:
    """The kit's checkout: the first folder at or above ``start`` (default: the working directory,
    which is ``notebooks/`` under Jupyter, papermill and nbval) holding ``destseg_lib/`` and
    ``notebooks/``; else the folder above this package; else ``start``."""
    start = Path.cwd() if start is None else Path(start)
    for d in (start.resolve(), *start.resolve().parents):
        if (d / "destseg_lib").is_dir() and (d / "notebooks").is_dir():
            return d
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").is_file() else start.resolve()


@dataclass
class NotebookContext:
    """What every notebook needs: the config, the data split, and where runs and figures go."""
    repo: Path
    cfg: object
    split: object
    dataset: str
    category: str | None
    device: str
    out_dir: Path
    fig_dir: Path
    overrides: dict = field(default_factory=dict)
    preset_note: str = ""
    data_note: str = ""

    def savefig(self, fig, name: str) -> None:
        """Save ``fig`` as ``fig_dir/<name>.png`` (modest dpi).  Returns None: the inline backend
        shows pyplot figures at the end of the cell, so the notebook does not display it twice."""
        self.fig_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.fig_dir / f"{name}.png", dpi=100, bbox_inches="tight")

    def short(self, path) -> str:
        """``path`` relative to the repository (``<repo>/...``) when inside it."""
        try:
            return str(Path("<repo>") / Path(path).resolve().relative_to(self.repo))
        except ValueError:
            return str(path)

    # ---- the data as the model sees it (the config's image size and resize mode)
    def test_set(self):
        from .data import TestImages

        return TestImages.for_config(self.split.test, self.cfg)

    def train_images(self, size: int | None = None):
        from .data import TrainImages

        return TrainImages(self.split.train, size or self.cfg.image_size, resize=self.cfg.resize,
                           aspect=self.cfg.aspect, max_aspect=self.cfg.max_aspect)

    def textures(self, augment: bool | None = None):
        """The anomaly-source textures of Eq. 1 as training draws them (``cfg.texture_augment``)."""
        from .textures import make_texture_source

        aug = self.cfg.texture_augment if augment is None else augment
        return make_texture_source(self.cfg.texture_dir, augment=aug, resize=self.cfg.resize)

    def synthesizer(self):
        from .synthesis import AnomalySynthesizer

        gray = self.split.grayscale if self.cfg.grayscale_textures is None else bool(self.cfg.grayscale_textures)
        return AnomalySynthesizer.from_config(self.cfg, self.textures(), gray)

    def batches(self, batch_size: int | None = None, seed: int | None = None, rotation: str | None = None):
        """Training batches (``batches[s]`` = (clean, corrupted, mask) of step ``s``); other seeds
        give draws that training never used."""
        from .train import SyntheticBatches

        return SyntheticBatches(self.train_images(), self.synthesizer(), batch_size or self.cfg.batch_size,
                                self.cfg.seed if seed is None else seed,
                                self.split.rotation if rotation is None else rotation, self.cfg.rotation_fill)

    def __str__(self) -> str:
        c = self.cfg
        lines = ([f"data       {self.data_note}"] if self.data_note else []) + [
                 f"dataset    {self.split.name}: {len(self.split.train)} train / {len(self.split.test)} test images",
                 f"preset     {c.preset}: "
                 + (f"{c.image_size}x{c.image_size}" if c.aspect == "square" else
                    f"short side {c.image_size}, aspect kept (<= {c.max_aspect:g}:1)")
                 + f", batch {c.batch_size}, "
                 f"{c.student_steps} + {c.seg_steps if c.segmentation else 0} steps, teacher {c.teacher}"
                 + (f"  ({self.preset_note})" if self.preset_note else "")]
        if self.overrides:
            lines.append(f"overrides  {self.overrides}")
        lines += [f"device     {self.device}", f"runs in    {self.short(self.out_dir)}",
                  f"figures in {self.short(self.fig_dir)}"]
        return "\n".join(lines)


def run_name(dataset: str, category: str | None, preset: str, seed: int, overrides: dict | None = None) -> str:
    """The run folder's name: one per (dataset, category, preset, seed, overrides)."""
    parts = [dataset] + ([category] if category else []) + [preset] + ([f"seed{seed}"] if seed else [])
    parts += [f"{k}-{v}" for k, v in sorted((overrides or {}).items())]
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", "_".join(str(p) for p in parts))


def check_run_dir(out_dir, cfg) -> None:
    """Refuse a run folder whose checkpoint was trained with another config (fields that may differ
    between sessions excepted), rather than silently loading the wrong model."""
    import json

    from .checkpoint import read_checkpoint
    from .config import DeSTSegConfig
    from .train import config_differences

    out_dir = Path(out_dir)
    saved = None
    if (out_dir / "config.json").is_file():
        saved = json.loads((out_dir / "config.json").read_text())
    elif (out_dir / "checkpoints" / "last.pt").is_file():
        saved = read_checkpoint(out_dir / "checkpoints" / "last.pt")["config"]
    if saved is None:
        return
    diff = config_differences(DeSTSegConfig.from_dict(saved).to_dict(), cfg)
    if diff:
        raise ValueError(f"{out_dir} holds a run trained with a different config (differs in {diff}); "
                         "delete that folder or pass another out_dir")


REAL_DATASET = ("mvtec", "bottle")  # what dataset="auto" looks for: the paper's own data (Table 2)
TEXTURE_FOLDERS = ("dtd/images", "dtd_subset/images")  # data_download.sh's DTD, or a subset of it


def find_real_data(repo=None) -> tuple[Path | None, Path | None]:
    """Where ``dataset="auto"`` finds MVTec AD bottle: the first of ``$DESTSEG_DATA`` and
    ``<repo>/data`` (``data_download.sh``'s default target) holding ``mvtec/bottle/train/good``, and
    the DTD images folder beside it (``dtd/images`` or ``dtd_subset/images``; None if neither).
    ``(None, None)`` when bottle is in neither place."""
    repo = find_repo_root() if repo is None else Path(repo)
    roots = [Path(os.environ["DESTSEG_DATA"])] if os.environ.get("DESTSEG_DATA") else []
    for root in roots + [repo / "data"]:
        if (root / REAL_DATASET[0] / REAL_DATASET[1] / "train" / "good").is_dir():
            textures = next((root / t for t in TEXTURE_FOLDERS if (root / t).is_dir()), None)
            return root, textures
    return None, None


def resolve_dataset(dataset: str, data_root=None, category=None, texture_dir=None, repo=None):
    """``dataset="auto"`` (the notebooks' default): MVTec AD bottle where :func:`find_real_data`
    finds it (with the DTD textures beside it unless ``texture_dir`` is given), else the embedded toy
    set.  Returns ``(dataset, data_root, category, texture_dir, note)``, the note one line saying
    which was chosen and why; other datasets pass through with an empty note."""
    if dataset != "auto":
        return dataset, data_root, category, texture_dir, ""
    root, textures = find_real_data(repo) if data_root is None else (Path(data_root), None)
    if root is not None and (root / REAL_DATASET[0] / REAL_DATASET[1]).is_dir():
        textures = texture_dir or textures
        where = "$DESTSEG_DATA" if os.environ.get("DESTSEG_DATA") and Path(os.environ["DESTSEG_DATA"]) == root \
            else "<repo>/data" if data_root is None else "data_root"
        note = (f"real data: MVTec AD {REAL_DATASET[1]} (found in {where}), anomaly textures "
                + ("from DTD" if textures else "built in (no DTD folder beside it)"))
        return REAL_DATASET[0], root, REAL_DATASET[1], (str(textures) if textures else None), note
    looked = f"{data_root}/mvtec/bottle" if data_root is not None else \
        "$DESTSEG_DATA/mvtec/bottle nor <repo>/data/mvtec/bottle"
    note = (f"toy data: MVTec AD bottle is not in {looked}; get it with "
            "`bash data_download.sh mvtec:bottle dtd` (~750 MB) to run on the real part")
    return "toy", None, None, texture_dir, note


def setup(preset: str = "quick", dataset: str = "auto", data_root=None, category=None, texture_dir=None,
          device: str = "auto", seed: int = 0, out_dir=None, overrides: dict | None = None) -> NotebookContext:
    """Turn the notebooks' parameters into a :class:`NotebookContext`.

    * ``dataset="auto"``: MVTec AD bottle when present, else the toy set (:func:`resolve_dataset`);
      ``"toy"``, ``"mvtec"``, ``"mtd"``, ``"folder"`` choose explicitly.
    * ``preset``: ``$DESTSEG_NOTEBOOK_PRESET`` wins when set (``make test`` runs the notebooks at ``ci``).
    * ``overrides``: config fields, as the CLI's ``--set`` (e.g. ``{"seg_input": "cosine"}``).
    * ``data_root`` None: ``<repo>/data/toy`` for the toy data (generated on first use), else
      ``$DESTSEG_DATA`` (see ``data_download.sh``).
    * ``out_dir`` None: ``$DESTSEG_RUNS`` or ``<repo>/runs/notebooks``, then one sub-folder per
      (dataset, category, preset, seed, overrides), shared by all notebooks (they share checkpoints).
    * figures go to ``$DESTSEG_FIG_DIR`` (set by ``notebooks/run_all.py``) or ``<out_dir>/figures``.
    """
    import torch

    from .config import get_preset
    from .experiment import open_split

    note = ""
    forced = os.environ.get(PRESET_ENV)
    if forced and forced != preset:
        note = f"${PRESET_ENV}={forced}; the parameters cell says {preset!r}"
        preset = forced
    overrides = dict(overrides or {})
    repo = find_repo_root()
    dataset, data_root, category, texture_dir, data_note = resolve_dataset(dataset, data_root, category,
                                                                           texture_dir, repo)
    device = resolve_device(device)
    cfg = get_preset(preset, **{"seed": int(seed), "texture_dir": texture_dir, **overrides})
    torch.manual_seed(int(seed))
    plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 100, "font.size": 9})
    _inline_jpeg()
    if dataset == "toy":
        split = open_split("toy", data_root or repo / "data" / "toy", category, make_toy=data_root is None)
    else:
        split = open_split(dataset, data_root, category)
    if out_dir is None:
        base = Path(os.environ["DESTSEG_RUNS"]) if os.environ.get("DESTSEG_RUNS") else repo / "runs" / "notebooks"
        out_dir = base / run_name(dataset, category, preset, int(seed), overrides)
    out_dir = Path(out_dir)
    check_run_dir(out_dir, cfg)
    fig_dir = Path(os.environ["DESTSEG_FIG_DIR"]) if os.environ.get("DESTSEG_FIG_DIR") else out_dir / "figures"
    return NotebookContext(repo, cfg, split, dataset, category, device, out_dir, fig_dir, overrides, note,
                           data_note)


def _inline_jpeg(quality: int = 85) -> None:
    """Inside IPython, show figures as JPEG: the notebooks' stored outputs (read on GitHub) stay
    small.  The files written by :meth:`NotebookContext.savefig` stay PNG."""
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:
        return
    if get_ipython() is not None:
        set_matplotlib_formats("jpeg", pil_kwargs={"quality": quality})


# ================================================================================ code and training
def show_source(*objects):
    """The source of library functions / classes (``inspect.getsource``), with file and line
    numbers, as a Markdown code block: what the notebooks show next to each equation."""
    from IPython.display import Markdown

    blocks = []
    for obj in objects:
        lines, start = inspect.getsourcelines(obj)
        path = Path(inspect.getsourcefile(obj)).resolve()
        try:
            where = path.relative_to(Path(__file__).resolve().parent.parent)
        except ValueError:
            where = path.name
        blocks.append(f"`{where}`, lines {start}-{start + len(lines) - 1}:\n\n```python\n{''.join(lines).rstrip()}\n```")
    return Markdown("\n\n".join(blocks))


class LiveLossPlot:
    """A loss curve that redraws in place while training runs: pass ``live.update`` as
    ``callback``.  Uses an IPython display handle (works in JupyterLab, and headless under
    papermill / nbval, where the last drawing is what the notebook keeps)."""

    def __init__(self, title: str = "training loss", keys=("loss",), every: int = 1, log: bool = False,
                 stage: int | None = None):
        from matplotlib.figure import Figure

        self.rows, self.keys, self.every, self.stage = [], tuple(keys), max(1, int(every)), stage
        self.fig = Figure(figsize=(6.5, 2.8))
        self.ax = self.fig.add_subplot()
        self.title, self.log, self.handle, self._drawn = title, log, None, 0

    def _draw(self):
        self.ax.clear()
        for key in self.keys:
            pts = [(r["step"], r[key]) for r in self.rows if key in r]
            if pts:
                self.ax.plot(*zip(*pts), lw=1.2, marker="." if len(pts) < 50 else None, label=key)
        self.ax.set(title=self.title, xlabel="step", yscale="log" if self.log else "linear")
        self.ax.grid(alpha=0.3)
        if len(self.keys) > 1:
            self.ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
        self.fig.tight_layout()

    def _show(self) -> None:
        from IPython.display import display

        self._draw()
        if self.handle is None:
            self.handle = display(self.fig, display_id=True)
        else:
            self.handle.update(self.fig)
        self._drawn = len(self.rows)

    def update(self, row: dict) -> None:
        if self.stage is not None and row.get("stage") != self.stage:
            return
        self.rows.append(dict(row))
        if len(self.rows) % self.every == 0:
            self._show()

    def close(self):
        """Draw the last steps if ``every`` skipped them; returns the figure."""
        if self.rows and self._drawn != len(self.rows):
            self._show()
        return self.fig


def load_or_train(ctx: NotebookContext, stage: int | None = None, every: int = 5):
    """:func:`destseg_lib.experiment.load_or_train` for the notebooks: the run folder's model when it
    exists (stage 1: the student checkpoint is enough), else train it with a live loss curve.
    Returns (model, history, trained) — ``trained`` is False when it was loaded."""
    from . import experiment

    if stage == 1:
        live = LiveLossPlot("stage 1: cosine loss (Eq. 4), live", stage=1, every=every)
    else:
        live = LiveLossPlot("segmentation loss (Eq. 7), live", keys=("loss", "focal", "l1"), log=True,
                            stage=2 if ctx.cfg.segmentation else 1, every=every)
    model, history = experiment.load_or_train(ctx.cfg, ctx.split, ctx.out_dir, device=ctx.device,
                                              progress=False, stage=stage, callback=live.update)
    if live.rows:
        live.close()
    return model, history, bool(live.rows)


def predictions(ctx: NotebookContext, model, baseline: bool = False):
    """The test set at the config's size and the model's predictions on it: (test_set, preds).
    ``baseline=True`` (and ``cfg.baseline``) adds the training-free nearest-neighbour baseline's maps
    (:mod:`destseg_lib.baseline`: fitted on the training images, as ``destseg run`` does)."""
    from .infer import predict_dataset
    from .precision import resolve_precision

    test_set = ctx.test_set()
    preds = predict_dataset(model, test_set, device=ctx.device, top_t=ctx.cfg.top_t, progress=False,
                            precision=resolve_precision(ctx.cfg.amp, ctx.device))
    if baseline and ctx.cfg.baseline:
        from .baseline import add_baseline

        preds, _ = add_baseline(preds, model, ctx.cfg, ctx.split.train, test_set)
    return test_set, preds


def toy_vs_real(ctx: NotebookContext, results: dict) -> tuple[list[dict], str]:
    """The same preset, seed and overrides on the toy set and on MVTec AD bottle: ``results`` (of
    ``ctx``'s data), and the other data's model trained here (or loaded from its own run folder) and
    evaluated — bottle only where :func:`find_real_data` finds it.  Returns (rows, note): one row per
    (data, method), percent, IAP and IAP@90 interpolated as in the paper's Table 3; then the paper's
    bottle row (Tables 2-3, (mean, std) over 5 seeds; its text has no per-category image AUROC).
    The note says what is missing, else ""."""
    from .experiment import evaluate_predictions
    from .paper import paper_table

    keys = {"image_auroc": "image_auroc", "pixel_auroc": "pixel_auroc", "pixel_ap": "pixel_ap",
            "aupro": "aupro", "iap": "iap_interp", "iap90": "iap90_interp"}

    def rows_of(label, res):
        return [{"data": label, "method": m, **{k: 100 * r[src] for k, src in keys.items() if src in r}}
                for m, r in res.items()]

    here = {"toy": "toy", "mvtec": "bottle" if ctx.category == "bottle" else None}.get(ctx.dataset)
    if here is None:
        return [], f"{ctx.split.name}: this section compares the toy set with MVTec AD bottle; run on either"
    rows, note = {here: rows_of(here, results)}, ""
    other = "toy" if here == "bottle" else "bottle"
    if other == "bottle" and find_real_data(ctx.repo)[0] is None:
        note = "MVTec AD bottle not present: no real rows (bash data_download.sh mvtec:bottle dtd)"
    else:
        o = setup(ctx.cfg.preset, "toy" if other == "toy" else "auto", device=ctx.device, seed=ctx.cfg.seed,
                  overrides=ctx.overrides)
        model, _, _ = load_or_train(o)
        _, preds = predictions(o, model, baseline=True)
        rows[other] = rows_of(other, evaluate_predictions(preds))
    paper = {k: v for k, v in paper_table("bottle").items() if v is not None}
    return rows.get("toy", []) + rows.get("bottle", []) + [
        {"data": "bottle", "method": "paper DeSTSeg (5 seeds)", **paper}], note


LABELS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pixel_ap": "pixel AP", "aupro": "AUPRO",
          "iap": "IAP", "iap90": "IAP@90"}


def who_wins(rows: list[dict], keys=("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "iap", "iap90")) -> list[str]:
    """One line per (data, other method) of :func:`toy_vs_real`'s rows: the metrics on which DeSTSeg
    is ahead of DeST-only / the NN-baseline and those on which it is behind, with the difference in
    percentage points (ties, |d| < 0.05, left out)."""
    out = []
    for data in dict.fromkeys(r["data"] for r in rows):
        by = {r["method"]: r for r in rows if r["data"] == data}
        if "DeSTSeg" not in by:
            continue
        for m in ("DeST", "NN-baseline"):
            if m not in by:
                continue
            d = {k: by["DeSTSeg"][k] - by[m][k] for k in keys if k in by["DeSTSeg"] and k in by[m]}
            ahead = ", ".join(f"{LABELS[k]} {v:+.1f}" for k, v in d.items() if v >= 0.05) or "nothing"
            behind = ", ".join(f"{LABELS[k]} {v:+.1f}" for k, v in d.items() if v <= -0.05) or "nothing"
            out.append(f"{data:<7} DeSTSeg vs {m}: ahead on {ahead}; behind on {behind}")
    return out


def format_toy_vs_real(rows: list[dict]) -> str:
    """:func:`toy_vs_real`'s rows as a fixed-width table (percent; "a ± s" for the paper's row)."""
    cols = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "iap", "iap90")
    head = ["data", "method", "image AUROC", "pixel AUROC", "pixel AP", "AUPRO", "IAP", "IAP@90"]

    def cell(v):
        return "-" if v is None else f"{v[0]:.1f} ± {v[1]:.1f}" if isinstance(v, tuple) else f"{v:.1f}"

    body = [[r["data"], r["method"], *(cell(r.get(k)) for k in cols)] for r in rows]
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]

    def line(xs):
        return "  ".join(x.ljust(w) if i < 2 else x.rjust(w) for i, (x, w) in enumerate(zip(xs, widths)))

    return "\n".join([line(head), "-" * len(line(head))] + [line(b) for b in body])


# ================================================================================ data figures
def dataset_stats(split) -> list[dict]:
    """One row per (part, defect type): image count, native sizes, and the defect area as a
    fraction of the image (mean / min / max over that type's masks), at native resolution."""
    from .data import image_hw, read_mask

    groups: dict[tuple, list] = {}
    for part, samples in (("train", split.train), ("test", split.test)):
        for s in samples:
            groups.setdefault((part, s.defect_type), []).append(s)
    rows = []
    for (part, kind), samples in groups.items():
        sizes = sorted({image_hw(s.path) for s in samples})
        fr = [float(read_mask(s.mask_path).mean()) for s in samples if s.mask_path]
        rows.append({"part": part, "type": kind, "images": len(samples),
                     "size (HxW)": ", ".join(f"{h}x{w}" for h, w in sizes[:3]) + (" ..." if len(sizes) > 3 else ""),
                     "area mean": float(np.mean(fr)) if fr else "-", "area min": float(np.min(fr)) if fr else "-",
                     "area max": float(np.max(fr)) if fr else "-"})
    return rows


def defective_pixel_fraction(split) -> tuple[int, int]:
    """(defective pixels, all pixels) over the test images, at native resolution."""
    from .data import image_hw, read_mask

    bad = total = 0
    for s in split.test:
        h, w = image_hw(s.path)
        total += h * w
        bad += int(read_mask(s.mask_path).sum()) if s.mask_path else 0
    return bad, total


def plot_dataset_grid(split, per_type: int = 2, path=None):
    """Normal training images, then ``per_type`` test images of each type, defects outlined in red,
    masks underneath (native resolution)."""
    from .data import read_image, read_mask

    cols = [("train/good", s) for s in split.train[:per_type]]
    for kind in sorted({s.defect_type for s in split.test}, key=lambda k: (k != "good", k)):
        cols += [(f"test/{kind}", s) for s in [t for t in split.test if t.defect_type == kind][:per_type]]
    columns = []
    for name, s in cols:
        img = read_image(s.path)
        columns.append((name, img, read_mask(s.mask_path) if s.mask_path else np.zeros(img.shape[:2], bool)))
    return viz.plot_dataset_grid(columns, path)


def plot_perlin_lattice(scale=(3, 3), seed: int = 0, size: int = 96, path=None):
    """Perlin noise next to its ingredients, the random unit gradients on the lattice corners:
    the same draws as ``perlin_noise(..., np.random.default_rng(seed))`` (Sec. 3.1, from DRAEM)."""
    from .synthesis import perlin_noise

    sy, sx = scale
    noise = perlin_noise((size, size), (sy, sx), np.random.default_rng(seed))
    angles = np.random.default_rng(seed).uniform(0.0, 2 * np.pi, size=(sy + 1, sx + 1))  # same draws
    return viz.plot_perlin_lattice(noise, angles, path)


# ================================================================================ model figures
def feature_distances(model, images):
    """Teacher vs student cosine distance maps (Eq. 3) for ``images`` (B x 3 x H x W in [0, 1]):
    a list of three B x h x w arrays (strides 4, 8, 16) and the DeST map, as numpy."""
    import torch

    model.eval()
    with torch.no_grad():
        out = model(images.to(next(model.parameters()).device))
    return [c[:, 0].float().cpu().numpy() for c in out["cosine_maps"]], out["de_st"][:, 0].float().cpu().numpy()


def feature_distance_stats(model, clean, corrupted, masks) -> list[dict]:
    """Mean teacher-student cosine distance per level on the clean images, and on the corrupted
    images outside / inside the synthetic anomaly.  Each feature cell is weighted by the fraction of
    it the mask covers (area-downsampled mask), so small anomalies still count at stride 16."""
    import torch.nn.functional as F

    levels_clean, _ = feature_distances(model, clean)
    levels_bad, _ = feature_distances(model, corrupted)
    rows = []
    for k, (dc, db) in enumerate(zip(levels_clean, levels_bad)):
        w = F.interpolate(masks.float(), size=db.shape[-2:], mode="area")[:, 0].numpy()
        inside = float((db * w).sum() / w.sum()) if w.sum() > 0 else float("nan")
        outside = float((db * (1 - w)).sum() / (1 - w).sum()) if (1 - w).sum() > 0 else float("nan")
        rows.append({"level": f"{k + 1} (stride {4 * 2 ** k})", "clean image": float(dc.mean()),
                     "corrupted, outside mask": outside, "corrupted, inside mask": inside})
    return rows


def plot_feature_distances(model, clean, corrupted, masks, path=None):
    """Distance maps of clean and corrupted images, mask outlined (see :func:`viz.plot_distance_maps`)."""
    levels_c, de_c = feature_distances(model, clean)
    levels_b, de_b = feature_distances(model, corrupted)
    return viz.plot_distance_maps(clean, corrupted, masks, levels_c, de_c, levels_b, de_b, path)


def plot_segmentation_input(model, images, masks, index: int = 0, path=None):
    """The segmentation net's input (Eq. 2, Table 6 "product") for one image: per level the channel
    sum of -(T_hat * S_hat), i.e. minus the cosine similarity, next to the mask."""
    import torch

    from .models import segmentation_input

    model.eval()
    with torch.no_grad():
        t, s = model.features(images[index:index + 1].to(next(model.parameters()).device))
        x = segmentation_input(t, s, "product")[0].cpu()
    bounds = np.cumsum([0, *[f.shape[1] for f in t]])
    sums = [x[bounds[k]:bounds[k + 1]].sum(0).numpy() for k in range(len(t))]
    return viz.plot_segmentation_channels(images[index], masks[index, 0], sums, np.diff(bounds), path)


def plot_segmentation_predictions(model, images, masks, path=None, n: int = 6):
    """Synthetic anomalies: input | synthetic mask | predicted map (segmentation net, upsampled),
    the map on the fixed 0-1 scale with a colorbar."""
    from .infer import predict

    model.eval()
    out = predict(model, images[:n].to(next(model.parameters()).device), top_t=1)
    rows = {"input": list(images[:n]), "synthetic mask": [m[0] for m in masks[:n]],
            "prediction": list(out["anomaly_map"].float().cpu().numpy())}
    return viz.plot_image_rows(rows, cmaps={"prediction": viz.ANOMALY_CMAP}, ranges={"prediction": viz.PROB_RANGE},
                               colorbars=("prediction",), path=path)


def layer_summary(module, title: str | None = None) -> str:
    """A readable summary of a network: one line per direct child (name, type, parameters) and the
    total -- what each part of the student or the segmentation net weighs."""
    rows = []
    for name, child in module.named_children():
        n = sum(p.numel() for p in child.parameters())
        convs = [m for m in child.modules() if m.__class__.__name__ == "Conv2d"]
        out = f"-> {convs[-1].out_channels} ch" if convs else ""
        rows.append((name, type(child).__name__, n, out))
    width = max([len(r[0]) for r in rows] + [4])
    total = sum(p.numel() for p in module.parameters())
    lines = [title or type(module).__name__]
    lines += [f"  {name:<{width}}  {kind:<22} {n:>11,} params  {out}" for name, kind, n, out in rows]
    lines.append(f"  {'total':<{width}}  {'':<22} {total:>11,} params")
    return "\n".join(lines)
