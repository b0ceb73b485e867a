"""Training-step and inference throughput of a registered model, optionally beside timm.

    python benchmarks/throughput.py --model=tnt_s_patch16_224 --batch=8 --vs-timm
    python benchmarks/throughput.py --model=nested_tnt_s_patch16_224 --baseline=tnt_s_patch16_224

Times the trainer's own steps (`JaxBench`): `steps.train_step` (on-device preprocessing,
forward, backward, gradient clipping, the finiteness guard, the optimiser update; state
donated) and `steps.eval_step`, with the paper setup's optimiser and augmentation, compiled
with the trainer's XLA options (`nested_tnt_jax.xla_options`); so the training img/s here is
the trainer's. Reports, with compilation and warm-up excluded and every timed call blocked
until ready: img/s of training and evaluation, compile time, XLA's peak-memory estimate,
parameters, GFLOPs per image (the forward's matrix products and convolutions, `matmul_flops`)
and MFU against a matrix-product peak measured on the same device in the same process.

`--vs-timm` runs timm's PyTorch model with the same architecture, batch and thread count (on a
GPU: on CUDA, with JAX's memory preallocation capped at 45% to leave timm the rest), and
`--vs-timm-compiled` the same under `torch.compile`, alternating rounds with ours so that all
see the same machine state, and prints our/timm ratios. `--baseline` does the same against a
second model of ours (e.g. the nesting overhead of Nested-TNT over TNT); `--override` changes
fields of `--model` only, so one run prices one ablation against the baseline:

    python benchmarks/throughput.py --model=nested_tnt_s_patch16_224 \
        --override=nesting.mixer=False --baseline=tnt_s_patch16_224

and `--baseline-override` changes the baseline's, so the same model can be its own baseline
(what the attention core forms gain over the einsum everywhere):

    python benchmarks/throughput.py --model=tnt_s_patch16_224 --baseline=tnt_s_patch16_224 \
        --baseline-override=attention_core=einsum

`--vs-xla-defaults` also runs `--model` compiled with XLA's default options, alternating, and
prints what the trainer's options gain.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Callable

import jax
import jax.extend
import jax.numpy as jnp
import ml_collections

from nested_tnt_jax import data, models, optim, steps, xla_options

# Normalisation of the benchmark's random uint8 images (ImageNet's statistics; any would do).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def call_seconds(fn: Callable, args: tuple, iters: int) -> list[float]:
    """Seconds of each of `iters` calls of `fn(*args)`, each blocked until its result is ready."""
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return times


def median_ms(fn: Callable, args: tuple, iters: int) -> float:
    """Median milliseconds of `iters` calls of `fn(*args)`, each blocked until ready."""
    return 1000 * statistics.median(call_seconds(fn, args, iters))


def _median_img_per_sec(step: Callable[[], None], batch: int, iters: int) -> float:
    """Runs `step` `iters` times and returns batch / median seconds per call."""
    return batch / statistics.median(call_seconds(step, (), iters))


CPUINFO = "/proc/cpuinfo"
# CPU flags that set a core's matrix-product rate, widest first, as CPUINFO names them.
_VECTOR_UNITS = (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))


def host_description(with_torch: bool = False) -> dict[str, object]:
    """The machine and software a table was measured on.

    CPUs of the same nominal size differ in vector units (AVX2, AVX-512, AMX) and so in
    matrix-product rate, and ratios against timm move with them: a table without the machine's
    description cannot be compared with another.
    """
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open(CPUINFO) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    cpu = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:  # not Linux
        pass
    host = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "vector_units": [name for flag, name in _VECTOR_UNITS if flag in flags],
        "jax": jax.__version__,
    }
    if with_torch:
        import timm  # noqa: PLC0415 (optional: only --vs-timm needs PyTorch and timm)
        import torch  # noqa: PLC0415 (optional: only --vs-timm needs PyTorch and timm)

        host.update(torch=torch.__version__, timm=timm.__version__)
    return host


def host_line(host: dict[str, object]) -> str:
    """`host_description()` as the one line the benchmark scripts print under their tables."""
    units = f" ({', '.join(host['vector_units'])})" if host["vector_units"] else ""
    versions = ", ".join(f"{lib} {host[lib]}" for lib in ("jax", "torch", "timm") if lib in host)
    return f"host: {host['cpu']}, {host['cores']} cores{units}; {versions}"


def matmul_peak_flops(dtype: str) -> float:
    """FLOP/s of a large square matrix product on the default device, the MFU denominator."""
    n = 8192 if jax.default_backend() == "gpu" else 2048
    a = jax.random.normal(jax.random.key(0), (n, n), dtype=jnp.dtype(dtype))
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    return 2 * n**3 / min(call_seconds(matmul, (a,), 5))


def _paper_setup() -> ml_collections.ConfigDict:
    """The paper setup's config (`configs/common.py`: SGD with clipping, mixup, smoothing)."""
    root = str(pathlib.Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)  # the configs package, from a script in benchmarks/
    from configs import cifar10, common  # noqa: PLC0415 (after the path is set)

    config = common.base_config()
    cifar10.paper(config)
    return config


class JaxBench:
    """The trainer's compiled training and evaluation steps for one of our models, ready to time.

    `steps.train_step` and `steps.eval_step` with the paper setup's optimiser (gradient
    clipping, weight decay, momentum) and preprocessing (uint8 images of `host_size` pixels
    normalised and resized on device, label smoothing, mixup), on random data.
    """

    def __init__(
        self,
        name: str,
        img_size: int | None,
        batch: int,
        dtype: str,
        num_classes: int,
        xla_defaults: bool = False,
        host_size: int | None = None,
        train_only: bool = False,
        **overrides,
    ):
        """`xla_defaults` compiles without the options the trainer uses (`xla_options`);
        `train_only` leaves the evaluation step out (not compiled, not timed). `overrides` are
        the model's fields, and `nesting.<field>` keys its nesting spec's."""
        self.name = name
        self.batch = batch
        options = {} if xla_defaults else xla_options.step_compiler_options()
        nesting = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("nesting.")}
        overrides = {k: v for k, v in overrides.items() if not k.startswith("nesting.")}
        self.model = models.create_model(
            name,
            num_classes=num_classes,
            img_size=img_size,
            dtype=dtype,
            nesting=nesting,
            **overrides,
        )
        size = self.model.img_size
        config = _paper_setup()
        rng = jax.random.key(0)
        image_key, label_key = jax.random.split(rng)
        host_size = host_size or size
        images = jax.random.randint(image_key, (batch, host_size, host_size, 3), 0, 256, jnp.int32)
        self.batch_data = {
            "image": images.astype(jnp.uint8),
            "label": jax.random.randint(label_key, (batch,), 0, num_classes),
        }
        self.eval_data = dict(self.batch_data, mask=jnp.ones((batch,), bool))
        self.params = jax.jit(steps.init_params, static_argnums=0)(self.model, rng)
        self.num_params = sum(x.size for x in jax.tree.leaves(self.params))
        tx, schedule = optim.create_optimizer(config.optim, total_steps=10_000)
        # The training state is donated each step, so it must not share buffers with the
        # parameters that evaluation reads.
        self.state = steps.create_train_state(
            jax.tree.map(jnp.copy, self.params), tx, jax.random.PRNGKey(0)
        )
        augment = config.augment

        def preprocess(batch, rng, train):
            return data.preprocess(
                batch,
                rng,
                train=train,
                image_size=size,
                num_classes=num_classes,
                mixup_alpha=augment.mixup_alpha,
                cutmix_alpha=augment.cutmix_alpha,
                label_smoothing=augment.label_smoothing,
                mean=IMAGE_MEAN,
                std=IMAGE_STD,
            )

        train_step = functools.partial(
            steps.train_step, model=self.model, tx=tx, schedule=schedule, preprocess=preprocess
        )
        eval_step = functools.partial(steps.eval_step, model=self.model, preprocess=preprocess)
        start = time.perf_counter()
        self.compiled_train = (
            jax.jit(train_step, donate_argnums=0, compiler_options=options)
            .lower(self.state, self.batch_data)
            .compile()
        )
        self.train_compile_s = time.perf_counter() - start
        self.compiled_infer, self.infer_compile_s = None, None
        if not train_only:
            start = time.perf_counter()
            self.compiled_infer = (
                jax.jit(eval_step, compiler_options=options)
                .lower(self.params, self.eval_data)
                .compile()
            )
            self.infer_compile_s = time.perf_counter() - start
        self.gflops_per_image = matmul_flops(eval_step, self.params, self.eval_data) / batch / 1e9
        self.train_flops_per_step = matmul_flops(train_step, self.state, self.batch_data)
        memory = self.compiled_train.memory_analysis()
        self.train_peak_mib = (
            None
            if memory is None
            else (
                memory.argument_size_in_bytes
                + memory.output_size_in_bytes
                + memory.temp_size_in_bytes
                - memory.alias_size_in_bytes
            )
            / 2**20
        )
        self.train_step()  # warm-up
        if not train_only:
            self.infer_step()

    def train_step(self) -> None:
        self.state, step_metrics = self.compiled_train(self.state, self.batch_data)
        jax.block_until_ready((self.state, step_metrics))

    def infer_step(self) -> None:
        jax.block_until_ready(self.compiled_infer(self.params, self.eval_data))


def matmul_flops(fn: Callable, *args) -> float:
    """FLOPs of the matrix products and convolutions that `fn(*args)` runs, read off its jaxpr.

    The usual MFU numerator, and the same on every backend: XLA's cost analysis of a compiled
    GPU program leaves out the products it hands to cuBLAS, and on CPU counts a loop body once.
    Scan bodies count once per iteration; other loops (unknown trip count) once.
    """
    return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def _jaxpr_flops(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:  # some have no outputs (flax's scan leaves output-less calls)
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * eqn.outvars[0].aval.size * math.prod(lhs[i] for i in lhs_contract)
        elif eqn.primitive.name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
            total += 2.0 * eqn.outvars[0].aval.size * math.prod(rhs[i] for i in rhs_spec[1:])
        repeats = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    sub = sub.jaxpr
                if isinstance(sub, jax.extend.core.Jaxpr):
                    total += repeats * _jaxpr_flops(sub)
    return total


def timm_twin(module, num_classes: int):
    """timm's PyTorch model with `module`'s architecture (random weights), as its family
    declares it (`registry.Family.timm_twin`)."""
    family = models.family_of(module)
    if family.timm_twin is None:
        raise ValueError(f"The {family.name} family declares no timm twin to compare with.")
    return family.timm_twin(module, num_classes)


class TimmBench:
    """The same architecture in timm (PyTorch), timed the same way on the same kind of device.

    On a GPU backend timm runs on CUDA and each timed call ends with `torch.cuda.synchronize()`;
    on CPU it gets `threads` threads. `bfloat16` runs timm under `torch.autocast`, PyTorch's usual
    mixed precision (float32 parameters, bfloat16 matrix products), as ours keeps float32
    parameters and computes in bfloat16. `compile_backend` runs the model under
    `torch.compile(backend=...)` ("inductor": the PyTorch user's fastest choice), else eagerly.
    """

    def __init__(
        self,
        module,
        batch: int,
        num_classes: int,
        threads: int,
        dtype: str = "float32",
        compile_backend: str | None = None,
        train_only: bool = False,
    ):
        import torch  # noqa: PLC0415 (optional: only the --vs-timm comparison needs PyTorch and timm)

        torch.set_num_threads(threads)
        self.torch = torch
        self.batch = batch
        on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
        self.device = torch.device("cuda" if on_gpu else "cpu")
        self.bfloat16 = dtype == "bfloat16"
        self.model = timm_twin(module, num_classes).to(self.device)
        size = module.img_size
        self.images = torch.randn(batch, 3, size, size, device=self.device)
        self.labels = torch.randint(0, num_classes, (batch,), device=self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.forward = (
            torch.compile(self.model, backend=compile_backend) if compile_backend else self.model
        )
        for _ in range(2 if compile_backend else 1):  # compiles (training and eval graphs)
            self.train_step()
            if not train_only:
                self.infer_step()

    def _autocast(self):
        return self.torch.autocast(
            self.device.type, dtype=self.torch.bfloat16, enabled=self.bfloat16
        )

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def train_step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.torch.nn.functional.cross_entropy(self.forward(self.images), self.labels)
        loss.backward()
        self.optimizer.step()
        self._sync()

    def infer_step(self) -> None:
        self.model.eval()
        with self.torch.inference_mode(), self._autocast():
            self.forward(self.images)
        self._sync()


def parse_override(text: str) -> tuple[str, object]:
    """`field=value` -> (field, value); the value as a Python literal, else as a string."""
    field, sep, value = text.partition("=")
    if not sep or not field:
        raise argparse.ArgumentTypeError(f"--override takes field=value, got {text!r}")
    try:
        return field, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return field, value


def _label(model: str, overrides: dict) -> str:
    return model + "".join(f" {k}={v}" for k, v in overrides.items())


def _alternate(benches: dict, attr: str, batch: int, rounds: int, iters: int) -> dict[str, float]:
    """Median img/s per bench over `rounds` alternating rounds of `iters` calls each.

    Every other round runs the benches in reverse order, so that none is always timed first
    after compilation or right after the same neighbour.
    """
    results = {name: [] for name in benches}
    order = list(benches.items())
    for r in range(rounds):
        for name, bench in order if r % 2 == 0 else order[::-1]:
            results[name].append(_median_img_per_sec(getattr(bench, attr), batch, iters))
    return {name: statistics.median(values) for name, values in results.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", required=True, help="a name from nested_tnt_jax.models.list_models()"
    )
    parser.add_argument("--img-size", type=int, default=None, help="default: the model's own")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per comparison")
    parser.add_argument("--iters", type=int, default=5, help="timed calls per round")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="PyTorch threads for --vs-timm"
    )
    parser.add_argument(
        "--host-size",
        type=int,
        default=None,
        help="pixels of the uint8 images the step takes (default: the model's; "
        "the step resizes them on device, as the CIFAR paper setup does)",
    )
    parser.add_argument("--vs-timm", action="store_true", help="also run timm's model, alternating")
    parser.add_argument(
        "--vs-timm-compiled",
        action="store_true",
        help="also run timm's model under torch.compile, alternating",
    )
    parser.add_argument(
        "--timm-compile-backend",
        default="inductor",
        help="torch.compile backend for --vs-timm-compiled",
    )
    parser.add_argument("--baseline", default=None, help="another of our models to compare against")
    parser.add_argument(
        "--vs-xla-defaults",
        action="store_true",
        help="also run --model compiled with XLA's default options, alternating",
    )
    parser.add_argument(
        "--override",
        type=parse_override,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a field of --model (repeatable), e.g. nesting.mixer=False",
    )
    parser.add_argument(
        "--baseline-override",
        type=parse_override,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a field of --baseline (repeatable), e.g. attention_core=einsum",
    )
    parser.add_argument(
        "--train-only",
        action="store_true",
        help="time training only (no evaluation step compiled or timed)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    args = parser.parse_args(argv)
    with_torch = args.vs_timm or args.vs_timm_compiled
    if with_torch:
        # On a GPU, JAX would otherwise reserve 75% of its memory at start-up and leave timm
        # too little; no effect on CPU or once JAX has started.
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")

    overrides = dict(args.override)
    common = dict(host_size=args.host_size, train_only=args.train_only)
    ours = JaxBench(
        args.model, args.img_size, args.batch, args.dtype, args.num_classes, **common, **overrides
    )
    label = _label(args.model, overrides)
    benches = {label: ours}
    if args.baseline:
        baseline_overrides = dict(args.baseline_override)
        benches[_label(args.baseline, baseline_overrides)] = JaxBench(
            args.baseline,
            args.img_size,
            args.batch,
            args.dtype,
            args.num_classes,
            **common,
            **baseline_overrides,
        )
    if args.vs_xla_defaults:
        benches[label + " (XLA defaults)"] = JaxBench(
            args.model,
            args.img_size,
            args.batch,
            args.dtype,
            args.num_classes,
            xla_defaults=True,
            **common,
            **overrides,
        )
    if args.vs_timm:
        benches["timm"] = TimmBench(
            ours.model,
            args.batch,
            args.num_classes,
            args.threads,
            args.dtype,
            train_only=args.train_only,
        )
    if args.vs_timm_compiled:
        benches["timm compiled"] = TimmBench(
            ours.model,
            args.batch,
            args.num_classes,
            args.threads,
            args.dtype,
            compile_backend=args.timm_compile_backend,
            train_only=args.train_only,
        )
    train = _alternate(benches, "train_step", args.batch, args.rounds, args.iters)
    infer = (
        {name: float("nan") for name in benches}
        if args.train_only
        else _alternate(benches, "infer_step", args.batch, args.rounds, args.iters)
    )
    peak = matmul_peak_flops(args.dtype)

    rows = []
    for name, bench in benches.items():
        row = {
            "model": name,
            "impl": name if name.startswith("timm") else "jax",
            "train_img_s": train[name],
            "infer_img_s": infer[name],
            "params": bench.num_params,
        }
        if isinstance(bench, JaxBench):
            row.update(
                gflops_per_image=bench.gflops_per_image,
                train_compile_s=bench.train_compile_s,
                infer_compile_s=bench.infer_compile_s,
                train_peak_mib=bench.train_peak_mib,
                train_mfu=bench.train_flops_per_step * train[name] / args.batch / peak,
            )
        rows.append(row)
    ratios = {
        f"{label}/{name}": {
            "train": train[label] / train[name],
            "infer": infer[label] / infer[name],
        }
        for name in benches
        if name != label
    }
    report = {
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "host": host_description(with_torch=with_torch),
        "batch": args.batch,
        "dtype": args.dtype,
        "img_size": ours.model.img_size,
        "matmul_peak_tflops": peak / 1e12,
        "rows": rows,
        "ratios": ratios,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report)
    return report


def _img_s(value: float) -> str:
    """img/s to print: one decimal, or three significant digits for the few-img/s CPU rows."""
    return f"{value:,.1f}" if value >= 100 else f"{value:.3g}"


def _print_table(report: dict) -> None:
    print(
        f"device: {report['device']} ({report['backend']}), batch {report['batch']}, "
        f"{report['img_size']} px, {report['dtype']}, matmul peak "
        f"{report['matmul_peak_tflops'] * 1e3:.1f} GFLOP/s"
    )
    print(host_line(report["host"]))
    print(
        "| model | impl | train img/s | infer img/s | params | GFLOPs/img | compile s (train) "
        "| peak MiB (train) | MFU (train) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in report["rows"]:
        extra = (
            ("-", "-", "-", "-")
            if row["impl"] != "jax"
            else (
                f"{row['gflops_per_image']:.2f}",
                f"{row['train_compile_s']:.1f}",
                "-" if row["train_peak_mib"] is None else f"{row['train_peak_mib']:.0f}",
                f"{row['train_mfu']:.1%}",
            )
        )
        print(
            f"| {row['model']} | {row['impl']} | {_img_s(row['train_img_s'])} "
            f"| {_img_s(row['infer_img_s'])} "
            f"| {row['params']:,} | " + " | ".join(extra) + " |"
        )
    for name, ratio in report["ratios"].items():
        print(f"ratio {name}: train {ratio['train']:.2f}x, inference {ratio['infer']:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
