"""The training loop: validate, lock, check, init or restore, step, log, checkpoint, report.

`train_and_evaluate(config, workdir)` is the library entry point (`main.py` only parses flags).
Before any compilation or write to `workdir`, the config is checked (`validate_config`, each
rule by the module that owns its fields), the workdir is locked for this trainer
(`workdir.Lock`), a resumed run's config is compared with the one it started with
(`workdir.check_resume`), and every split the run reads is read end to end
(`data.integrity`); so a mistake costs seconds and leaves nothing behind. A finished run is
left as it is.
"""

import dataclasses
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from nested_tnt_jax import (
    checkpointing,
    data,
    extras,
    metrics,
    models,
    optim,
    paths,
    pretrained,
    sharding,
    steps,
    xla_options,
)
from nested_tnt_jax import workdir as workdir_lib
from nested_tnt_jax.data import augment, integrity, pipeline
from nested_tnt_jax.errors import ConfigError, RunError, check_range

PyTree = Any


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError (one paragraph naming the field) for a config that cannot run.

    Each rule lives with the module that uses the fields: the model registry (name and
    overrides), `optim.check_config`, `augment.check_config`, `pipeline.check_input_config`,
    `sharding.check_config` (mesh and batch divisibility); the run's own fields (length,
    seed, image size, frequencies, init_from) are checked here. Unknown keys never get here:
    the locked ConfigDict refuses them. Nothing is compiled, read or written.
    """

    def fail(message: str) -> None:
        raise ConfigError(message)

    if config.model.name not in models.list_models():
        fail(
            f"config.model.name is {config.model.name!r}, which is not a registered model. "
            f"Use one of: {', '.join(models.list_models())}."
        )
    if config.dataset.name not in data.DATASETS:
        fail(
            f"config.dataset.name is {config.dataset.name!r}, which the input pipeline does "
            f"not support. Use one of: {', '.join(sorted(data.DATASETS))}."
        )
    try:
        model = models.create_model(
            config.model.name,
            nesting=config.model.nesting.to_dict(),
            **config.model.overrides.to_dict(),
        )
    except (ValueError, TypeError) as e:
        fail(
            f"config.model.overrides / .nesting is not accepted by {config.model.name!r}: {e} "
            "To train another model family, choose it with the config argument `:model=<family>` "
            "(e.g. `--config=configs/cifar10.py:model=vit`), which sets its name and its "
            "overrides together, rather than with --config.model.name."
        )
    check_range("image_size", config.image_size, low=1, integer=True)
    if config.image_size % model.patch_size:
        fail(
            f"config.image_size is {config.image_size}, which is not a positive multiple of "
            f"the patch size {model.patch_size} of {config.model.name!r}. Set image_size to a "
            f"multiple of {model.patch_size} (e.g. "
            f"{max(1, config.image_size // model.patch_size) * model.patch_size})."
        )
    if config.num_train_steps != -1:
        check_range(
            "num_train_steps",
            config.num_train_steps,
            low=1,
            integer=True,
            hint="or -1 to take the length from num_epochs",
        )
    check_range(
        "num_epochs",
        config.num_epochs,
        low=0,
        low_open=True,
        hint="the run's length when num_train_steps is -1",
    )
    check_range("seed", config.seed, low=0, high=2**31 - 1, integer=True)
    for field in (
        "checkpoint_every_steps",
        "eval_every_steps",
        "log_every_steps",
        "max_checkpoints_to_keep",
    ):
        check_range(field, config[field], low=1, integer=True)
    optim.check_config(config.optim, config.num_train_steps if config.num_train_steps > 0 else None)
    augment.check_config(config.augment)
    pipeline.check_input_config(config.input)
    sharding.check_config(config)
    check_range(
        "lock_timeout_s",
        config.lock_timeout_s,
        low=0,
        low_open=True,
        hint="seconds without a heartbeat after which a gs:// workdir's lock is taken over",
    )
    if config.init_from and not paths.resolve(config.init_from).exists():
        fail(
            f"config.init_from is {config.init_from!r}, which does not exist. Point it at a "
            "finished run's workdir (or one of its checkpoints, RUN/checkpoints/N) or a timm "
            "checkpoint file, or set it to '' to train from scratch."
        )


def _eval_batch_size(config: ml_collections.ConfigDict) -> int:
    return config.eval_batch_size or config.batch_size


def num_train_steps(config: ml_collections.ConfigDict, train_examples: int) -> int:
    """`num_train_steps` when > 0, else `num_epochs` worth of full batches (at least 1)."""
    if config.num_train_steps > 0:
        return config.num_train_steps
    return max(1, math.ceil(config.num_epochs * train_examples / config.batch_size))


def _preprocess_fn(config: ml_collections.ConfigDict, info: data.DatasetInfo):
    """`data.preprocess` bound to this run's dataset and augmentation: (batch, rng, train)."""

    def fn(batch, rng, train):
        return data.preprocess(
            batch,
            rng,
            train=train,
            image_size=config.image_size,
            num_classes=info.num_classes,
            mixup_alpha=config.augment.mixup_alpha,
            cutmix_alpha=config.augment.cutmix_alpha,
            label_smoothing=config.augment.label_smoothing,
            mean=info.mean,
            std=info.std,
        )

    return fn


def _state_shardings(abstract: steps.TrainState, mesh) -> steps.TrainState:
    """Parameters and optimiser state per `sharding.param_shardings`; step and key replicated."""
    replicated = sharding.replicated_sharding(mesh)
    return steps.TrainState(
        step=replicated,
        params=sharding.param_shardings(abstract.params, mesh),
        opt_state=sharding.param_shardings(abstract.opt_state, mesh),
        rng=replicated,
    )


def evaluate(eval_fn, params: PyTree, batches: data.EvalBatches, mesh) -> dict[str, float]:
    """Exact top-1 / top-5 / loss over every real example of `batches`."""
    totals = None
    for batch in batches:
        out = eval_fn(
            params, sharding.global_batch({k: batch[k] for k in ("image", "label", "mask")}, mesh)
        )
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = jax.device_get(totals)
    count = float(totals["count"])
    return {
        "top1": float(totals["correct_top1"]) / count,
        "top5": float(totals["correct_top5"]) / count,
        "loss": float(totals["loss_sum"]) / count,
        "examples": int(count),
    }


def _check_finite(history: list[tuple[int, dict]]) -> None:
    """Raises FloatingPointError naming the first step and metric that is NaN or Inf."""
    for step, values in history:
        for name in sorted(values, key=lambda n: n != "loss"):  # The loss first, if it is bad.
            value = values[name]
            if not np.isfinite(value):
                raise FloatingPointError(
                    f"Training stopped: {name} is {value} at step {step}. The parameters of "
                    "that step were not applied, and the last checkpoint (before it) is kept. "
                    "Lower optim.learning_rate, set optim.grad_clip_norm, or use float32 "
                    "(model.overrides.dtype) and restart from the same workdir."
                )


def _workdir_error(workdir: str, error: OSError) -> RunError:
    return RunError(
        f"The workdir {workdir!r} cannot be written ({error.strerror or error}). Pass a "
        "--workdir that you can write to, or fix its permissions or free disk space."
    )


def _lock(workdir: str, timeout_s: float) -> workdir_lib.Lock | workdir_lib.CloudLock:
    """The workdir's lock, taken by process 0 (every process learns whether it was)."""
    lock = workdir_lib.lock(workdir, timeout_s)
    error = None
    if jax.process_index() == 0:
        try:
            lock.acquire()
        except ConfigError as e:
            error = e
        except OSError as e:
            error = _workdir_error(workdir, e)
    if jax.process_count() > 1:
        taken = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if not taken and error is None:
            error = ConfigError(
                f"Process 0 could not take the lock of the workdir {workdir!r} "
                "(its message says why); nothing was done."
            )
    if error is not None:
        raise error
    return lock


def _prepare_workdir(
    workdir: str, config: ml_collections.ConfigDict, init_record: dict | None
) -> None:
    """Writes `config.json` (process 0), with what `init_from` loaded.

    This is the run's first write, made after every check that can refuse the config or the
    data, so that a refused run leaves nothing behind; and it comes before any compilation, so
    that an unwritable workdir fails in seconds.
    """
    try:
        if jax.process_index() == 0:
            metrics.write_config_file(
                workdir, config, {workdir_lib.INIT_RECORD: init_record} if init_record else None
            )
    except OSError as e:
        raise _workdir_error(workdir, e) from e


def _finished(workdir: str) -> dict | None:
    """The results of a run that finished in `workdir`, else None."""
    path = paths.resolve(workdir) / metrics.RESULTS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


@dataclasses.dataclass
class Run:
    """What the stages of `train_and_evaluate` share: the run's setup, fixed once made."""

    config: ml_collections.ConfigDict
    workdir: str
    sizes: dict[str, int]  # Examples per role: "train", "validation", "test".
    total_steps: int
    mesh: jax.sharding.Mesh
    model: Any
    tx: Any
    schedule: Any
    init_state: Callable[[Any], steps.TrainState]  # pre-trained parameters -> fresh state
    abstract: steps.TrainState
    state_sharding: steps.TrainState
    eval_fn: Callable[[PyTree, dict], dict]
    chrono: metrics.Chrono
    wall_start: float

    def eval_batches(self, split: str) -> data.EvalBatches:
        config = self.config
        return data.create_eval_batches(
            config.dataset,
            config.augment,
            config.input,
            split=split,
            global_batch_size=_eval_batch_size(config),
            image_size=config.image_size,
        )

    def evaluate(self, params: PyTree, split: str) -> dict[str, float]:
        return evaluate(self.eval_fn, params, self.eval_batches(split), self.mesh)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, reevaluate: bool = False
) -> dict[str, Any] | None:
    """Trains `config` in `workdir` (resuming if it holds a checkpoint), then tests.

    Returns the results dict also written to `workdir/results.json`, or None when a signal
    stopped the run (after saving a checkpoint to resume from). A workdir whose run finished
    is left untouched and its results are returned; `reevaluate` then evaluates its final
    checkpoint on the validation and test splits and returns those numbers, writing nothing.
    Errors that explain themselves are `errors.EXPLAINED`; `ConfigError`s are raised before
    anything is read or written.

    The stages, in order: `validate_config` and `check_packages` (refuse before anything is
    read), the lock, `_setup` (data checked end to end, model, optimiser, compiled-to-be
    functions), `_restore_or_init` (the first write to the workdir, then the state),
    `_start_reporting` (history, events, the start block), `_train` (the loop: steps, logs,
    evaluations, checkpoints, stop signals) and `_test`
    (the final test and results.json); a finished run goes to `_reevaluate` instead.
    """
    validate_config(config)
    check_packages(config, workdir)
    wall_start = time.time()
    lock = _lock(workdir, config.lock_timeout_s)
    try:
        workdir_lib.check_resume(workdir, config)
        finished = _finished(workdir)
        if finished is not None and not reevaluate:
            _say_finished(workdir, finished)
            return finished
        run = _setup(config, workdir, wall_start)
        if finished is not None:
            return _reevaluate(run)
        state, checkpointer, init_record = _restore_or_init(run, lock)
        start_step = int(state.step)
        reporter = _start_reporting(run, state, start_step, init_record)
        state, last_saved, preempted = _train(run, state, checkpointer, reporter)
        if preempted:
            return None
        return _test(run, state, reporter, start_step, last_saved, init_record)
    finally:
        lock.undo()  # Removes what the lock created, unless the run wrote (`lock.keep`).


def check_packages(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raises ConfigError naming what to install when the run needs a package that is not
    installed: gcsfs for a `gs://` path, TensorFlow to prepare a dataset that is not prepared
    yet (`data.datasets`), torch or safetensors to fine-tune from a timm file (`pretrained`).
    Reads the data_dir's metadata only; writes nothing."""
    for field, path in (
        ("--workdir", workdir),
        ("config.dataset.data_dir", data.resolve_data_dir(config.dataset.data_dir)),
        ("config.init_from", config.init_from),
    ):
        if paths.is_cloud(path or ""):
            extras.require(
                "gcsfs", f"{field} {path!r} (on Cloud Storage)", "use a local or mounted path"
            )
    data.check_packages(config.dataset.name, config.dataset.data_dir)
    pretrained.check_packages(config.init_from)


def _say_finished(workdir: str, finished: dict) -> None:
    logging.info(
        "The run in %s already finished at step %s (test top-1 %.1f%%, %s). Its results, "
        "history and events are left as they are; pass --reevaluate to evaluate its final "
        "checkpoint again (nothing is written). A longer run needs a new --workdir "
        "(optionally --config.init_from=%s).",
        workdir,
        finished.get("steps"),
        100 * finished.get("test_top1", float("nan")),
        os.path.join(workdir, metrics.RESULTS_FILE),
        workdir,
    )


def _setup(config: ml_collections.ConfigDict, workdir: str, wall_start: float) -> Run:
    """Every split read end to end, then the mesh, model, optimiser, the state's shapes and
    shardings and the evaluation function. Writes nothing."""
    ds = config.dataset
    info = data.dataset_info(ds.name)
    sizes = {}
    for role, field in (
        ("train", "train_split"),
        ("validation", "eval_split"),
        ("test", "test_split"),
    ):
        sizes[role] = integrity.check_split(ds.name, ds[field], ds.data_dir, f"dataset.{field}")
    total_steps = num_train_steps(config, sizes["train"])
    optim.check_warmup(config.optim, total_steps)
    mesh = sharding.create_mesh(config.mesh.model_axis)
    model = models.create_model(
        config.model.name,
        num_classes=info.num_classes,
        img_size=config.image_size,
        nesting=config.model.nesting.to_dict(),
        **config.model.overrides.to_dict(),
    )
    tx, schedule = optim.create_optimizer(config.optim, total_steps)

    # Shapes and shardings come from an abstract init; the real init is jitted with those
    # out_shardings, so parameters are created directly where they live (pre-trained ones
    # included: `overlay` runs inside the jit, on every process alike).
    def init_state(taken):
        params_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
        params = steps.init_params(model, params_rng)
        if taken:
            params = pretrained.overlay(params, taken)
        return steps.create_train_state(params, tx, state_rng)

    abstract = jax.eval_shape(init_state, None)
    state_sharding = _state_shardings(abstract, mesh)
    # Compiled (and its compiler options probed) at the first call, not here: nothing compiles
    # before every refusal has had its chance.
    eval_fn = xla_options.step_jit(
        functools.partial(steps.eval_step, model=model, preprocess=_preprocess_fn(config, info)),
        in_shardings=(state_sharding.params, sharding.data_sharding(mesh)),
        out_shardings=sharding.replicated_sharding(mesh),
    )
    return Run(
        config=config,
        workdir=workdir,
        sizes=sizes,
        total_steps=total_steps,
        mesh=mesh,
        model=model,
        tx=tx,
        schedule=schedule,
        init_state=init_state,
        abstract=abstract,
        state_sharding=state_sharding,
        eval_fn=eval_fn,
        chrono=metrics.Chrono(),
        wall_start=wall_start,
    )


def _restore(run: Run, checkpointer: checkpointing.Checkpointer) -> steps.TrainState | None:
    """The newest readable checkpoint of the workdir, placed per the run's shardings."""
    try:
        return checkpointer.restore(
            jax.tree.map(
                lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                run.abstract,
                run.state_sharding,
            )
        )
    except checkpointing.CheckpointError:
        checkpointer.close()
        raise


def _reevaluate(run: Run) -> dict[str, Any]:
    """--reevaluate of a finished run: its final checkpoint on the validation and test
    splits, numbers to the terminal, nothing written."""
    checkpointer = checkpointing.Checkpointer(
        run.workdir, max_to_keep=run.config.max_checkpoints_to_keep
    )
    state = _restore(run, checkpointer)
    checkpointer.close()
    step = int(state.step)
    numbers = {}
    for split, name in (
        (run.config.dataset.eval_split, "eval"),
        (run.config.dataset.test_split, "test"),
    ):
        numbers[name] = run.evaluate(state.params, split)
        logging.info("Re-evaluated: %s", metrics.eval_line(step, name, numbers[name]))
    return {"step": step, **numbers}


def _restore_or_init(
    run: Run, lock: workdir_lib.Lock
) -> tuple[steps.TrainState, checkpointing.Checkpointer, dict | None]:
    """The run's first write (config.json, with what `init_from` loaded), then its state:
    restored from the newest checkpoint, else initialised (from `init_from` if given).
    Returns the state, the open checkpointer and the init_from record."""
    config, workdir = run.config, run.workdir
    taken, init_record = None, (workdir_lib.read_config(workdir) or {}).get(workdir_lib.INIT_RECORD)
    if config.init_from and not checkpointing.has_checkpoints(workdir):
        taken, init_record = pretrained.load(
            config.init_from, config.model.name, config.image_size, run.abstract.params
        )
    _prepare_workdir(workdir, config, init_record)
    lock.keep()
    checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=config.max_checkpoints_to_keep)
    state = _restore(run, checkpointer)
    if state is None:
        state = jax.jit(run.init_state, out_shardings=run.state_sharding)(taken)
    return state, checkpointer, init_record


def _start_lines(
    run: Run, num_params: int, start_step: int, init_record: dict | None
) -> dict[str, str]:
    """The `Training:` block printed when the loop starts."""
    config, ds, sizes = run.config, run.config.dataset, run.sizes
    epochs = run.total_steps * config.batch_size / sizes["train"]
    origin = ""
    if init_record:
        origin = f", from {init_record['path']}" + (
            f" step {init_record['step']}" if init_record.get("step") is not None else ""
        )
    return {
        "model": f"{config.model.name}, {num_params:,} parameters (table: "
        f"{os.path.join(run.workdir, metrics.PARAMETERS_FILE)})",
        "dataset": f"{ds.name}: train {ds.train_split!r} {sizes['train']:,}, validation "
        f"{ds.eval_split!r} {sizes['validation']:,}, test {ds.test_split!r} "
        f"{sizes['test']:,} images",
        "devices": f"{jax.device_count()} x {jax.devices()[0].platform} "
        f"({jax.process_count()} process(es))",
        "workdir": run.workdir,
        "run": (
            f"resumed from step {start_step} of {run.total_steps}"
            if start_step
            else f"fresh, {run.total_steps:,} steps of batch {config.batch_size} "
            f"({epochs:.1f} epochs)"
        )
        + origin,
    }


def _start_reporting(
    run: Run, state: steps.TrainState, start_step: int, init_record: dict | None
) -> metrics.Reporter:
    """The reporter (history trimmed to `start_step`, events, config), the parameter table
    and the `Training:` block."""
    config = run.config
    reporter = metrics.Reporter(
        run.workdir,
        run.total_steps,
        config.log_every_steps,
        config.batch_size,
        run.chrono,
        start_step=start_step,
    )
    reporter.write_config(config)
    num_params = reporter.log_parameters(state.params)
    reporter.log_start(_start_lines(run, num_params, start_step, init_record))
    return reporter


def _train(
    run: Run,
    state: steps.TrainState,
    checkpointer: checkpointing.Checkpointer,
    reporter: metrics.Reporter,
) -> tuple[steps.TrainState, int, bool]:
    """The loop from the state's step to the last: a step per batch; every interval the
    metrics are fetched, checked finite and logged; evaluations and checkpoints at their
    frequencies and at the last step; SIGTERM / Ctrl-C (or jax's preemption notice) saves
    and stops. Returns the final state, the step of the last checkpoint and whether the run
    was stopped early. Closes the checkpointer, whose last save has then completed."""
    config, mesh, ds = run.config, run.mesh, run.config.dataset
    start_step = last_saved = int(state.step)
    # With several processes, tells jax's preemption protocol where the run starts, so that a
    # SIGTERM that arrives while the steps compile stops the run at its first step.
    checkpointer.reached_preemption(start_step)
    train_iter = data.create_train_iterator(
        ds,
        config.augment,
        config.input,
        global_batch_size=config.batch_size,
        image_size=config.image_size,
        seed=config.seed,
        start_step=start_step,
    )
    info = data.dataset_info(ds.name)
    train_fn = jax.jit(
        functools.partial(
            steps.train_step,
            model=run.model,
            tx=run.tx,
            schedule=run.schedule,
            preprocess=_preprocess_fn(config, info),
            grad_accum_steps=config.optim.grad_accum_steps,
        ),
        in_shardings=(run.state_sharding, sharding.data_sharding(mesh)),
        out_shardings=(run.state_sharding, sharding.replicated_sharding(mesh)),
        donate_argnums=0,
        compiler_options=xla_options.step_compiler_options(),
    )
    validation = run.eval_batches(ds.eval_split)
    chrono = run.chrono
    pending: list[tuple[int, Any]] = []
    stop = checkpointing.StopSignal().install()
    preempted = False
    try:
        for step in range(start_step + 1, run.total_steps + 1):
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                host = next(train_iter)
                batch = sharding.global_batch(
                    {"image": host["image"], "label": host["label"]}, mesh
                )
                state, step_metrics = train_fn(state, batch)
            pending.append((step, step_metrics))
            if not chrono.started:  # The session's first step compiles: not timed.
                jax.block_until_ready(state)
                chrono.start(step)
            elif reporter.early_line_due(step):
                jax.block_until_ready(state)
                reporter.write_progress(step)

            preempted = stop.is_set() or checkpointer.reached_preemption(step)
            is_last = step == run.total_steps
            do_log = step % config.log_every_steps == 0 or is_last
            do_eval = step % config.eval_every_steps == 0 and not is_last
            do_save = step % config.checkpoint_every_steps == 0 or is_last or preempted
            if do_log or do_eval or do_save:
                values = [
                    (s, {k: float(v) for k, v in jax.device_get(m).items()}) for s, m in pending
                ]  # Fetching waits for the step: synchronised.
                pending.clear()
                _check_finite(values)
                if do_log:
                    means = {k: float(np.mean([v[k] for _, v in values])) for k in values[-1][1]}
                    means["learning_rate"] = values[-1][1]["learning_rate"]
                    reporter.write_train(step, means)
            if do_eval or do_save:
                jax.block_until_ready(state)
                chrono.pause()
                if do_save:
                    checkpointer.save(state, step)
                    last_saved = step
                if do_eval:
                    reporter.write_eval(
                        step, "eval", evaluate(run.eval_fn, state.params, validation, mesh)
                    )
                chrono.resume()
            if preempted:
                logging.warning(
                    "Stopped at step %d on request; checkpoint saved. Run the same "
                    "command again to resume.",
                    step,
                )
                break
        jax.block_until_ready(state)
        chrono.pause()
    finally:
        stop.uninstall()
        checkpointer.close()
    if preempted:
        reporter.close()
    return state, last_saved, preempted


def _test(
    run: Run,
    state: steps.TrainState,
    reporter: metrics.Reporter,
    start_step: int,
    last_saved: int,
    init_record: dict | None,
) -> dict[str, Any]:
    """The final test, results.json and the closing line."""
    config = run.config
    test = run.evaluate(state.params, config.dataset.test_split)
    final_step = int(state.step)
    reporter.write_eval(final_step, "test", test)
    timed_steps, timed_seconds = run.chrono.timed(final_step)
    results = {
        "test_top1": test["top1"],
        "test_top5": test["top5"],
        "test_loss": test["loss"],
        "test_examples": test["examples"],
        "num_params": sum(int(p.size) for p in jax.tree.leaves(state.params)),
        "steps": final_step,
        "resumed_from_step": start_step,
        "last_checkpoint_step": last_saved,
        "train_img_per_sec_per_device": (
            timed_steps * config.batch_size / timed_seconds / jax.device_count()
            if timed_seconds > 0
            else None
        ),
        "wall_time_s": time.time() - run.wall_start,
        "model": config.model.name,
        "dataset": config.dataset.name,
        "devices": jax.device_count(),
        "init_from": init_record,
    }
    reporter.write_results(results)
    reporter.close()
    logging.info(
        "Finished in %s: test top-1 %.2f%%, top-5 %.2f%% on %s images; results in %s",
        metrics.duration(results["wall_time_s"]),
        100 * test["top1"],
        100 * test["top5"],
        f"{test['examples']:,}",
        os.path.join(run.workdir, metrics.RESULTS_FILE),
    )
    return results
