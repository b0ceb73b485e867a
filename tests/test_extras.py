"""Optional packages through the real CLI: a run that needs a missing one is refused before
anything is written, naming what to install; a run that does not need TensorFlow trains
without it, exactly as with it.

The packages are hidden from the subprocess by a `sitecustomize` whose import finders do not
find them, so that `import` and `importlib.util.find_spec` (TFDS's and etils' test for
TensorFlow among them) see an environment without them.
"""

import sys

from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import cli_runs
from test_faults import refused_early

# Every import finder, wrapped so that it finds nothing of the hidden packages: `import`
# fails and `find_spec` answers None, as where they are not installed.
HIDE = """
import sys

class _Hiding:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {names!r}:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attribute):
        return getattr(self.finder, attribute)

sys.meta_path[:] = [_Hiding(finder) for finder in sys.meta_path]
"""


def hiding(env, tmp_path, *names: str) -> dict[str, str]:
    """`env` with `names` hidden from the subprocess's imports."""
    site = tmp_path / "hide"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE.format(names=sorted(names)))
    return {**env, "PYTHONPATH": f"{site}:{env.get('PYTHONPATH', '')}".rstrip(":")}


def test_an_unprepared_dataset_without_tensorflow_names_the_tf_extra(env, tmp_path):
    workdir = tmp_path / "run"
    empty = tmp_path / "tfds"
    empty.mkdir()
    message = refused_early(
        cli_runs.command(workdir, f"--config.dataset.data_dir={empty}"),
        hiding(env, tmp_path, "tensorflow"),
        2,
        "not prepared",
        str(empty),
        "needs tensorflow",
        "pip install -e '.[tf]'",
        "config.dataset.data_dir",
    )
    assert "Nothing was written" in message
    assert not workdir.exists()
    assert list(empty.iterdir()) == []


def test_a_timm_file_without_torch_names_torch(env, tmp_path):
    workdir = tmp_path / "run"
    source = tmp_path / "tnt_s.pth"
    source.write_bytes(b"")
    refused_early(
        cli_runs.command(workdir, f"--config.init_from={source}"),
        hiding(env, tmp_path, "torch"),
        2,
        str(source),
        "needs torch",
        "pip install torch",
        ".safetensors",
    )
    assert not workdir.exists()


def test_training_needs_no_tensorflow(reference, env, tmp_path):
    """The 12-step reference trained again with TensorFlow hidden: the same results, and
    TensorBoard events that tensorboard's reader reads."""
    workdir = tmp_path / "run"
    proc = cli_runs.run(cli_runs.command(workdir), hiding(env, tmp_path, "tensorflow"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    cli_runs.assert_same_results(workdir, reference)
    events = EventAccumulator(str(workdir), size_guidance={"tensors": 0})
    events.Reload()
    losses = events.Tensors("train/loss")
    assert [e.step for e in losses] == [3, 6, 9, 12]
    assert [e.step for e in events.Tensors("test/top1")] == [12]


def test_predict_needs_no_tensorflow(reference, env, tmp_path):
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    proc = cli_runs.run(
        [sys.executable, "-m", "nested_tnt_jax.predict", f"--workdir={reference}", str(image)],
        hiding(env, tmp_path, "tensorflow"),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "image.png" in proc.stdout
