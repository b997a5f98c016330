"""The grid: datasets / categories x seeds x variants -> one :class:`RunSpec` per run; the variant registry."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import paper
from ..config import VARIANT_GROUPS, get_preset, parse_field
from ..config import VARIANT_HELP as VARIANT_HELP  # re-exported: the report and the CLI print it
from ..config import VARIANTS as CONFIG_VARIANTS
from ..errors import DestSegError

#: The run notebook (package data): what the papermill engine executes once per run.
NOTEBOOK = Path(__file__).resolve().parent / "run_notebook.ipynb"
#: Built-in variants and groups: the config's registry.
VARIANTS, GROUPS = CONFIG_VARIANTS, VARIANT_GROUPS
#: Metrics collected per run (``metrics.evaluate`` keys), reported in percent.
KEYS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "iap", "iap90", "iap_interp", "iap90_interp")
KEY_LABELS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pixel_ap": "pixel AP",
              "aupro": "AUPRO", "iap": "IAP step", "iap90": "IAP@90 step", "iap_interp": "IAP interp.",
              "iap90_interp": "IAP@90 interp."}
#: Columns of the summary tables: the six metrics plus the interpolated IAP the paper reports.
TABLE_KEYS = KEYS
STATES = ("done", "failed", "interrupted", "running")
SUBMITIT_DEFAULTS = {"timeout_min": 240}


class ReproduceError(DestSegError, ValueError):
    """A grid that cannot be run (bad variant, unknown field, records made with another config...)."""


class RunBusy(DestSegError, RuntimeError):
    """Another live process on this machine holds the run."""


@dataclass
class Target:
    """One dataset / category of the grid."""
    dataset: str
    data_root: str | None = None
    category: str | None = None

    @property
    def label(self) -> str:
        return self.dataset + (f"/{self.category}" if self.category else "")

    @property
    def slug(self) -> str:
        return (self.dataset + (f"-{self.category}" if self.category else "")).replace("/", "-").replace(" ", "_")


@dataclass
class Variant:
    name: str
    overrides: dict = field(default_factory=dict)


@dataclass
class RunSpec:
    """One run of the grid: what ``run.json`` holds."""
    target: Target
    variant: Variant
    seed: int
    preset: str
    overrides: dict  # the grid's and the variant's overrides (what the run notebook receives)
    config: dict  # the full resolved config
    device: str = "auto"
    figures: bool = True
    threads: int | None = None

    @property
    def key(self) -> str:
        return f"{self.target.slug}/{self.variant.name}/seed{self.seed}"

    @property
    def method(self) -> str:
        """The method whose numbers the run reports."""
        return "DeSTSeg" if self.config.get("segmentation", True) else "DeST"

    def to_dict(self) -> dict:
        return {"key": self.key, "dataset": self.target.dataset, "data_root": self.target.data_root,
                "category": self.target.category, "label": self.target.label, "variant": self.variant.name,
                "variant_overrides": self.variant.overrides, "seed": self.seed, "preset": self.preset,
                "overrides": self.overrides, "method": self.method, "device": self.device,
                "figures": self.figures, "threads": self.threads, "config": self.config}


def _safe_name(name: str) -> str:
    bad = set(name) - set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.+")
    if not name or bad or name.startswith("."):
        raise ReproduceError(f"variant name {name!r}: use letters, digits and _ - . + only "
                             "(it names a folder)")
    return name


def _parse_overrides(d, where: str) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ReproduceError(f"{where}: overrides must be an object {{field: value}}, got {d!r}")
    out = {}
    for k, v in d.items():
        try:
            out[k] = parse_field(k, v)
        except ValueError as e:
            raise ReproduceError(f"{where}: {e}") from None
    return out


def resolve_variants(spec) -> list[Variant]:
    """Variants from names (built-in variants or groups), ``{"name", "overrides"}`` objects, or a
    ``{name: overrides}`` mapping; duplicates (by name) are dropped, the first kept."""
    items: list = []
    if isinstance(spec, str):
        spec = [s for s in spec.replace(",", " ").split() if s]
    if isinstance(spec, dict):
        spec = [{"name": k, "overrides": v} for k, v in spec.items()]
    for s in spec or []:
        if isinstance(s, str):
            if s in GROUPS:
                items += [Variant(n, dict(VARIANTS[n])) for n in GROUPS[s]]
            elif s in VARIANTS:
                items.append(Variant(s, dict(VARIANTS[s])))
            else:
                raise ReproduceError(f"unknown variant {s!r}: built-in variants are {sorted(VARIANTS)}, groups "
                                     f"{sorted(GROUPS)}; define your own as {{\"name\": ..., \"overrides\": {{...}}}}")
        elif isinstance(s, dict) and "name" in s:
            unknown = set(s) - {"name", "overrides"}
            if unknown:
                raise ReproduceError(f"variant {s.get('name')!r}: unknown keys {sorted(unknown)} "
                                     "(a variant has a name and overrides)")
            items.append(Variant(str(s["name"]), dict(s.get("overrides") or {})))
        else:
            raise ReproduceError(f"variant {s!r}: give a name or {{\"name\": ..., \"overrides\": {{...}}}}")
    out, seen = [], set()
    for v in items:
        if v.name not in seen:
            seen.add(v.name)
            out.append(Variant(_safe_name(v.name), _parse_overrides(v.overrides, f"variant {v.name!r}")))
    if not out:
        raise ReproduceError("the grid has no variant: name at least one (e.g. \"destseg\")")
    return out


def _abs(path, base: Path | None) -> str | None:
    if path in (None, ""):
        return None
    p = Path(os.path.expanduser(str(path)))
    return str(p if p.is_absolute() else ((base or Path.cwd()) / p).resolve())


def resolve_targets(spec, base: Path | None = None) -> list[Target]:
    """``[{"dataset", "data_root", "category" | "categories"}]`` -> targets.  ``data_root`` defaults
    to ``$DESTSEG_DATA`` (``./data/toy`` for the toy data); ``"categories": "all"`` on MVTec AD is
    the paper's 15 categories."""
    from ..experiment import default_data_root

    if isinstance(spec, dict):
        spec = [spec]
    out = []
    for s in spec or []:
        if isinstance(s, str):
            s = {"dataset": s}
        unknown = set(s) - {"dataset", "data_root", "category", "categories"}
        if unknown or "dataset" not in s:
            raise ReproduceError(f"dataset entry {s!r}: keys are dataset, data_root, category / categories")
        kind = s["dataset"]
        if kind not in ("toy", "mvtec", "mtd", "folder"):
            raise ReproduceError(f"dataset {kind!r}: choose toy, mvtec, mtd or folder")
        root = _abs(s.get("data_root"), base)
        if root is None:
            if kind == "toy":
                root = str((Path.cwd() / "data" / "toy").resolve())
            else:
                env = default_data_root()
                if env is None:
                    raise ReproduceError(f"dataset {kind!r} needs a data_root (or set DESTSEG_DATA)")
                root = str(env.resolve())
        cats = s.get("categories", s.get("category"))
        if cats == "all":
            if kind != "mvtec":
                raise ReproduceError("\"categories\": \"all\" means MVTec AD's 15 categories: name them for "
                                     f"dataset {kind!r}")
            cats = list(paper.CATEGORIES)
        if cats is None or isinstance(cats, str):
            cats = [cats]
        if kind == "mvtec" and None in cats:
            raise ReproduceError("dataset mvtec needs categories (e.g. [\"bottle\"] or \"all\")")
        if kind == "mtd":
            cats = [None]
        out += [Target(kind, root, c) for c in cats]
    if not out:
        raise ReproduceError("the grid has no dataset")
    return out


@dataclass
class Grid:
    """What to run: targets x seeds x variants at ``preset`` + ``overrides``."""
    targets: list[Target]
    variants: list[Variant]
    seeds: list[int] = field(default_factory=lambda: [0])
    preset: str = "quick"
    overrides: dict = field(default_factory=dict)
    device: str = "auto"
    figures: bool = True
    name: str = ""

    KEYS = ("name", "preset", "overrides", "datasets", "seeds", "variants", "device", "figures")

    @classmethod
    def from_dict(cls, d: dict, base: Path | None = None) -> "Grid":
        unknown = set(d) - set(cls.KEYS)
        if unknown:
            raise ReproduceError(f"grid: unknown keys {sorted(unknown)}; the keys are {list(cls.KEYS)}")
        seeds = d.get("seeds", [0])
        if isinstance(seeds, int):
            seeds = list(range(seeds))  # "seeds": 5 -> 0..4
        try:
            seeds = [int(parse_field("seed", s)) for s in seeds]
        except Exception as e:
            raise ReproduceError(f"grid: seeds must be integers ({e})") from None
        overrides = _parse_overrides(d.get("overrides"), "grid overrides")
        if overrides.get("texture_dir"):
            overrides["texture_dir"] = _abs(overrides["texture_dir"], base)
        return cls(targets=resolve_targets(d.get("datasets", [{"dataset": "toy"}]), base),
                   variants=resolve_variants(d.get("variants", ["destseg"])), seeds=list(dict.fromkeys(seeds)),
                   preset=d.get("preset", "quick"), overrides=overrides, device=str(d.get("device", "auto")),
                   figures=bool(d.get("figures", True)), name=str(d.get("name", "")))

    @classmethod
    def from_file(cls, path) -> "Grid":
        path = Path(path)
        if not path.is_file():
            raise ReproduceError(f"grid file {str(path)!r} does not exist")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ReproduceError(f"{path}: reading YAML needs PyYAML; write the grid as JSON") from None
            try:
                d = yaml.safe_load(text)
            except yaml.YAMLError as e:  # includes !!python/object tags: safe_load refuses to build them
                mark = getattr(e, "problem_mark", None)
                where = f" (line {mark.line + 1})" if mark is not None else ""
                what = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
                raise ReproduceError(f"grid file {path}{where}: not a plain YAML grid ({what}); tags such as "
                                     "!!python/object are refused: write plain keys, lists and numbers") from None
        else:
            try:
                d = json.loads(text)
            except json.JSONDecodeError as e:
                raise ReproduceError(f"grid file {path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ReproduceError(f"grid file {path}: expected an object at the top level")
        return cls.from_dict(d, base=path.resolve().parent)

    def to_dict(self) -> dict:
        datasets = []
        for t in self.targets:
            if datasets and (datasets[-1]["dataset"], datasets[-1]["data_root"]) == (t.dataset, t.data_root) \
                    and t.category is not None:
                datasets[-1]["categories"].append(t.category)
            else:
                datasets.append({"dataset": t.dataset, "data_root": t.data_root,
                                 "categories": [t.category] if t.category is not None else None})
        for d in datasets:
            if d["categories"] is None:
                d.pop("categories")
        return {"name": self.name, "preset": self.preset, "overrides": self.overrides, "datasets": datasets,
                "seeds": self.seeds, "variants": [asdict(v) for v in self.variants], "device": self.device,
                "figures": self.figures}

    def runs(self, threads: int | None = None) -> list[RunSpec]:
        """Every run, seed-major (all of seed 0 first: an interrupted batch has whole seeds done).
        Each config is built (and validated) here, so a bad override fails before any training."""
        out = []
        for seed in self.seeds:
            for t in self.targets:
                for v in self.variants:
                    over = {**self.overrides, **v.overrides}
                    try:
                        cfg = get_preset(self.preset, **{**over, "seed": seed})
                    except ValueError as e:
                        raise ReproduceError(f"variant {v.name!r}: {e}") from None
                    out.append(RunSpec(t, v, seed, self.preset, over, cfg.to_dict(), self.device, self.figures,
                                       threads))
        keys = [r.key for r in out]
        if len(set(keys)) != len(keys):
            raise ReproduceError("two runs of the grid share a folder (a dataset or category listed twice?)")
        return out


