"""Prepares the folder that travels with the repository to a lent GPU machine, on a CPU machine.

    python benchmarks/prepare_device.py --data-dir=../shared/tfds         # writes .device/

The GPU machine reaches no registry and has no `../shared`, so `.device/` (git-ignored, about
30 MB) brings what `benchmarks/device_check.py` needs there and its image lacks:
- `wheels/`: the packages named in `WHEELS`, one by one, for CPython `--python-version`
  (3.12, the image's) on manylinux x86_64, without dependencies: each one the image already
  has (`IMAGE`) stays the image's, jax, jaxlib and torch above all;
- `tfds/`: a real CIFAR-10 subset as a TFDS data_dir, the first `--train` and `--test` records
  of the official splits (the same serialised examples, labels included), in ArrayRecord;
- `manifest.json`: the commit it was prepared at, the wheels, the record counts and sizes.

It then prints the command to run there, the folder to carry and a time limit (recorded in
docs/performance.md). `benchmarks/rehearse_device_check.py` runs the same on this machine
with no network and no index.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEVICE_DIR = ROOT / ".device"
DATASET, VERSION = "cifar10", "3.0.2"
LIMIT_MIB = 60  # the repository plus the folder; the device tool's working tree limit is 64
BUDGET_S = 470  # device_check.py's --budget-s there
TIMEOUT_S = 540  # the device call's timeout_s: the budget, the install and the summary
CARRY = ".device"
DEVICE_COMMAND = f"PYTHONUNBUFFERED=1 python3 benchmarks/device_check.py --budget-s={BUDGET_S}"

# The Python packages of the GPU machine's image ('cuda'), as its documentation lists them
# (read on 2026-11-17). None of them travels: a second copy would shadow the image's build
# (jax with its CUDA plugin, torch with CUDA). The rehearsal's virtualenv holds these alone.
_IMAGE_NAMES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt
xarray xxhash yarl zipp
"""
IMAGE = frozenset(_IMAGE_NAMES.split())

# What travels: NAME==VERSION, and why the check needs it there. Versions as the project's
# tested environment has them (they work with jax 0.10-0.11 and flax 0.12). Each one's declared
# needs are here or in IMAGE; `device_check.py` prints `pip check`'s report there.
WHEELS = {
    "tensorflow-datasets==4.9.10": "the data: tfds.data_source and builders over the data_dir",
    "array-record==0.8.6": "the ArrayRecord files TFDS reads, and the split integrity check",
    "grain==0.2.18": "the input pipeline (data/pipeline.py)",
    "clu==0.0.12": "the trainer's periodic actions and metrics (metrics.py)",
    "ml-collections==1.1.0": "the configs and their command-line flags",
    "dm-tree==0.1.10": "imported by tensorflow-datasets and grain",
    "immutabledict==4.3.1": "imported by tensorflow-datasets",
    "simple-parsing==0.1.9": "imported by tensorflow-datasets",
    "docstring-parser==0.18.0": "imported by simple-parsing",
    "termcolor==3.3.0": "imported by tensorflow-datasets",
    "toml==0.10.2": "imported by tensorflow-datasets",
    "tensorflow-metadata==1.21.0": "imported by tensorflow-datasets (its feature protos)",
    "googleapis-common-protos==1.76.0": "imported by tensorflow-metadata",
    "importlib-resources==7.1.0": "etils.epath (TFDS's paths) and the project's requirements",
    "promise==2.3": "imported by tensorflow-datasets",
    "portpicker==1.6.0": "imported by grain",
}
# Released as source only: built here into a wheel (pure Python, any CPython 3).
SOURCE_ONLY = frozenset({"promise==2.3"})
# Never carried, whatever WHEELS says: the image's accelerator builds and their base.
NEVER = frozenset(
    {
        "jax",
        "jaxlib",
        "jax-cuda13-plugin",
        "jax-cuda13-pjrt",
        "torch",
        "torchvision",
        "numpy",
        "tensorflow",
        "tensorflow-cpu",
    }
)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


def normalise(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return name.lower().replace("_", "-").replace(".", "-")


def check_wheel_list(wheels: dict[str, str]) -> list[str]:
    """The problems of a wheel list: a package the image has, or one never carried."""
    problems = []
    for spec in wheels:
        name = normalise(spec.split("==")[0])
        if "==" not in spec:
            problems.append(f"{spec}: name one version (NAME==VERSION)")
        if name in NEVER:
            problems.append(f"{spec}: never carried (the image's build must stay in use)")
        elif name in IMAGE:
            problems.append(f"{spec}: the image has it; a second copy would shadow it")
    return problems


def download_wheels(dest: pathlib.Path, python_version: str) -> list[pathlib.Path]:
    """The wheels of WHEELS for CPython `python_version` on manylinux x86_64, in `dest`."""
    dest.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [
            *pip,
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            python_version,
            "--implementation",
            "cp",
            *[f"--platform={p}" for p in PLATFORMS],
            "-d",
            str(dest),
            *(spec for spec in WHEELS if spec not in SOURCE_ONLY),
        ],
        check=True,
    )
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(dest), *SOURCE_ONLY], check=True)
    files = sorted(dest.glob("*.whl"))
    names = {normalise(f.name.split("-")[0]) for f in files}
    missing = {normalise(s.split("==")[0]) for s in WHEELS} - names
    if missing or len(files) != len(WHEELS):
        raise SystemExit(f"pip download gave {[f.name for f in files]}, missing {missing}")
    return files


def write_subset(source_dir: pathlib.Path, dest_dir: pathlib.Path, counts: dict[str, int]) -> dict:
    """Writes the first `counts[split]` records of each split of CIFAR-10 in `source_dir` (a
    TFDS data_dir) to `dest_dir` as a TFDS data_dir of its own; {split: (records, bytes)}."""
    from array_record.python.array_record_module import (  # noqa: PLC0415 (only this step needs it)
        ArrayRecordReader,
        ArrayRecordWriter,
    )

    src = source_dir / DATASET / VERSION
    dst = dest_dir / DATASET / VERSION
    dst.mkdir(parents=True)
    info = json.loads((src / "dataset_info.json").read_text())
    written = {}
    for split in info["splits"]:
        name = split["name"]
        reader = ArrayRecordReader(str(src / f"{DATASET}-{name}.array_record-00000-of-00001"))
        count = min(counts[name], reader.num_records())
        records = reader.read(range(count))
        reader.close()
        path = dst / f"{DATASET}-{name}.array_record-00000-of-00001"
        writer = ArrayRecordWriter(str(path), "group_size:1")
        for record in records:
            writer.write(record)
        writer.close()
        split["shardLengths"] = [str(count)]
        split["numBytes"] = str(sum(len(r) for r in records))
        written[name] = {"records": count, "file_bytes": path.stat().st_size}
    (dst / "dataset_info.json").write_text(json.dumps(info, indent=2))
    for other in src.iterdir():
        if other.suffix in (".json", ".txt") and other.name != "dataset_info.json":
            shutil.copy(other, dst / other.name)
    return written


def verify_subset(data_dir: pathlib.Path, counts: dict[str, int]) -> dict[str, list[int]]:
    """Opens the subset with TFDS as the trainer does; {split: labels of its first 10}."""
    import tensorflow_datasets as tfds  # noqa: PLC0415 (only this step needs it)

    labels = {}
    for split, count in counts.items():
        source = tfds.data_source(DATASET, split=split, data_dir=str(data_dir))
        if len(source) != count:
            raise SystemExit(f"{split}: TFDS reads {len(source)} records, {count} were written")
        labels[split] = [int(source[i]["label"]) for i in range(10)]
    return labels


def repository_bytes() -> int:
    """What the device tool sends besides the carried folder: tracked and untracked files
    that git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    paths = (ROOT / p for p in listed.decode().split("\0") if p)
    return sum(p.stat().st_size for p in paths if p.is_file())


def folder_bytes(folder: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def commit() -> str:
    proc = subprocess.run(
        ["git", "describe", "--always", "--dirty", "--abbrev=40"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        default=str(ROOT.parent / "shared" / "tfds"),
        help="TFDS data_dir holding the full cifar10 (read only)",
    )
    parser.add_argument(
        "--out",
        default=str(DEVICE_DIR),
        help="the folder to write (replaced); .device/ in the repository root",
    )
    parser.add_argument(
        "--python-version",
        default="3.12",
        help="the Python the wheels are for: the GPU image's 3.12, or this "
        "machine's for the rehearsal",
    )
    parser.add_argument("--train", type=int, default=6000, help="training records to keep")
    parser.add_argument("--test", type=int, default=2000, help="test records to keep")
    args = parser.parse_args(argv)

    source = pathlib.Path(args.data_dir)
    problems = check_wheel_list(WHEELS)
    if not (source / DATASET / VERSION / "dataset_info.json").exists():
        problems.append(
            f"--data-dir={args.data_dir} holds no prepared {DATASET} {VERSION} "
            "(TFDS data_dir, e.g. ../shared/tfds)"
        )
    out = pathlib.Path(args.out).resolve()
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").exists():
        problems.append(
            f"--out={args.out} exists and is not a folder this script wrote "
            "(no manifest.json); name a new or empty folder"
        )
    if problems:
        print("prepare_device: nothing written. " + " ".join(problems), file=sys.stderr)
        return 2
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    wheels = download_wheels(out / "wheels", args.python_version)
    counts = {"train": args.train, "test": args.test}
    written = write_subset(source, out / "tfds", counts)
    labels = verify_subset(out / "tfds", {s: w["records"] for s, w in written.items()})
    manifest = {
        "commit": commit(),
        "python_version": args.python_version,
        "wheels": {
            w.name: {
                "bytes": w.stat().st_size,
                "sha256": hashlib.sha256(w.read_bytes()).hexdigest(),
            }
            for w in wheels
        },
        "data": {
            "dataset": f"{DATASET}/{VERSION}",
            "source": str(source),
            **written,
            "first_labels": labels,
        },
        "command": DEVICE_COMMAND,
        "carry": [CARRY],
        "timeout_s": TIMEOUT_S,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    folder, repo = folder_bytes(out), repository_bytes()
    mib = (folder + repo) / 2**20
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 1e6:7.2f} MB  {wheel.name}")
    for split, w in written.items():
        print(f"{w['file_bytes'] / 1e6:7.2f} MB  {DATASET} {split}: {w['records']:,} records")
    print(
        f"\n{out}: {folder / 2**20:.1f} MiB; with the repository ({repo / 2**20:.1f} MiB): "
        f"{mib:.1f} MiB (limit {LIMIT_MIB} MiB)"
    )
    if mib > LIMIT_MIB:
        print(
            f"prepare_device: {mib:.1f} MiB is over {LIMIT_MIB} MiB; keep fewer records "
            "(--train, --test).",
            file=sys.stderr,
        )
        return 1
    print(
        f"\nOn the GPU machine (device tool `run`), from the repository root:\n"
        f'  command:   {DEVICE_COMMAND}\n  carry:     ["{CARRY}"]\n'
        f"  timeout_s: {TIMEOUT_S}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
