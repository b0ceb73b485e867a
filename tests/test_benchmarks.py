"""The benchmark scripts run and check their own variants against each other."""

import gzip
import importlib.util
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mixer_benchmark_times_every_form_and_says_which_one_blocks(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # it imports its sibling `throughput`
    mixer = _load("mixer")
    rows = mixer.main(
        ["--case", "big:2:8:70000", "--case", "small:3:12:1001", "--iters", "1", "--rounds", "1"]
    )
    assert [(r["case"], r["blocked_path"], r["chosen"]) for r in rows] == [
        ("big", True, "blocked"),
        ("small", False, "blocked"),
    ]
    assert all(
        r[f"{form}_{part}_ms"] > 0
        for r in rows
        for form in ("reference", "blocked", "fused")
        for part in ("forward", "forward_backward")
    )
    # Against float64: every form as accurate as the formula itself in float32.
    assert all(r["reference_error_vs_float64"] < 1e-4 for r in rows)
    assert all(r["error_vs_float64"] <= 2 * r["reference_error_vs_float64"] + 1e-6 for r in rows)
    table = capsys.readouterr().out
    assert "error vs float64: ||x - x64|| / ||x64||" in table
    assert "| big | 2 -> 8 | 70,000 |" in table and "small (too small to block)" in table
    assert "cores" in table and f"jax {jax.__version__}" in table  # the host line


def test_host_description_reads_the_cpu_model_and_its_vector_units(monkeypatch, tmp_path):
    throughput = _load("throughput")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 avx512f sse\n"
        "processor\t: 1\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 avx512f sse\n"
    )
    monkeypatch.setattr(throughput, "CPUINFO", str(cpuinfo))
    host = throughput.host_description()
    assert (host["cpu"], host["vector_units"]) == ("Some Xeon", ["AVX-512", "AVX2"])
    assert "torch" not in host
    assert throughput.host_line(host) == (
        f"host: Some Xeon, {os.cpu_count()} cores (AVX-512, AVX2); jax {jax.__version__}"
    )
    monkeypatch.setattr(throughput, "CPUINFO", str(tmp_path / "missing"))  # not Linux
    assert throughput.host_description()["vector_units"] == []


def test_attention_core_variants_compute_our_attention(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # it imports its sibling `throughput`
    rows = _load("attention_core").main(
        ["--case", "tiny:6:5:2:3", "--case", "wide:2:5:2:64", "--iters", "1"]
    )
    assert [r["variant"] for r in rows[:5]] == [
        "ours einsum",
        "ours heads_first",
        "ours broadcast",
        "batch-heads first",
        "dot_product_attention xla",
    ]  # no cuDNN on CPU
    assert all(
        r["max_diff"] < 1e-5 and r["forward_ms"] > 0 and r["forward_backward_ms"] > 0 for r in rows
    )
    assert [r["variant"] for r in rows if r["in_model"]] == ["ours broadcast", "ours heads_first"]
    out = capsys.readouterr().out
    assert "| tiny (6, 5, 2, 3) | ours broadcast | " in out and f"jax {jax.__version__}" in out


@pytest.fixture
def profile(monkeypatch):
    """benchmarks/profile_step.py, which imports its sibling `throughput` as a script would."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return _load("profile_step")


def test_op_names_map_to_modules_and_directions(profile):
    assert profile.op_module(
        "jit(train_step)/transpose(jvp(TNT))/blocks_5/mlp/fc1/dot_general"
    ) == ("mlp/fc1", "backward")
    assert profile.op_module(
        "jit(train_step)/jvp(TNT)/blocks_5/attn_in/bqhd,bkhd->hbqk/dot_general"
    ) == ("attn_in", "forward")
    assert profile.op_module("jit(infer)/TNT/blocks_0/norm_in/mul") == ("norm_in", "forward")
    assert profile.op_module("jit(infer)/TNT/head/dot_general") == ("head", "forward")
    assert profile.op_module("jit(train_step)/mul")[0] == profile.OUTSIDE


def _write_trace(directory: pathlib.Path, events: list[dict]) -> None:
    path = directory / "plugins" / "profile" / "run" / "host.trace.json.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)


def test_op_times_on_gpu_counts_the_devices_own_events_by_hlo_op(profile, tmp_path):
    _write_trace(
        tmp_path,
        [
            {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
            {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}},
            {
                "ph": "X",
                "pid": 1,
                "tid": 1,
                "name": "fusion.1",
                "ts": 0,
                "dur": 5,
            },  # the host's launch
            {
                "ph": "X",
                "pid": 2,
                "tid": 7,
                "name": "sm90_xmma_gemm",
                "ts": 3,
                "dur": 7,
                "args": {"hlo_op": "fusion.1"},
            },
        ],
    )
    assert profile.op_times(str(tmp_path)) == [("fusion.1", (2, 7), 3, 7)]


def test_op_times_on_cpu_counts_every_thread(profile, tmp_path):
    _write_trace(
        tmp_path,
        [
            {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
            {"ph": "X", "pid": 1, "tid": 1, "name": "dot.3", "ts": 10, "dur": 5},
            {"ph": "X", "pid": 1, "tid": 2, "name": "fusion.2", "ts": 11, "dur": 2},
        ],
    )
    assert profile.op_times(str(tmp_path)) == [
        ("dot.3", (1, 1), 10, 5),
        ("fusion.2", (1, 2), 11, 2),
    ]


def test_threads_busy_counts_overlap_across_threads_and_nesting_once(profile):
    op = profile.OpEvent
    events = [
        op("while.1", (1, 1), 0, 6000),
        op("dot.2", (1, 1), 1000, 2000),  # dot.2 runs in while.1
        op("fusion.3", (1, 2), 4000, 4000),  # overlaps while.1's last 2 ms
        op("copy.4", (1, 1), 10000, 2000),
    ]  # after 2 ms with no op running
    # Over two steps: 4 + 2 + 2 ms on one thread, 2 on two, 2 on none; halved per step.
    assert profile.threads_busy_ms(events, steps=2) == {0: 1.0, 1: 4.0, 2: 1.0}
    assert profile.threads_busy_ms([], steps=1) == {}


def test_matmul_flops_counts_products_convolutions_and_scan_iterations():
    throughput = _load("throughput")
    x, w = jnp.ones((8, 16)), jnp.ones((16, 32))
    assert throughput.matmul_flops(lambda x, w: jnp.tanh(x @ w), x, w) == 2 * 8 * 16 * 32
    images, kernel = jnp.ones((2, 9, 9, 3)), jnp.ones((3, 3, 3, 5))  # HWIO
    conv = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
        x, k, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    assert throughput.matmul_flops(conv, images, kernel) == 2 * (2 * 4 * 4 * 5) * (3 * 3 * 3)
    square = jnp.ones((16, 16))
    scanned = lambda x, w: jax.lax.scan(lambda c, _: (c @ w, None), x, length=3)[0]  # noqa: E731
    assert throughput.matmul_flops(scanned, x, square) == 3 * 2 * 8 * 16 * 16
    # Backward products count too: the gradient of x @ w costs two more products.
    grad = jax.grad(lambda x, w: (x @ w).sum(), argnums=(0, 1))
    assert throughput.matmul_flops(grad, x, w) == 3 * 2 * 8 * 16 * 32


def test_matmul_flops_of_a_scanned_model_equals_its_unrolled_twin():
    throughput = _load("throughput")
    from nested_tnt_jax import models

    images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    flops = {}
    for scan in (False, True):
        model = models.create_model(
            "nested_tnt_cifar_patch8_word4_32", num_classes=10, depth=3, scan_blocks=scan
        )
        params = jax.eval_shape(
            lambda model=model: model.init(
                jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
            )
        )
        flops[scan] = throughput.matmul_flops(
            lambda p, x, model=model: model.apply(p, x, train=False), params, images
        )
    assert flops[True] == flops[False] > 0


def test_profile_splits_a_training_step_by_module(profile, capsys):
    rows = profile.main(
        [
            "--model",
            "nested_tnt_cifar_patch8_word4_32",
            "--batch",
            "8",
            "--num-classes",
            "10",
            "--steps",
            "1",
            "--top",
            "100",
        ]
    )
    by_module = {row["module"]: row for row in rows}
    for module in ("attn_in", "attn_in/mixer", "attn_out/qk", "mlp_in/fc1", "mlp/fc2", "norm_in"):
        assert by_module[module]["forward_ms"] > 0 and by_module[module]["backward_ms"] > 0, module
    out = capsys.readouterr().out
    assert "| attn_in/mixer |" in out and f"jax {jax.__version__}" in out  # and the host line
    assert "threads running ops, ms per step: " in out


def test_throughput_prices_an_override_against_a_baseline_and_timm(capsys):
    throughput = _load("throughput")
    report = throughput.main(
        [
            "--model=tnt_cifar_patch8_word4_32",
            "--override=depth=2",
            "--override=mlp_ratio=1.0",
            "--baseline=tnt_cifar_patch8_word4_32",
            "--baseline-override=attention_core=einsum",
            "--vs-timm",
            "--vs-timm-compiled",
            "--timm-compile-backend=eager",
            "--batch=4",
            "--num-classes=10",
            "--rounds=1",
            "--iters=1",
            "--threads=1",
        ]
    )
    rows = {row["model"]: row for row in report["rows"]}
    ablated = "tnt_cifar_patch8_word4_32 depth=2 mlp_ratio=1.0"
    baseline = "tnt_cifar_patch8_word4_32 attention_core=einsum"
    assert list(rows) == [ablated, baseline, "timm", "timm compiled"]
    # The overrides reach our model and its timm twin, not the baseline.
    assert rows[ablated]["params"] == rows["timm"]["params"] < rows[baseline]["params"]
    assert rows[ablated]["gflops_per_image"] < rows[baseline]["gflops_per_image"]
    assert set(report["ratios"]) == {
        f"{ablated}/{name}" for name in (baseline, "timm", "timm compiled")
    }
    assert all(r["train"] > 0 and r["infer"] > 0 for r in report["ratios"].values())
    assert all(0 < row["train_mfu"] < 1 for row in report["rows"] if row["impl"] == "jax")
    out = capsys.readouterr().out
    assert f"ratio {ablated}/timm: train" in out and f"ratio {ablated}/timm compiled: train" in out
    # The table names the machine and the versions of both libraries it timed.
    import torch

    host = report["host"]
    assert host["cores"] == os.cpu_count() and host["cpu"]
    assert (host["jax"], host["torch"]) == (jax.__version__, torch.__version__)
    assert (
        f"host: {host['cpu']}, {host['cores']} cores" in out and f"torch {torch.__version__}" in out
    )


def test_throughput_times_the_trainers_step():
    """The benchmark's step is `steps.train_step` with the paper setup: it takes uint8 images
    (resized on device from `host_size`), clips the gradient, guards against non-finite
    updates and returns the trainer's metrics."""
    throughput = _load("throughput")
    bench = throughput.JaxBench(
        "vit_cifar_patch8_32", None, 4, "float32", 10, depth=1, host_size=16
    )
    assert bench.batch_data["image"].dtype == jnp.uint8
    assert bench.batch_data["image"].shape == (4, 16, 16, 3)
    before = int(bench.state.step)
    bench.train_step()
    assert int(bench.state.step) == before + 1
    _, step_metrics = bench.compiled_train(bench.state, bench.batch_data)
    assert set(step_metrics) == {"loss", "accuracy", "grad_norm", "learning_rate"}
    hlo = bench.compiled_train.as_text()
    assert "is-finite" in hlo  # the finiteness guard
    assert set(bench.compiled_infer(bench.params, bench.eval_data)) == {
        "correct_top1",
        "correct_top5",
        "loss_sum",
        "count",
    }


def test_throughput_vs_xla_defaults_compiles_the_model_without_the_trainers_options():
    throughput = _load("throughput")
    report = throughput.main(
        [
            "--model=tnt_cifar_patch8_word4_32",
            "--override=depth=1",
            "--vs-xla-defaults",
            "--batch=4",
            "--num-classes=10",
            "--rounds=1",
            "--iters=1",
        ]
    )
    ours, defaults = (row["model"] for row in report["rows"])
    assert defaults == f"{ours} (XLA defaults)"
    assert set(report["ratios"]) == {f"{ours}/{defaults}"}
    assert "torch" not in report["host"]  # timm did not run, so PyTorch's version is not claimed
    benches = [
        throughput.JaxBench(
            "vit_cifar_patch8_32", None, 4, "float32", 10, depth=1, xla_defaults=flag
        )
        for flag in (False, True)
    ]
    ynn_fusions = [b.compiled_train.as_text().count("__ynn_fusion") for b in benches]
    assert ynn_fusions[0] < ynn_fusions[1]  # the trainer's options keep reductions out of YNNPACK
    # ... and the model is the same either way: it does not depend on how it is compiled.
    assert benches[0].model == benches[1].model


def test_throughput_refuses_an_override_without_a_value(capsys):
    throughput = _load("throughput")
    with pytest.raises(SystemExit):
        throughput.main(["--model=tnt_cifar_patch8_word4_32", "--override=mixer"])
    assert "--override takes field=value" in capsys.readouterr().err
