"""One prepared check on one GPU: throughput against timm, the mixer forms, and the trainer.

    python benchmarks/prepare_device.py                      # here, on a CPU machine: .device/
    PYTHONUNBUFFERED=1 python3 benchmarks/device_check.py --budget-s=470   # there, ~8 min
    python benchmarks/rehearse_device_check.py               # the same, tiny, offline, on CPU

Run from the repository root on the lent GPU machine, with `.device/` carried beside the
repository (`prepare_device.py` prints the command, the folder and the time limit; see
docs/performance.md). That machine reaches no registry and has no `../shared`: everything the
check installs and reads comes from `.device/`. Each stage runs as its own process with a time
limit taken from what is left of `--budget-s`; a stage that fails or runs out of time is
recorded and passed over. In order:

1. `environment`: date, commit, `nvidia-smi`, Python and library versions;
2. `install`: the wheels of `.device/wheels` (what the image lacks, `prepare_device.WHEELS`)
   into a temporary folder with `pip install --no-index --no-deps --target`, put on
   `PYTHONPATH` for the stages below; the image's jax, jaxlib and torch stay as they are.
   Then `pip check`'s report, and whether the trainer's imports load;
3. `tnt`: `benchmarks/throughput.py`, Nested-TNT-S against TNT-S, timm's TNT-S eager and under
   `torch.compile`, in the paper's CIFAR-10 setup at 224 px (bfloat16, batch 256, 10 classes,
   32 px uint8 images resized on device, stochastic depth 0.1; training steps only);
4. `trainer`: `python -m nested_tnt_jax.main --config=configs/cifar10.py:model=nested_tnt` for
   200 steps on `.device/tfds`'s CIFAR-10 subset at the same batch and dtype;
5. `mixer`: `benchmarks/mixer.py`, the head mixer's forms side by side at batch 256;
6. `vit`: ViT-S against timm's, eager and compiled, in the same setup;
7. `cores`: `benchmarks/attention_core.py --choice=by_width` at batch 256.

`OUT` (`--out`, default `$OUT`) gets at most seven files, as the device tool brings back:
`summary.md` (the throughput table with MFU, and one PASS/FAIL line per target: Nested-TNT-S
>= 0.9x TNT-S, TNT-S >= 2x timm eager and > timm compiled, the trainer >= 0.9x the
benchmark's step, the trainer's loss falls), `environment.txt` (with the install's log),
`stages.txt` (every stage's command, status and output), `tnt.json`, `vit.json`,
`trainer_history.jsonl` and `trainer_results.json`. `--tiny` runs every stage the same way
with small models (one block at batch 2, 32 px) and a few trainer steps on CPU.
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
import tempfile
import time
from typing import NamedTuple

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import prepare_device

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TRAINER_STEPS = 200
# Prints the installed versions of the libraries the check uses.
VERSIONS = """
import importlib.metadata as m
found = []
for name in ("jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "numpy",
             "protobuf", "torch", "timm", "tensorflow-datasets", "grain", "clu", "tensorflow",
             "tensorflow-cpu"):
    try:
        found.append(f"{name} {m.version(name)}")
    except m.PackageNotFoundError:
        pass
print(", ".join(found))
"""
# What the trainer stage imports beyond the image's packages, loaded after the install.
TRAINER_IMPORTS = "import nested_tnt_jax.main, nested_tnt_jax.train; print('ok')"


class Stage(NamedTuple):
    name: str
    command: list[str]
    limit_s: float  # at most this long, and never past the budget
    json_out: bool = False  # stdout is one JSON object (saved as OUT/<name>.json)


def _setup(tiny: bool) -> dict:
    """Sizes of every stage: the device check's, or small ones that run on a CPU."""
    if tiny:
        tiny_models = ["--override=depth=1", "--baseline-override=depth=1"]
        return dict(
            throughput=[
                "--batch=2",
                "--num-classes=10",
                "--host-size=16",
                "--rounds=1",
                "--iters=1",
                "--threads=1",
                "--timm-compile-backend=eager",
            ],
            vit="vit_cifar_patch8_32",
            tnt="tnt_cifar_patch8_word4_32",
            nested="nested_tnt_cifar_patch8_word4_32",
            model_flags=tiny_models,
            mixer=["--case=tiny:2:8:4096", "--iters=1", "--rounds=1"],
            cores=["--case=tiny:4:4:2:6", "--iters=1"],
            trainer_config=("model=nested_tnt,cpu", {"depth": 1}),
            trainer=[
                "--config.num_train_steps=3",
                "--config.batch_size=8",
                "--config.optim.warmup_steps=1",
                "--config.eval_batch_size=8",
                "--config.dataset.train_split=train[:64]",
                "--config.dataset.eval_split=train[64:72]",
                "--config.dataset.test_split=test[:8]",
                "--config.log_every_steps=1",
            ],
            batch=8,
        )
    return dict(
        throughput=[
            "--batch=256",
            "--dtype=bfloat16",
            "--num-classes=10",
            "--host-size=32",
            "--rounds=3",
            "--iters=5",
        ],
        vit="vit_small_patch16_224",
        tnt="tnt_s_patch16_224",
        nested="nested_tnt_s_patch16_224",
        model_flags=["--override=drop_path_rate=0.1", "--baseline-override=drop_path_rate=0.1"],
        mixer=["--batch=256", "--dtype=bfloat16", "--iters=10", "--rounds=3"],
        cores=["--batch=256", "--dtype=bfloat16", "--iters=10"],
        trainer_config=("model=nested_tnt", {"dtype": "bfloat16"}),
        trainer=[
            f"--config.num_train_steps={TRAINER_STEPS}",
            "--config.batch_size=256",
            "--config.optim.warmup_steps=50",
            "--config.log_every_steps=50",
            f"--config.input.worker_count={min(8, os.cpu_count() or 1)}",
        ],
        batch=256,
    )


TRAINER_CONFIG = """\"\"\"configs/cifar10.py:{arg} with model overrides {overrides!r},
for the device check.\"\"\"

import runpy


def get_config():
    config = runpy.run_path({cifar10!r})["get_config"]({arg!r})
    config.model.overrides.update({overrides!r})
    return config
"""


def trainer_config(work: pathlib.Path, arg: str, overrides: dict) -> pathlib.Path:
    """Writes the trainer's config to `work`: configs/cifar10.py with `arg`, plus model
    `overrides` that the command line cannot add (only existing fields can be set there)."""
    path = work / "trainer_config.py"
    path.write_text(
        TRAINER_CONFIG.format(
            arg=arg, overrides=overrides, cifar10=str(ROOT / "configs" / "cifar10.py")
        )
    )
    return path


def stages(work: pathlib.Path, data_dir: str, tiny: bool) -> list[Stage]:
    """The stages in the order they run (the costliest to lose first); the trainer's config
    and run go to `work`."""
    s = _setup(tiny)
    config = trainer_config(work, *s["trainer_config"])
    bench = [PYTHON, "benchmarks/throughput.py", "--json", "--train-only", *s["throughput"]]
    return [
        Stage(
            "tnt",
            [
                *bench,
                f"--model={s['nested']}",
                f"--baseline={s['tnt']}",
                *s["model_flags"],
                "--vs-timm",
                "--vs-timm-compiled",
            ],
            240,
            json_out=True,
        ),
        Stage(
            "trainer",
            [
                PYTHON,
                "-m",
                "nested_tnt_jax.main",
                f"--config={config}",
                f"--config.dataset.data_dir={data_dir}",
                *s["trainer"],
                f"--workdir={work / 'trainer_run'}",
            ],
            200,
        ),
        Stage("mixer", [PYTHON, "benchmarks/mixer.py", *s["mixer"]], 60),
        Stage(
            "vit",
            [
                *bench,
                f"--model={s['vit']}",
                *s["model_flags"][:1],
                "--vs-timm",
                "--vs-timm-compiled",
            ],
            150,
            json_out=True,
        ),
        Stage(
            "cores", [PYTHON, "benchmarks/attention_core.py", "--choice=by_width", *s["cores"]], 45
        ),
    ]


def _text(stream) -> str:
    return stream.decode(errors="replace") if isinstance(stream, bytes) else (stream or "")


def _run(command: list[str], limit_s: float, log: pathlib.Path, env: dict) -> tuple[str, str]:
    """Runs `command` from the repository root for at most `limit_s`, appending its command,
    status and output to `log`; (status, stdout)."""
    start = time.monotonic()
    try:
        proc = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit_s, check=False
        )
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        stdout, stderr = proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        status = f"timed out after {limit_s:.0f} s"
        stdout, stderr = _text(e.stdout), _text(e.stderr)
    with log.open("a") as f:
        f.write(
            f"$ {' '.join(command)}\n# {status}, {time.monotonic() - start:.0f} s\n"
            f"{stdout}\n--- stderr ---\n{stderr}\n\n"
        )
    return status, stdout


def _probe(code: str, env: dict) -> str:
    """What `python -c code` prints (stripped), or '' if it fails."""
    proc = subprocess.run(
        [PYTHON, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _commit(device_dir: pathlib.Path) -> str:
    """The checkout's commit, or the one `.device/` was prepared at where no git travelled."""
    proc = subprocess.run(
        ["git", "describe", "--always", "--dirty", "--abbrev=40"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 0 and proc.stdout.strip():
        return proc.stdout.strip()
    manifest = device_dir / "manifest.json"
    if manifest.exists():
        return json.loads(manifest.read_text())["commit"] + " (from .device/manifest.json)"
    return "unknown (no git, no .device/manifest.json)"


def environment(env: dict, device_dir: pathlib.Path) -> str:
    lines = [f"date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}"]
    lines.append(f"commit: {_commit(device_dir)}")
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        lines.append(f"gpu: {smi.stdout.strip()}")
    lines.append(f"python: {sys.version.split()[0]} ({PYTHON})")
    return "\n".join(lines)


def wheels_to_install(wheels_dir: pathlib.Path) -> tuple[list[pathlib.Path], list[str]]:
    """The wheels in `wheels_dir`, and the problems that forbid installing them: none there,
    or one of a package the image has (a second copy would shadow the image's build)."""
    wheels = sorted(wheels_dir.glob("*.whl"))
    problems = [] if wheels else [f"no wheels in {wheels_dir}: run benchmarks/prepare_device.py"]
    for wheel in wheels:
        name = prepare_device.normalise(wheel.name.split("-")[0])
        if name in prepare_device.NEVER or name in prepare_device.IMAGE:
            problems.append(f"{wheel.name}: the image has {name}; it must not be replaced")
    return wheels, problems


def install(wheels_dir: pathlib.Path, site: pathlib.Path, env: dict, log: pathlib.Path) -> str:
    """Installs the carried wheels into `site` (no index, no dependencies); the stage status.
    `env` must already hold `site` on PYTHONPATH, for the checks after the install."""
    wheels, problems = wheels_to_install(wheels_dir)
    if problems:
        log.write_text(log.read_text() + "\ninstall: refused: " + "; ".join(problems) + "\n")
        return "failed: " + "; ".join(problems)
    status, _ = _run(
        [
            PYTHON,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--target",
            str(site),
            *map(str, wheels),
        ],
        300,
        log,
        env,
    )
    if status != "ok":
        return status
    _run([PYTHON, "-m", "pip", "check"], 60, log, env)  # unmet needs: reported, not fatal
    if _probe(TRAINER_IMPORTS, env) != "ok":
        _run([PYTHON, "-c", TRAINER_IMPORTS], 120, log, env)  # its traceback, for the log
        return f"installed {len(wheels)} wheels, but the trainer's imports fail"
    return f"ok ({len(wheels)} wheels)"


def _trainer_rows(work: pathlib.Path) -> tuple[dict | None, list[dict]]:
    """The trainer's results.json (None if it wrote none) and history.jsonl rows."""
    run = work / "trainer_run"
    results = (
        json.loads((run / "results.json").read_text()) if (run / "results.json").exists() else None
    )
    history = (
        [
            json.loads(line)
            for line in (run / "history.jsonl").read_text().splitlines()
            if line.strip()
        ]
        if (run / "history.jsonl").exists()
        else []
    )
    return results, history


def targets(reports: dict, trainer_img_s: float | None, history: list[dict]) -> list[tuple]:
    """(what, measured, target, passed) for each target of the check."""
    tnt = (reports.get("tnt") or {}).get("rows", [])

    def img(i):
        return tnt[i]["train_img_s"] if len(tnt) > i else math.nan

    losses = [row["loss"] for row in history if row.get("split") == "train"]
    ratios = [
        ("Nested-TNT / TNT training", img(0) / img(1), 0.9, ">="),
        ("TNT / timm TNT eager", img(1) / img(2), 2.0, ">="),
        ("TNT / timm TNT compiled", img(1) / img(3), 1.0, ">"),
        (
            "trainer (main.py) / benchmark, Nested-TNT",
            (trainer_img_s or math.nan) / img(0),
            0.9,
            ">=",
        ),
    ]
    rows = [
        (what, f"{value:.2f}x", f"{op} {bar:g}", value >= bar if op == ">=" else value > bar)
        for what, value, bar, op in ratios
    ]
    falls = len(losses) >= 2 and losses[-1] < losses[0]
    rows.append(
        (
            "trainer's training loss falls",
            " -> ".join(f"{x:.3f}" for x in (losses[:1] + losses[-1:])) or "no rows",
            "last < first",
            falls,
        )
    )
    return rows


def summary(
    reports: dict, trainer_img_s: float | None, history: list[dict], batch: int, statuses: dict
) -> str:
    """The throughput table, the targets and the stages, as Markdown.

    `reports["tnt"]` rows: the nested model, the plain one, timm eager, timm compiled;
    `reports["vit"]` rows: ViT, timm eager, timm compiled.
    """
    tnt = (reports.get("tnt") or {}).get("rows", [])
    vit = (reports.get("vit") or {}).get("rows", [])

    def label(row, family):
        return (
            f"timm {family}" + (" compiled" if row["impl"] == "timm compiled" else "")
            if row["impl"] != "jax"
            else row["model"]
        )

    table = [(label(r, "ViT"), r) for r in vit] + [(label(r, "TNT"), r) for r in tnt]
    lines = ["# Device check", ""]
    first = next((r for r in reports.values() if r), None)
    if first:
        lines += [
            f"device: {first['device']} ({first['backend']}), batch {first['batch']}, "
            f"{first['img_size']} px, {first['dtype']}, matmul peak "
            f"{first['matmul_peak_tflops']:.1f} TFLOP/s",
            "",
        ]
    lines += ["| model | train img/s | MFU (train) | compile s |", "|---|---:|---:|---:|"]
    for name, row in table:
        mfu = f"{row['train_mfu']:.1%}" if "train_mfu" in row else "-"
        compile_s = f"{row['train_compile_s']:.0f}" if "train_compile_s" in row else "-"
        lines.append(f"| {name} | {row['train_img_s']:,.1f} | {mfu} | {compile_s} |")
    if trainer_img_s:
        lines += ["", f"trainer: {trainer_img_s:,.1f} img/s at batch {batch}"]
    lines += [""] + [
        f"{'PASS' if ok else 'FAIL'}: {what}: {value} (target {target})"
        for what, value, target, ok in targets(reports, trainer_img_s, history)
    ]
    lines += ["", "| stage | status |", "|---|---|"]
    lines += [f"| {name} | {status} |" for name, status in statuses.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default=os.environ.get("OUT"), help="output folder (default: $OUT)"
    )
    parser.add_argument(
        "--device-dir",
        default=str(prepare_device.DEVICE_DIR),
        help="the folder prepare_device.py wrote (wheels/, tfds/)",
    )
    parser.add_argument(
        "--data-dir", default=None, help="TFDS data_dir holding cifar10 (default: DEVICE_DIR/tfds)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=prepare_device.BUDGET_S, help="total time for all stages"
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="small models and few steps, on CPU (the rehearsal, the tests)",
    )
    args = parser.parse_args(argv)
    if not args.out:
        parser.error("pass --out=DIR or set $OUT")
    device_dir = pathlib.Path(args.device_dir).resolve()
    data_dir = args.data_dir or str(device_dir / "tfds")
    out = pathlib.Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget_s
    with tempfile.TemporaryDirectory(prefix="device_check_") as tmp:
        work = pathlib.Path(tmp)
        site = work / "site"
        env = dict(
            os.environ,
            TF_CPP_MIN_LOG_LEVEL="3",
            PYTHONPATH=os.pathsep.join(
                filter(
                    None,
                    [str(ROOT), str(ROOT / "benchmarks"), str(site), os.environ.get("PYTHONPATH")],
                )
            ),
        )
        if args.tiny:
            env["JAX_PLATFORMS"] = "cpu"
        log = out / "environment.txt"
        log.write_text(environment(env, device_dir) + "\n\n")
        statuses = {"environment": "ok"}
        statuses["install"] = install(device_dir / "wheels", site, env, log)
        text = log.read_text().split("\n\n", 1)
        log.write_text(
            f"{text[0]}\nversions (the image's and the installed): "
            f"{_probe(VERSIONS, env) or '?'}\n\n{text[1]}"
        )
        print(f"install: {statuses['install']}", flush=True)

        reports = {}
        for stage in stages(work, data_dir, args.tiny):
            left = deadline - time.monotonic()
            if left < 10:
                statuses[stage.name] = "skipped: no time left"
                continue
            status, stdout = _run(stage.command, min(stage.limit_s, left), out / "stages.txt", env)
            statuses[stage.name] = status
            if stage.json_out and status == "ok":
                reports[stage.name] = json.JSONDecoder().raw_decode(stdout[stdout.index("{") :])[0]
                (out / f"{stage.name}.json").write_text(json.dumps(reports[stage.name], indent=2))
            print(f"{stage.name}: {status}", flush=True)
        results, history = _trainer_rows(work)
        for name in ("history.jsonl", "results.json"):
            if (work / "trainer_run" / name).exists():
                shutil.copy(work / "trainer_run" / name, out / f"trainer_{name}")
    trainer_img_s = (results or {}).get("train_img_per_sec_per_device")
    text = summary(reports, trainer_img_s, history, _setup(args.tiny)["batch"], statuses)
    (out / "summary.md").write_text(text)
    print(text)
    return 0 if all(s.startswith("ok") for s in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
