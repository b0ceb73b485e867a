"""notebooks/quickstart.ipynb runs top to bottom, headless, as a Colab user runs it.

As on Colab, the notebook is executed outside a checkout: it is copied into a temporary
directory, which is the kernel's working directory, so its first cell must clone the repository
from `REPO_URL`. The test sets that line (the notebook's one line to change) to a local bare
repository holding this checkout's files as they are now (`git stash create`: the committed
tree plus uncommitted changes to tracked files; untracked files are not in it). The cell's
`pip install -e` is skipped because the package is importable in this environment (the test
checks that the kernel runs this interpreter and imports the clone's package, not the
installed one), which is how the cell treats any environment that has the project installed.

nbclient executes it in a fresh "python3" kernel, which inherits conftest's environment (8
simulated CPU devices). The parameter cell is rewritten the way papermill would: 30 training
steps, a 1,000-image test, the shared CIFAR-10 (nothing can be downloaded here) and the default
WORKDIR (a directory per STEPS under the kernel's working directory). About two minutes on the
2-core CPU, most of it compiling.
"""

import ast
import json
import pathlib
import re
import shutil
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
STEPS = 30
TEST_SPLIT = "test[:1000]"
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# A ranked line of `predict.format_prediction`: "  1. cat  0.4312".
RANKED = re.compile(r"\s+(\d)\. (\S+)\s+(\d\.\d{4})")
# A progress line of the trainer: "12:34:56 step 10/30: ... steps/s ...".
PROGRESS = re.compile(r"\d\d:\d\d:\d\d step \d+/30: .*steps/s")
# The notebook's one line to change, as it ships.
REPO_URL_LINE = re.compile(r'^REPO_URL = "".*$', re.MULTILINE)


def _cell(nb, cell_id: str):
    return next(c for c in nb.cells if c.get("id") == cell_id)


def _stdout(cell) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def _error(cell):
    return next((o for o in cell.outputs if o.output_type == "error"), None)


def _png_outputs(cell) -> list:
    return [o for o in cell.outputs if "image/png" in o.get("data", {})]


def _tree(path: pathlib.Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


def _git(*args: str, cwd: pathlib.Path = ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def _origin(tmp_path: pathlib.Path) -> str:
    """A bare repository whose main branch holds this checkout's tracked files as they are
    now; returns its file:// URL (what the notebook's REPO_URL clones)."""
    commit = _git("stash", "create") or _git("rev-parse", "HEAD")
    origin = tmp_path / "origin.git"
    _git("init", "--bare", "--quiet", str(origin), cwd=tmp_path)
    _git("push", "--quiet", str(origin), f"{commit}:refs/heads/main")
    _git("symbolic-ref", "HEAD", "refs/heads/main", cwd=origin)
    return origin.as_uri()


def _outside_checkout(tmp_path: pathlib.Path):
    """The notebook, copied to `tmp_path/colab` (the kernel's working directory, as on Colab)."""
    colab = tmp_path / "colab"
    colab.mkdir()
    shutil.copy(NOTEBOOK, colab / NOTEBOOK.name)
    return colab, nbformat.read(colab / NOTEBOOK.name, as_version=4)


def test_unset_repo_url_stops_at_the_first_cell(tmp_path):
    colab, nb = _outside_checkout(tmp_path)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert first.id == "install" and REPO_URL_LINE.match(first.source), (
        "the first code cell must begin with the REPO_URL setting, unset"
    )
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(colab)}}
    )
    with pytest.raises(CellExecutionError):
        client.execute()
    error = _error(first)
    assert error is not None, "the unset REPO_URL did not stop the first cell"
    assert error.ename == "SetupError"
    assert "Set REPO_URL at the top of the first code cell" in error.evalue
    assert len(error.traceback) == 1, "the stop is one message, not a traceback"
    assert not [c for c in nb.cells if c.cell_type == "code" and c.outputs and c is not first]
    assert sorted(p.name for p in colab.iterdir()) == [NOTEBOOK.name], "it wrote something"


def test_quickstart_notebook_runs_as_on_colab(shared_tfds, tmp_path):
    url = _origin(tmp_path)
    colab, nb = _outside_checkout(tmp_path)
    install = _cell(nb, "install")
    install.source = REPO_URL_LINE.sub(f"REPO_URL = {url!r}", install.source, count=1)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "the notebook needs exactly one cell tagged `parameters`"
    names = {t.id for node in ast.parse(params[0].source).body for t in node.targets}
    assert names == {"STEPS", "DATA_DIR", "WORKDIR", "TEST_SPLIT"}, names
    assert "WORKDIR = None" in params[0].source.splitlines()
    params[0].source = (
        f"STEPS = {STEPS}\nDATA_DIR = {str(shared_tfds)!r}\n"
        f"WORKDIR = None\nTEST_SPLIT = {TEST_SPLIT!r}"
    )
    nb.cells.append(
        nbformat.v4.new_code_cell(
            "import nested_tnt_jax\nprint(sys.prefix)\nprint(nested_tnt_jax.__file__)", id="kernel"
        )
    )
    shared_before = _tree(shared_tfds)
    clone = colab / "nested_tnt_jax"
    workdir = colab / "runs" / f"quickstart_{STEPS}_steps"

    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(colab)}}
    )
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        # STEPS changed, WORKDIR set to the run just made: refused in the notebook's terms.
        again = nbformat.v4.new_code_cell(
            f"STEPS = {STEPS + 10}\nWORKDIR = {str(workdir)!r}\n" + _cell(nb, "train").source,
            id="again",
            metadata={"tags": ["raises-exception"]},
        )
        nb.cells.append(again)
        client.execute_cell(again, len(nb.cells) - 1)

    prefix, package = _stdout(_cell(nb, "kernel")).strip().splitlines()
    assert prefix == sys.prefix, "kernel is not this environment"
    assert package == str(clone / "nested_tnt_jax" / "__init__.py"), "not the clone's package"
    assert _stdout(install).strip() == f"project checkout: {clone}"
    assert (clone / "configs" / "cifar10.py").is_file()

    train_out = _stdout(_cell(nb, "train"))
    assert PROGRESS.search(train_out), f"no progress line on the train cell's stdout:\n{train_out}"
    assert "Finished in" in train_out
    results = json.loads((workdir / "results.json").read_text())
    assert results["steps"] == STEPS
    assert results["model"] == "nested_tnt_cifar_patch8_word4_32"
    assert results["test_examples"] == 1000
    history = [json.loads(line) for line in (workdir / "history.jsonl").read_text().splitlines()]
    history = [h for h in history if h["split"] != "train"]  # evaluations only
    assert [(h["step"], h["split"]) for h in history] == [
        *((step, "eval") for step in range(5, STEPS, 5)),
        (STEPS, "test"),
    ]
    assert len(_png_outputs(_cell(nb, "curves"))) == 1
    assert (workdir / "curve.png").is_file()

    # The cell's output: the log line of the checkpoint it loaded, then the label.
    (true_label,) = [
        line.removeprefix("true label: ")
        for line in _stdout(_cell(nb, "image")).splitlines()
        if line.startswith("true label: ")
    ]
    assert "Loaded the params of checkpoint 30" in _stdout(_cell(nb, "image"))
    assert true_label in CIFAR10_CLASSES
    assert len(_png_outputs(_cell(nb, "image"))) == 1
    pngs = sorted(p.name for p in (workdir / "attention").iterdir())
    assert pngs == [
        "correlation_inner.png",
        "correlation_outer.png",
        "inner_attention.png",
        "outer_attention.png",
    ]
    assert len(_png_outputs(_cell(nb, "attention"))) == len(pngs)

    path_line, *ranked = _stdout(_cell(nb, "predict")).strip().splitlines()
    assert path_line == f"runs/quickstart_{STEPS}_steps/test_image.png"  # RUN_DIR, relative
    rows = [RANKED.fullmatch(line).groups() for line in ranked]
    assert [int(rank) for rank, _, _ in rows] == [1, 2, 3, 4, 5]
    labels = [label for _, label, _ in rows]
    assert len(set(labels)) == 5 and set(labels) <= set(CIFAR10_CLASSES)
    probs = [float(p) for _, _, p in rows]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-3

    error = _error(again)
    assert error is not None and error.ename == "SetupError", again.outputs
    assert f"holds a run of STEPS = {STEPS}" in error.evalue
    assert "set WORKDIR = None" in error.evalue and "--" not in error.evalue
    assert json.loads((workdir / "config.json").read_text())["num_train_steps"] == STEPS

    assert _tree(shared_tfds) == shared_before, "the notebook wrote into the shared data dir"
