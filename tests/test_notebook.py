"""notebooks/quickstart.ipynb runs top to bottom, headless, as a Colab user would run it.

nbclient executes it in a fresh "python3" kernel, which resolves to the interpreter running the
tests (checked below) and inherits conftest's environment (8 simulated CPU devices). The parameter
cell is rewritten the way papermill would: 30 training steps, a 1,000-image test, a temporary
workdir, and the shared CIFAR-10 (nothing can be downloaded here). About two minutes on the
2-core CPU, most of it compiling.
"""

import ast
import json
import pathlib
import re
import sys

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
DATA_DIR = ROOT.parent / "shared" / "tfds"
STEPS = 30
TEST_SPLIT = "test[:1000]"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
# A ranked line of `predict.format_prediction`: "  1. cat  0.4312".
RANKED = re.compile(r"\s+(\d)\. (\S+)\s+(\d\.\d{4})")


def _cell(nb, cell_id: str):
    return next(c for c in nb.cells if c.get("id") == cell_id)


def _stdout(cell) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def _png_outputs(cell) -> list:
    return [o for o in cell.outputs if "image/png" in o.get("data", {})]


def _tree(path: pathlib.Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


def test_quickstart_notebook_runs_headless(tmp_path):
    assert (DATA_DIR / "cifar10").is_dir(), (
        f"The notebook test needs the shared CIFAR-10 as a TFDS data_dir at {DATA_DIR} (the "
        "repository's ../shared/tfds); nothing can be downloaded here, so the notebook cannot "
        "run without it.")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "the notebook needs exactly one cell tagged `parameters`"
    names = {t.id for node in ast.parse(params[0].source).body for t in node.targets}
    assert names == {"STEPS", "DATA_DIR", "WORKDIR", "TEST_SPLIT"}, names
    workdir = tmp_path / "run"
    params[0].source = (f"STEPS = {STEPS}\nDATA_DIR = {str(DATA_DIR)!r}\n"
                        f"WORKDIR = {str(workdir)!r}\nTEST_SPLIT = {TEST_SPLIT!r}")
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.prefix)", id="kernel"))
    shared_before = _tree(DATA_DIR)

    # Run from notebooks/, as when opened from the checkout: the install cell must find it there.
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    assert _stdout(_cell(nb, "kernel")).strip() == sys.prefix, "kernel is not this environment"
    assert _stdout(_cell(nb, "install")).strip() == f"project checkout: {ROOT}"
    results = json.loads((workdir / "results.json").read_text())
    assert results["steps"] == STEPS
    assert results["model"] == "nested_tnt_cifar_patch8_word4_32"
    assert results["test_examples"] == 1000
    history = [json.loads(line) for line in (workdir / "history.jsonl").read_text().splitlines()]
    history = [h for h in history if h["split"] != "train"]  # evaluations only
    assert [(h["step"], h["split"]) for h in history] == [
        *((step, "eval") for step in range(5, STEPS, 5)), (STEPS, "test")]
    assert len(_png_outputs(_cell(nb, "curves"))) == 1
    assert (workdir / "curve.png").is_file()

    true_label = _stdout(_cell(nb, "image")).strip().removeprefix("true label: ")
    assert true_label in CIFAR10_CLASSES
    assert len(_png_outputs(_cell(nb, "image"))) == 1
    pngs = sorted(p.name for p in (workdir / "attention").iterdir())
    assert pngs == ["correlation_inner.png", "correlation_outer.png", "inner_attention.png",
                    "outer_attention.png"]
    assert len(_png_outputs(_cell(nb, "attention"))) == len(pngs)

    path_line, *ranked = _stdout(_cell(nb, "predict")).strip().splitlines()
    assert path_line == str(workdir / "test_image.png")
    rows = [RANKED.fullmatch(line).groups() for line in ranked]
    assert [int(rank) for rank, _, _ in rows] == [1, 2, 3, 4, 5]
    labels = [label for _, label, _ in rows]
    assert len(set(labels)) == 5 and set(labels) <= set(CIFAR10_CLASSES)
    probs = [float(p) for _, _, p in rows]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-3

    assert _tree(DATA_DIR) == shared_before, "the notebook wrote into the shared data dir"
