"""Structure of the tutorial notebooks, and notebooks/run_all.py on tiny notebooks.

Executing the real notebooks is nbval's job (``pytest`` also collects ``notebooks/*.ipynb``, see
pyproject.toml, at the ``ci`` preset: conftest.py); these checks are static and fast.
"""
import ast
import configparser
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parents[1]
NB_DIR = REPO / "notebooks"
EXPECTED = ["00_setup_and_data.ipynb", "01_perlin_anomaly_generation.ipynb", "02_denoising_student.ipynb",
            "03_segmentation_training.ipynb", "04_evaluation.ipynb", "05_failure_cases.ipynb",
            "06_threshold_explorer.ipynb"]
DEFAULTS = {"preset": "quick", "dataset": "auto", "data_root": None, "category": None, "texture_dir": None,
            "device": "auto", "seed": 0, "out_dir": None, "overrides": {}}
# Item 4 of the tutorial's brief: next to each equation, the library code that computes it.
SOURCES_SHOWN = {"01": ["def perlin_noise(", "def perlin_mask(", "def blend_anomaly("],
                 "02": ["def cosine_distance_maps(", "def cosine_loss(", "def training_step("],
                 "03": ["def segmentation_input(", "def focal_loss(", "def l1_loss(", "def segmentation_loss("],
                 "05": ["def top_t_score("], "06": ["def iap("]}
MAX_LINES = 30


def _notebooks():
    return sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))


def _read(path):
    return nbformat.read(path, as_version=4)


def _python(src: str) -> str:
    """Cell source without IPython magics / shell escapes, for ast."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in src.splitlines())


def test_the_seven_notebooks_exist_in_order():
    assert [p.name for p in _notebooks()] == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_structure(name):
    nb = _read(NB_DIR / name)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters' (papermill)"
    assert params[0].cell_type == "code"
    values = {}
    for node in ast.parse(params[0].source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, "parameters: plain assignments only"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    assert values == DEFAULTS
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# {name[:2]} ")
    assert nb.cells[1].cell_type == "markdown" and nb.cells[1].metadata.get("tags") == ["provenance"], \
        "the second cell says where the stored outputs come from (written by run_all.py)"
    assert not [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    for i, cell in enumerate(nb.cells):
        assert len(cell.source.splitlines()) <= MAX_LINES, f"cell {i} has more than {MAX_LINES} lines"
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(_python(cell.source))):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), \
                f"cell {i}: no def / class / lambda in notebooks: put helpers in destseg_lib"


@pytest.mark.parametrize("name", EXPECTED)
def test_stored_outputs(name):
    """The committed notebooks carry their outputs (students read them on GitHub): every code cell
    ran, in order, without errors; no widget state, no paths of the machine that ran them; and they
    come from a run that trains for real (not the ci preset), named in the provenance cell."""
    path = NB_DIR / name
    nb = _read(path)
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert None not in counts, "execute the notebook (python notebooks/run_all.py --inplace)"
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert "widgets" not in nb.metadata
    assert str(REPO) not in path.read_text(encoding="utf-8")
    meta = nb.metadata.get("destseg_provenance")
    assert meta, "no provenance: refresh with python notebooks/run_all.py --inplace"
    assert meta["preset"] in ("quick", "paper"), f"stored outputs from the {meta['preset']!r} preset: use quick"
    text = nb.cells[1].source
    assert f"preset `{meta['preset']}`" in text and meta["machine"] in text and "run_all.py" in text


@pytest.mark.parametrize("prefix", sorted(SOURCES_SHOWN))
def test_the_code_behind_each_equation_is_shown(prefix):
    nb = _read(next(NB_DIR.glob(f"{prefix}_*.ipynb")))
    shown = "".join(o.get("data", {}).get("text/markdown", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.outputs)
    missing = [d for d in SOURCES_SHOWN[prefix] if d not in shown]
    assert not missing, f"not shown with nb.show_source: {missing}"


@pytest.mark.parametrize("name", EXPECTED)
def test_summary_and_exercises(name):
    text = "\n".join(c.source for c in _read(NB_DIR / name).cells if c.cell_type == "markdown")
    assert "## Summary" in text and "## Exercises" in text
    exercises = text.split("## Exercises", 1)[1]
    assert len(re.findall(r"^\d\. \*\*", exercises, flags=re.M)) >= 2, "at least two numbered exercises"
    assert exercises.count("*Expected:*") >= 2, "each exercise says what to expect"


def test_notebooks_stay_small():
    total = sum(p.stat().st_size for p in _notebooks())
    assert total < 3_000_000, f"notebooks total {total / 1e6:.1f} MB: lower the figure sizes"


def test_checked_cells_exist_and_sanitize_file_parses():
    checked = sum("# NBVAL_CHECK_OUTPUT" in c.source for p in _notebooks() for c in _read(p).cells)
    assert checked >= 10
    cfg = configparser.ConfigParser()
    assert cfg.read(NB_DIR / "nbval_sanitize.cfg")
    assert all({"regex", "replace"} <= set(cfg[s]) for s in cfg.sections())


# ------------------------------------------------------------------------------------ run_all.py
def _run_all_module():
    spec = importlib.util.spec_from_file_location("run_all", NB_DIR / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_param_parsing():
    parse = _run_all_module().parse_param
    assert parse("preset=quick") == ("preset", "quick")
    assert parse("seed=3") == ("seed", 3)
    assert parse("data_root=None") == ("data_root", None)
    assert parse("data_root=/data/x=y") == ("data_root", "/data/x=y")
    with pytest.raises(Exception, match="NAME=VALUE"):
        parse("preset")


def _tiny(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    prov = nbformat.v4.new_markdown_cell("not executed yet")
    prov.metadata["tags"] = ["provenance"]
    params = nbformat.v4.new_code_cell('greeting = "hi"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [prov, params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.mark.slow
def test_run_all_stops_at_the_first_failure(tmp_path):
    pytest.importorskip("papermill")
    books = tmp_path / "books"
    books.mkdir()
    report = 'import os; print(greeting, os.environ["DESTSEG_FIG_DIR"], os.getcwd())'
    _tiny(books / "00_first.ipynb", report)
    _tiny(books / "01_broken.ipynb", 'raise RuntimeError("boom " + greeting)')
    _tiny(books / "02_never.ipynb", report)
    (books / "notes.ipynb").write_text("{}")  # not NN_*: ignored
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(NB_DIR / "run_all.py"), "--notebooks", str(books), "--out", str(out),
                          "--param", "greeting=hello"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "FAILED: 01_broken.ipynb" in run.stderr
    assert sorted(p.name for p in out.glob("*.ipynb")) == ["00_first.ipynb", "01_broken.ipynb"]
    first = _read(out / "00_first.ipynb")
    text = "".join(o.get("text", "") for c in first.cells if c.cell_type == "code" for o in c.outputs)
    assert text.split() == ["hello", str((out / "figures").resolve()), str(books)]
    assert "boom hello" in (out / "01_broken.ipynb").read_text()  # the executed copy shows the error


@pytest.mark.slow
def test_run_all_succeeds_and_only_filters(tmp_path):
    pytest.importorskip("papermill")
    books = tmp_path / "books"
    books.mkdir()
    _tiny(books / "00_a.ipynb", "print(greeting)")
    _tiny(books / "01_b.ipynb", "raise SystemExit('not selected, not run')")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(NB_DIR / "run_all.py"), "--notebooks", str(books), "--out", str(out),
                          "--only", "00"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert [p.name for p in out.glob("*.ipynb")] == ["00_a.ipynb"]


@pytest.mark.slow
def test_run_all_inplace_records_provenance(tmp_path, monkeypatch):
    pytest.importorskip("papermill")
    books = tmp_path / "books"
    books.mkdir()
    _tiny(books / "00_a.ipynb", 'import os; print(greeting, os.environ.get("DESTSEG_NOTEBOOK_PRESET"))')
    env = {**__import__("os").environ, "DESTSEG_NOTEBOOK_PRESET": "ci"}
    run = subprocess.run([sys.executable, str(NB_DIR / "run_all.py"), "--notebooks", str(books), "--inplace",
                          "--param", "greeting=hello", "--runs", str(tmp_path / "runs")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    nb = _read(books / "00_a.ipynb")
    assert [c.metadata.get("tags") for c in nb.cells[:2]] == [["provenance"], ["parameters"]]
    assert len(nb.cells) == 3, "papermill's injected-parameters cell is removed"
    assert nb.cells[1].source == 'greeting = "hi"', "the parameters cell keeps its defaults"
    assert "".join(o.get("text", "") for o in nb.cells[2].outputs).split() == ["hello", "None"]
    meta = nb.metadata["destseg_provenance"]
    assert meta["parameters"] == {"greeting": "hello"} and meta["seconds"] >= 0
    assert "run_all.py" in nb.cells[0].source and meta["machine"] in nb.cells[0].source
    assert "papermill" not in nb.metadata


# ------------------------------------------------------------------ stored outputs that went stale
_SHOWN = re.compile(r"`(destseg_lib/[\w/]+\.py)`, lines (\d+)-(\d+):\n\n```python\n(.*?)\n```", re.S)


def _stored_texts(nb):
    for c in nb.cells:
        for o in c.get("outputs", []) if c.cell_type == "code" else []:
            yield c, "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/markdown", "")) \
                + "".join(o.get("data", {}).get("text/plain", ""))


def stale_outputs(path: Path) -> list[str]:
    """What in a notebook's stored outputs no longer matches the library or the run: show_source
    blocks whose lines are not the file's lines at those numbers, temporary paths, a provenance
    record that disagrees with the parameters cell."""
    nb = _read(path)
    root = NB_DIR.parent
    problems = []
    for _, text in _stored_texts(nb):
        for f, a, b, code in _SHOWN.findall(text):
            source = (root / f).read_text(encoding="utf-8").splitlines()[int(a) - 1:int(b)]
            if "\n".join(source).rstrip() != code.rstrip():
                problems.append(f"show_source of {f} lines {a}-{b} no longer matches the file")
        for tmp in re.findall(r"/tmp/[\w.-]+", text):
            problems.append(f"a temporary path in a stored output: {tmp}")
    prov = nb.metadata.get("destseg_provenance")
    params = next((c.source for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])), "")
    if prov is None:
        problems.append("no destseg_provenance in the metadata (refresh with notebooks/run_all.py --inplace)")
    else:
        for key in ("preset", "dataset"):
            m = re.search(rf"^{key}\s*=\s*\"(\w+)\"", params, re.M)
            if m and prov.get(key) != m.group(1):
                problems.append(f"stored outputs are from {key}={prov.get(key)!r}, the parameters cell says {m.group(1)!r}")
        resolved = prov.get("parameters", {}).get("resolved_dataset")  # what dataset="auto" found
        if resolved:
            split = {"toy": "mvtec/toy_part"}.get(resolved, resolved)
            if not any(f"dataset    {split}:" in text for _, text in _stored_texts(nb)):
                problems.append(f"the provenance says the outputs ran on {resolved}, the setup cell's output does not")
    return problems


@pytest.mark.parametrize("name", EXPECTED)
def test_stored_outputs_are_not_stale(name):
    problems = stale_outputs(NB_DIR / name)
    assert not problems, "refresh with `python notebooks/run_all.py --inplace --runs runs/notebooks_refresh`: " \
        + "; ".join(problems)


def test_the_stale_check_finds_what_it_looks_for(tmp_path):
    """The check fails on a notebook whose show_source block is off by a line and which names a
    temporary run folder (what the stored outputs held before they were refreshed)."""
    import nbformat

    nb = _read(NB_DIR / "02_denoising_student.ipynb")
    for c, _ in _stored_texts(nb):
        for o in c.outputs:
            if "text/markdown" in o.get("data", {}):
                o["data"]["text/markdown"] = re.sub(r"lines (\d+)-", lambda m: f"lines {int(m.group(1)) + 1}-",
                                                    o["data"]["text/markdown"], count=1)
            if "text" in o:
                o["text"] = o["text"].replace("<repo>/runs", "/tmp/destseg-refresh-x1y2")
    bad = tmp_path / "02_denoising_student.ipynb"
    nbformat.write(nb, str(bad))
    problems = stale_outputs(bad)
    assert any("show_source" in p for p in problems) and any("/tmp/destseg-refresh-x1y2" in p for p in problems)


# ------------------------------------------------------------------ dataset="auto": real data first
def test_auto_dataset_takes_bottle_where_it_is_else_the_toy_set(tmp_path, monkeypatch):
    from destseg_lib.notebook import find_real_data, resolve_dataset

    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    monkeypatch.delenv("DESTSEG_DATA", raising=False)
    name, root, category, textures, note = resolve_dataset("auto", repo=repo)
    assert (name, root, category, textures) == ("toy", None, None, None)
    assert note.startswith("toy data:") and "data_download.sh mvtec:bottle" in note
    # bottle in $DESTSEG_DATA, DTD's subset beside it
    data = tmp_path / "data"
    (data / "mvtec" / "bottle" / "train" / "good").mkdir(parents=True)
    (data / "dtd_subset" / "images").mkdir(parents=True)
    monkeypatch.setenv("DESTSEG_DATA", str(data))
    assert find_real_data(repo) == (data, data / "dtd_subset" / "images")
    name, root, category, textures, note = resolve_dataset("auto", repo=repo)
    assert (name, root, category, textures) == ("mvtec", data, "bottle", str(data / "dtd_subset" / "images"))
    assert "MVTec AD bottle" in note and "$DESTSEG_DATA" in note
    # a texture folder of the user's wins; an explicit dataset passes through untouched
    assert resolve_dataset("auto", texture_dir="/my/dtd", repo=repo)[3] == "/my/dtd"
    assert resolve_dataset("mtd", data, None, None, repo) == ("mtd", data, None, None, "")
    # where data_download.sh puts it by default (<repo>/data), when $DESTSEG_DATA has none
    monkeypatch.setenv("DESTSEG_DATA", str(tmp_path / "empty"))
    (repo / "data" / "mvtec" / "bottle" / "train" / "good").mkdir(parents=True)
    assert resolve_dataset("auto", repo=repo)[:3] == ("mvtec", repo / "data", "bottle")


def test_who_wins_names_each_metric_on_its_side():
    from destseg_lib.notebook import format_toy_vs_real, who_wins

    rows = [{"data": "bottle", "method": "DeSTSeg", "pixel_ap": 80.5, "iap": 87.9, "aupro": 91.9, "image_auroc": 99.5},
            {"data": "bottle", "method": "DeST", "pixel_ap": 77.9, "iap": 79.8, "aupro": 93.2, "image_auroc": 99.5},
            {"data": "bottle", "method": "paper DeSTSeg (5 seeds)", "pixel_ap": (90.3, 1.8)}]
    assert who_wins(rows) == ["bottle  DeSTSeg vs DeST: ahead on pixel AP +2.6, IAP +8.1; behind on AUPRO -1.3"]
    table = format_toy_vs_real(rows).splitlines()
    assert "90.3 ± 1.8" in table[-1] and table[2].split()[:2] == ["bottle", "DeSTSeg"] and "80.5" in table[2]
