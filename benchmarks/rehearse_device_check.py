"""The GPU device check rehearsed on this CPU machine, under the GPU machine's constraints.

    python benchmarks/rehearse_device_check.py --data-dir=../shared/tfds     # ~N min, see below

The lent GPU machine has its image's packages and nothing else: no registry, no network, no
`../shared`, only the repository's files and the folder carried beside it. Here:
1. a virtualenv holding the image's packages alone (`IMAGE_REQUIREMENTS`, with CPU builds, then
   every package `prepare_device.IMAGE` does not name uninstalled), built once into
   `.rehearsal/venv` (git-ignored, about 1 GB; rebuilt when the list changes);
2. the repository's files (tracked and untracked, not ignored: what the device tool sends)
   copied to a new temporary folder, with no `shared` folder beside it and no `.git`;
3. `benchmarks/prepare_device.py` writes that copy's `.device/` for this machine's Python;
4. in a network namespace with loopback only (`unshare -n`), with pip's index and
   configuration off, the device command that `prepare_device.py` prints runs in the copy
   with `--tiny` (small models and few steps through the same stages and code).
It passes when every stage of the check ran; the check's own summary is printed.
Needs root (or user namespaces) for `unshare -n`, and the network for step 1 and 3's wheels.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import prepare_device

ROOT = prepare_device.ROOT
VENV = ROOT / ".rehearsal" / "venv"
# The image's packages the project uses (prepare_device.IMAGE lists them all), as pip installs
# them here. The image has jax 0.11.2 with CUDA 13, torch 2.11.0+cu130, torchvision 0.26.0 and
# numpy 2.5.2; here jax 0.10.2 (the newest this index has, CPU), torch 2.14.1 and torchvision
# 0.29.1 (CUDA 13 builds that run on CPU, the setup.py's pins; torch's CPU build has no
# torchvision to match on PyPI, and timm needs one) and numpy 2.4.6 stand in. The others take
# the newest release, as the image's recent build did. The second line: image packages that
# the carried wheels need (their Requires-Dist), which nothing above pulls in.
IMAGE_REQUIREMENTS = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax",
    "optax",
    "orbax-checkpoint",
    "tensorstore",
    "etils",
    "chex",
    "tensorboard",
    "torch==2.14.1",
    "torchvision==0.29.1",
    "timm",
    "numpy==2.4.6",
    "scipy",
    "pillow",
    "matplotlib",
    "absl-py",
    "protobuf",
    "msgpack",
    "pyyaml",
    "pytest",
    "attrs",
    "wrapt",
    "cloudpickle",
    "pyarrow",
    "requests",
    "psutil",
    "tqdm",
    "six",
    "packaging",
    "typing-extensions",
    "zipp",
    "fsspec",
]
# Image packages removed all the same, and why (none at present).
NOT_HERE: set[str] = set()


def _python(venv: pathlib.Path) -> pathlib.Path:
    return venv / "bin" / "python"


def image_venv(venv: pathlib.Path) -> float:
    """Builds `venv` unless it was built from the same lists; seconds spent. A venv built from
    other lists is brought up to these in place (pip skips what it holds already)."""
    stamp, lists = venv / "rehearsal.json", [IMAGE_REQUIREMENTS, sorted(NOT_HERE)]
    if stamp.exists() and json.loads(stamp.read_text()) == lists:
        return 0.0
    start = time.monotonic()
    if not _python(venv).exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    stamp.unlink(missing_ok=True)
    pip = [str(_python(venv)), "-m", "pip"]
    subprocess.run([*pip, "install", "-q", *IMAGE_REQUIREMENTS], check=True)
    listed = subprocess.run(
        [*pip, "list", "--format=json"], capture_output=True, text=True, check=True
    ).stdout
    extra = sorted(
        p["name"]
        for p in json.loads(listed)
        if prepare_device.normalise(p["name"]) not in prepare_device.IMAGE - NOT_HERE
    )
    if extra:
        print(f"removed (not in the GPU image, or NOT_HERE): {', '.join(extra)}", flush=True)
        subprocess.run([*pip, "uninstall", "-q", "-y", *extra], check=True)
    probe = "import jax, flax, optax, orbax.checkpoint, timm, torch; print(jax.__version__)"
    subprocess.run([str(_python(venv)), "-c", probe], check=True)
    stamp.write_text(json.dumps(lists))
    return time.monotonic() - start


def copy_repository(dest: pathlib.Path) -> int:
    """Copies what the device tool sends (tracked and untracked files git does not ignore)
    to `dest`; the number of files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    count = 0
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
            count += 1
    return count


def offline(command: str, cwd: pathlib.Path, env: dict, timeout_s: float) -> int:
    """Runs the shell `command` in a network namespace with loopback only."""
    script = f"ip link set lo up && cd {cwd} && {command}"
    try:
        return subprocess.run(
            ["unshare", "-n", "--", "sh", "-c", script], env=env, timeout=timeout_s, check=False
        ).returncode
    except subprocess.TimeoutExpired:
        print(f"rehearsal: the device command ran past {timeout_s:.0f} s", file=sys.stderr)
        return 124


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        default=str(ROOT.parent / "shared" / "tfds"),
        help="TFDS data_dir holding the full cifar10 (read only)",
    )
    parser.add_argument("--venv", default=str(VENV), help="the image's stand-in virtualenv")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    parser.add_argument(
        "--keep-out", default=None, help="copy the check's outputs ($OUT there) to this folder"
    )
    args = parser.parse_args(argv)
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        print(
            "rehearsal: needs `unshare` (util-linux) and `ip` (iproute2) to close the "
            "network; nothing was done.",
            file=sys.stderr,
        )
        return 2

    start = time.monotonic()
    built = image_venv(pathlib.Path(args.venv))
    print(
        f"image virtualenv: {args.venv} ({f'built in {built:.0f} s' if built else 'reused'})",
        flush=True,
    )
    version = subprocess.run(
        [
            str(_python(pathlib.Path(args.venv))),
            "-c",
            "import sys; print('%d.%d' % sys.version_info[:2])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    work = pathlib.Path(tempfile.mkdtemp(prefix="rehearse_device_check_"))
    repo, out, home = work / "repo", work / "out", work / "home"
    for folder in (repo, out, home):
        folder.mkdir()
    try:
        print(f"copied {copy_repository(repo)} files to {repo}", flush=True)
        assert not (work / "shared").exists() and not (repo / ".git").exists()
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "prepare_device.py"),
                f"--data-dir={args.data_dir}",
                f"--out={repo / '.device'}",
                f"--python-version={version}",
            ],
            check=True,
        )
        bin_dir = pathlib.Path(args.venv).resolve() / "bin"
        env = {
            "PATH": f"{bin_dir}{os.pathsep}/usr/sbin{os.pathsep}/usr/bin{os.pathsep}/bin",
            "HOME": str(home),
            "OUT": str(out),
            "PIP_NO_INDEX": "1",
            "PIP_CONFIG_FILE": os.devnull,
            "LANG": "C.UTF-8",
        }
        command = f"{prepare_device.DEVICE_COMMAND} --tiny"
        print(f"\n$ unshare -n: {command}", flush=True)
        rc = offline(command, repo, env, prepare_device.TIMEOUT_S)
        summary = out / "summary.md"
        print(summary.read_text() if summary.exists() else "no summary.md", flush=True)
        print(
            f"rehearsal: exit {rc} in {time.monotonic() - start:.0f} s "
            f"(outputs: {sorted(p.name for p in out.iterdir())})"
        )
        if args.keep_out:
            shutil.copytree(out, args.keep_out, dirs_exist_ok=True)
        return rc
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
