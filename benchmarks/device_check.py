"""One prepared check on one GPU: throughput against timm, the mixer forms, and the trainer.

    python benchmarks/device_check.py --out=$OUT              # one H100 / H200, at most ~8 min
    python benchmarks/device_check.py --out=DIR --dry-run     # the same stages, tiny, on CPU

Run from the repository root, with the shared CIFAR-10 at `--data-dir` (default
`../shared/tfds`). Each stage runs as its own process with a time limit taken from what is left
of `--budget-s`, writes its output to `OUT/<stage>.txt` (and `.json` where it has one), and a
stage that fails or runs out of time is recorded and passed over. In order:

1. `environment`: date, commit, `nvidia-smi`, Python and library versions;
2. `install`: CUDA jax (`jax[cuda13]` at the installed jax's version) and torch, only where
   `jax.default_backend()` is not "gpu" or `torch.cuda.is_available()` is false;
3. `tnt`: `benchmarks/throughput.py`, Nested-TNT-S against TNT-S, timm's TNT-S eager and under
   `torch.compile`, in the paper's CIFAR-10 setup at 224 px (bfloat16, batch 256, 10 classes,
   32 px uint8 images resized on device, stochastic depth 0.1; training steps only);
4. `trainer`: `python -m nested_tnt_jax.main --config=configs/cifar10.py:model=nested_tnt` for
   200 steps on the shared CIFAR-10 at the same batch and dtype;
5. `mixer`: `benchmarks/mixer.py`, the head mixer's forms side by side at batch 256;
6. `vit`: ViT-S against timm's, eager and compiled, in the same setup;
7. `cores`: `benchmarks/attention_core.py --choice=by_width` at batch 256.

`OUT/summary.md` gathers the throughput table (with MFU) and the ratios the project aims at:
Nested-TNT-S / TNT-S, TNT-S / timm eager and compiled, the trainer's img/s / the benchmark's.
`--dry-run` keeps every stage but installs nothing and runs the small CPU models with one block
at batch 2, the ViT family in place of TNT, which compiles fastest (the trainer: the CPU config
on slices of CIFAR-10, a few steps).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import NamedTuple

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TRAINER_STEPS = 200
# Prints the installed versions of the libraries the check uses.
VERSIONS = """
import importlib.metadata as m
found = []
for name in ("jax", "jaxlib", "jax-cuda13-plugin", "flax", "torch", "timm"):
    try:
        found.append(f"{name} {m.version(name)}")
    except m.PackageNotFoundError:
        pass
print(", ".join(found))
"""


class Stage(NamedTuple):
    name: str
    command: list[str]
    limit_s: float  # at most this long, and never past the budget
    json_out: bool = False  # stdout is one JSON object (saved as OUT/<name>.json)


def _setup(dry_run: bool) -> dict:
    """Sizes of every stage: the device check's, or tiny ones for a CPU dry run."""
    if dry_run:
        tiny = ["--override=depth=1", "--baseline-override=depth=1"]
        return dict(
            throughput=["--batch=2", "--num-classes=10", "--host-size=16", "--rounds=1",
                        "--iters=1", "--threads=1", "--timm-compile-backend=eager"],
            # The ViT family compiles fastest; the pair is nested against plain as below.
            vit="vit_cifar_patch8_32", tnt="vit_cifar_patch8_32",
            nested="nested_vit_cifar_patch8_32", model_flags=tiny,
            mixer=["--case=tiny:2:8:4096", "--iters=1", "--rounds=1"],
            cores=["--case=tiny:4:4:2:6", "--iters=1"],
            trainer_config=("model=nested_vit,cpu", {"depth": 1}),
            trainer=["--config.num_train_steps=3", "--config.batch_size=8",
                     "--config.optim.warmup_steps=1",
                     "--config.eval_batch_size=8",
                     "--config.dataset.train_split=train[:64]",
                     "--config.dataset.eval_split=train[64:72]",
                     "--config.dataset.test_split=test[:8]", "--config.log_every_steps=1"],
            batch=8)
    return dict(
        throughput=["--batch=256", "--dtype=bfloat16", "--num-classes=10", "--host-size=32",
                    "--rounds=3", "--iters=5"],
        vit="vit_small_patch16_224", tnt="tnt_s_patch16_224", nested="nested_tnt_s_patch16_224",
        model_flags=["--override=drop_path_rate=0.1", "--baseline-override=drop_path_rate=0.1"],
        mixer=["--batch=256", "--dtype=bfloat16", "--iters=10", "--rounds=3"],
        cores=["--batch=256", "--dtype=bfloat16", "--iters=10"],
        trainer_config=("model=nested_tnt", {"dtype": "bfloat16"}),
        trainer=[f"--config.num_train_steps={TRAINER_STEPS}", "--config.batch_size=256",
                 "--config.optim.warmup_steps=50",
                 "--config.log_every_steps=50",
                 f"--config.input.worker_count={min(8, os.cpu_count() or 1)}"],
        batch=256)


TRAINER_CONFIG = """\"\"\"configs/cifar10.py:{arg} with model overrides {overrides!r}, for the device check.\"\"\"

import runpy


def get_config():
    config = runpy.run_path({cifar10!r})["get_config"]({arg!r})
    config.model.overrides.update({overrides!r})
    return config
"""


def trainer_config(out: pathlib.Path, arg: str, overrides: dict) -> pathlib.Path:
    """Writes the trainer's config to `out`: configs/cifar10.py with `arg`, plus model
    `overrides` that the command line cannot add (only existing fields can be set there)."""
    path = out / "trainer_config.py"
    path.write_text(TRAINER_CONFIG.format(arg=arg, overrides=overrides,
                                          cifar10=str(ROOT / "configs" / "cifar10.py")))
    return path


def stages(out: pathlib.Path, data_dir: str, dry_run: bool) -> list[Stage]:
    """The stages in the order they run (the costliest to lose first)."""
    s = _setup(dry_run)
    config = trainer_config(out, *s["trainer_config"])
    bench = [PYTHON, "benchmarks/throughput.py", "--json", "--train-only", *s["throughput"]]
    return [
        Stage("tnt", [*bench, f"--model={s['nested']}", f"--baseline={s['tnt']}", *s["model_flags"],
                      "--vs-timm", "--vs-timm-compiled"], 240, json_out=True),
        Stage("trainer", [PYTHON, "-m", "nested_tnt_jax.main", f"--config={config}",
                          f"--config.dataset.data_dir={data_dir}", *s["trainer"],
                          f"--workdir={out / 'trainer_run'}"], 200),
        Stage("mixer", [PYTHON, "benchmarks/mixer.py", *s["mixer"]], 60),
        Stage("vit", [*bench, f"--model={s['vit']}", *s["model_flags"][:1], "--vs-timm",
                      "--vs-timm-compiled"], 150, json_out=True),
        Stage("cores", [PYTHON, "benchmarks/attention_core.py", "--choice=by_width", *s["cores"]],
              45),
    ]


def _run(command: list[str], limit_s: float, log: pathlib.Path, env: dict) -> tuple[str, str]:
    """Runs `command` from the repository root for at most `limit_s`; (status, stdout)."""
    start = time.monotonic()
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=limit_s)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        stdout, stderr = proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        status = f"timed out after {limit_s:.0f} s"
        stdout = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    log.write_text(f"$ {' '.join(command)}\n# {status}, {time.monotonic() - start:.0f} s\n"
                   f"{stdout}\n--- stderr ---\n{stderr}")
    return status, stdout


def _probe(code: str, env: dict) -> str:
    """What `python -c code` prints (stripped), or '' if it fails."""
    proc = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def environment(env: dict) -> str:
    lines = [f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    lines.append(f"commit: {commit.stdout.strip() or 'unknown (no git)'}")
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True)
        lines.append(f"gpu: {smi.stdout.strip()}")
    lines.append(f"python: {sys.version.split()[0]} ({PYTHON})")
    lines.append("versions: " + (_probe(VERSIONS, env) or "?"))
    return "\n".join(lines)


def install_commands(env: dict) -> list[list[str]]:
    """pip commands for what is missing: CUDA jax, torch with CUDA (none if both work)."""
    commands = []
    if not _probe("import nested_tnt_jax, timm; print('ok')", env):
        commands.append([PYTHON, "-m", "pip", "install", "-q", "-e", ".[test]"])
    if _probe("import jax; print(jax.default_backend())", env) != "gpu":
        version = _probe("import jax; print(jax.__version__)", env)
        commands.append([PYTHON, "-m", "pip", "install", "-q",
                         f"jax[cuda13]=={version}" if version else "jax[cuda13]"])
    if _probe("import torch; print(torch.cuda.is_available())", env) != "True":
        commands.append([PYTHON, "-m", "pip", "install", "-q", "torch", "torchvision"])
    return commands


def _trainer_img_s(out: pathlib.Path) -> float | None:
    """The trainer's img/s per device from its results.json (timed steps, evaluation excluded)."""
    path = out / "trainer_run" / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    return results.get("train_img_per_sec_per_device")


def summary(reports: dict, trainer_img_s: float | None, batch: int, statuses: dict) -> str:
    """The throughput table and the target ratios, as Markdown.

    `reports["tnt"]` rows: the nested model, the plain one, timm eager, timm compiled;
    `reports["vit"]` rows: ViT, timm eager, timm compiled.
    """
    tnt = (reports.get("tnt") or {}).get("rows", [])
    vit = (reports.get("vit") or {}).get("rows", [])

    def label(row, family):
        return f"timm {family}" + (" compiled" if row["impl"] == "timm compiled" else "") \
            if row["impl"] != "jax" else row["model"]

    table = [(label(r, "ViT"), r) for r in vit] + [(label(r, "TNT"), r) for r in tnt]
    lines = ["# Device check", ""]
    first = next((r for r in reports.values() if r), None)
    if first:
        lines += [f"device: {first['device']} ({first['backend']}), batch {first['batch']}, "
                  f"{first['img_size']} px, {first['dtype']}, matmul peak "
                  f"{first['matmul_peak_tflops']:.1f} TFLOP/s", ""]
    lines += ["| model | train img/s | MFU (train) | compile s |", "|---|---:|---:|---:|"]
    for name, row in table:
        mfu = f"{row['train_mfu']:.1%}" if "train_mfu" in row else "-"
        compile_s = f"{row['train_compile_s']:.0f}" if "train_compile_s" in row else "-"
        lines.append(f"| {name} | {row['train_img_s']:,.1f} | {mfu} | {compile_s} |")

    def img(i):
        return tnt[i]["train_img_s"] if len(tnt) > i else math.nan

    checks = [
        ("Nested-TNT / TNT training", img(0) / img(1), ">= 0.9"),
        ("TNT / timm TNT eager", img(1) / img(2), ">= 2"),
        ("TNT / timm TNT compiled", img(1) / img(3), "> 1"),
        ("trainer (main.py) / benchmark, Nested-TNT", (trainer_img_s or math.nan) / img(0),
         ">= 0.9"),
    ]
    lines += ["", "| ratio | measured | target |", "|---|---:|---|"]
    lines += [f"| {what} | {value:.2f}x | {target} |" for what, value, target in checks]
    if trainer_img_s:
        lines += ["", f"trainer: {trainer_img_s:,.1f} img/s at batch {batch}"]
    lines += ["", "| stage | status |", "|---|---|"]
    lines += [f"| {name} | {status} |" for name, status in statuses.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT"), help="output folder (default: $OUT)")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "tfds"),
                        help="TFDS data_dir holding cifar10")
    parser.add_argument("--budget-s", type=float, default=470, help="total time for all stages")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU, no installs")
    args = parser.parse_args(argv)
    if not args.out:
        parser.error("pass --out=DIR or set $OUT")
    out = pathlib.Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget_s
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH")])),
        TF_CPP_MIN_LOG_LEVEL="3")
    if args.dry_run:
        env["JAX_PLATFORMS"] = "cpu"

    statuses = {}
    (out / "environment.txt").write_text(environment(env) + "\n")
    statuses["environment"] = "ok"
    commands = [] if args.dry_run else install_commands(env)
    log = []
    for command in commands:
        status, _ = _run(command, max(deadline - time.monotonic(), 1), out / "install.txt", env)
        log.append(f"{' '.join(command)}: {status}")
    (out / "install.txt").write_text("\n".join(log) or "nothing to install\n")
    statuses["install"] = "; ".join(log) or "nothing missing"

    reports = {}
    for stage in stages(out, args.data_dir, args.dry_run):
        left = deadline - time.monotonic()
        if left < 10:
            statuses[stage.name] = "skipped: no time left"
            continue
        status, stdout = _run(stage.command, min(stage.limit_s, left), out / f"{stage.name}.txt",
                              env)
        statuses[stage.name] = status
        if stage.json_out and status == "ok":
            reports[stage.name] = json.JSONDecoder().raw_decode(stdout[stdout.index("{"):])[0]
            (out / f"{stage.name}.json").write_text(json.dumps(reports[stage.name], indent=2))
        print(f"{stage.name}: {status}", flush=True)
    text = summary(reports, _trainer_img_s(out), _setup(args.dry_run)["batch"], statuses)
    (out / "summary.md").write_text(text)
    print(text)
    return 0 if all(s.startswith(("ok", "nothing")) for s in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
