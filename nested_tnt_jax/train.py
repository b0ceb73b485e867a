"""The training loop: validate, init or restore, step, log, checkpoint, evaluate, report.

`train_and_evaluate(config, workdir)` is the library entry point (`main.py` only parses flags).
The config is checked before any compilation, data loading or write to `workdir`, so a
mistake costs seconds and leaves nothing behind.
"""

import functools
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nested_tnt_jax import checkpointing, data, metrics, models, optim, sharding, steps, xla_options

PyTree = Any


class ConfigError(ValueError):
    """A config the run refuses before doing any work; the message says what to change."""


class RunError(RuntimeError):
    """A run that cannot go on for a reason outside the program; the message says what to do."""


# Failures whose message is the whole explanation (bad data_dir, unwritable workdir or
# checkpoint, divergence): `main.py` prints them as one paragraph, without a traceback.
RUN_ERRORS = (RunError, checkpointing.CheckpointError, FloatingPointError, OSError)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError (one paragraph naming the field) for a config that cannot run.

    Checked: known model and dataset, image_size a multiple of the model's patch size, model
    overrides accepted by the model, batch sizes divisible over devices (and micro-batches),
    mesh.model_axis dividing the devices, optimiser and crop names, a positive length, an
    existing init_from. Unknown keys never get here: the locked ConfigDict refuses them.
    """
    def fail(message: str) -> None:
        raise ConfigError(message)

    if config.model.name not in models.list_models():
        fail(f"config.model.name is {config.model.name!r}, which is not a registered model. "
             f"Use one of: {', '.join(models.list_models())}.")
    if config.dataset.name not in data.DATASETS:
        fail(f"config.dataset.name is {config.dataset.name!r}, which the input pipeline does "
             f"not support. Use one of: {', '.join(sorted(data.DATASETS))}.")
    try:
        model = models.create_model(config.model.name, **config.model.overrides.to_dict())
    except (ValueError, TypeError) as e:
        fail(f"config.model.overrides is not accepted by {config.model.name!r}: {e}")
    if config.image_size <= 0 or config.image_size % model.patch_size:
        fail(f"config.image_size is {config.image_size}, which is not a positive multiple of "
             f"the patch size {model.patch_size} of {config.model.name!r}. Set image_size to a "
             f"multiple of {model.patch_size} (e.g. {max(1, config.image_size // model.patch_size) * model.patch_size}).")
    devices = jax.device_count()
    if config.mesh.model_axis < 1 or devices % config.mesh.model_axis:
        fail(f"config.mesh.model_axis is {config.mesh.model_axis}, which does not divide the "
             f"{devices} devices. Set it to a divisor of {devices} (1: replicated parameters).")
    data_devices = devices // config.mesh.model_axis
    accum = config.optim.grad_accum_steps
    if accum < 1:
        fail(f"config.optim.grad_accum_steps is {accum}; set it to 1 (no accumulation) or more.")
    unit = math.lcm(data_devices, jax.process_count()) * accum
    if config.batch_size <= 0 or config.batch_size % unit:
        fail(f"config.batch_size is {config.batch_size}, which does not split into "
             f"{accum} micro-batch(es) over {data_devices} data-parallel device(s) and "
             f"{jax.process_count()} process(es): it must be a positive multiple of {unit}. "
             f"Set batch_size to e.g. {max(1, round(config.batch_size / unit)) * unit}.")
    eval_unit = math.lcm(data_devices, jax.process_count())
    if config.eval_batch_size < 0 or _eval_batch_size(config) % eval_unit:
        fail(f"config.eval_batch_size is {config.eval_batch_size} (0 means batch_size), which "
             f"must be a multiple of {eval_unit} (the data-parallel devices and processes).")
    if config.optim.name not in optim.OPTIMIZERS:
        fail(f"config.optim.name is {config.optim.name!r}; use one of "
             f"{', '.join(optim.OPTIMIZERS)}.")
    if config.augment.crop not in ("pad", "random_resized"):
        fail(f"config.augment.crop is {config.augment.crop!r}; use 'pad' (CIFAR pad-and-crop) "
             "or 'random_resized' (random resized crop).")
    if config.num_train_steps <= 0 and config.num_epochs <= 0:
        fail("Both config.num_train_steps and config.num_epochs are <= 0, so the run has no "
             "length. Set num_epochs > 0, or num_train_steps > 0 (which overrides epochs).")
    for field in ("checkpoint_every_steps", "eval_every_steps", "log_every_steps"):
        if config[field] <= 0:
            fail(f"config.{field} is {config[field]}; set it to a positive number of steps.")
    if config.init_from and not os.path.exists(config.init_from):
        fail(f"config.init_from is {config.init_from!r}, which does not exist. Point it at a "
             "finished run's workdir or a timm checkpoint file, or set it to '' to train "
             "from scratch.")


def _eval_batch_size(config: ml_collections.ConfigDict) -> int:
    return config.eval_batch_size or config.batch_size


def _host_image_size(config: ml_collections.ConfigDict) -> int:
    return config.input.host_image_size or config.image_size


def num_train_steps(config: ml_collections.ConfigDict, train_examples: int) -> int:
    """`num_train_steps` when > 0, else `num_epochs` worth of full batches (at least 1)."""
    if config.num_train_steps > 0:
        return config.num_train_steps
    return max(1, math.ceil(config.num_epochs * train_examples / config.batch_size))


def _preprocess_fn(config: ml_collections.ConfigDict, info: data.DatasetInfo):
    """`data.preprocess` bound to this run's dataset and augmentation: (batch, rng, train)."""

    def fn(batch, rng, train):
        return data.preprocess(
            batch, rng, train=train, image_size=config.image_size,
            num_classes=info.num_classes, mixup_alpha=config.augment.mixup_alpha,
            cutmix_alpha=config.augment.cutmix_alpha,
            label_smoothing=config.augment.label_smoothing, mean=info.mean, std=info.std,
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
        out = eval_fn(params, sharding.global_batch(
            {k: batch[k] for k in ("image", "label", "mask")}, mesh))
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


def _prepare_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Creates `workdir` and writes `config.json` (process 0).

    This is the run's first write, made after every check that can refuse the config or the
    data, so that a refused run leaves nothing behind; and it comes before any compilation, so
    that an unwritable workdir fails in seconds.
    """
    try:
        os.makedirs(workdir, exist_ok=True)
        if jax.process_index() == 0:
            metrics.write_config_file(workdir, config)
    except OSError as e:
        raise RunError(
            f"The workdir {workdir!r} cannot be written ({e.strerror or e}). Pass a --workdir "
            "that you can write to, or fix its permissions or free disk space.") from e


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
    """Trains `config` in `workdir` (resuming if it holds a checkpoint), then tests.

    Returns the results dict also written to `workdir/results.json`, or None when a SIGTERM
    stopped the run (after saving a checkpoint to resume from). Errors that explain themselves
    are `RUN_ERRORS` (and ConfigError, raised before anything is read or written).
    """
    validate_config(config)
    wall_start = time.time()
    info = data.dataset_info(config.dataset.name)
    mesh = sharding.create_train_mesh(config.mesh.model_axis)
    model = models.create_model(config.model.name, num_classes=info.num_classes,
                                img_size=config.image_size, **config.model.overrides.to_dict())
    ds = config.dataset
    total_steps = num_train_steps(config, data.split_size(ds.name, ds.train_split, ds.data_dir))
    tx, schedule = optim.create_optimizer(config.optim, total_steps)

    def eval_batches(split: str) -> data.EvalBatches:
        return data.create_eval_batches(
            ds.name, split, data_dir=ds.data_dir, global_batch_size=_eval_batch_size(config),
            host_image_size=_host_image_size(config), crop=config.augment.crop,
            worker_count=config.input.worker_count, prefetch=config.input.prefetch,
            cache_decoded=config.input.cache_decoded,
        )

    # Shapes and shardings come from an abstract init; the real init is jitted with those
    # out_shardings, so parameters are created directly where they live (pre-trained ones
    # included: `overlay` runs inside the jit, on every process alike).
    def init_state(pretrained):
        params_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
        params = steps.init_params(model, params_rng)
        if pretrained:
            params = checkpointing.overlay(params, pretrained)
        return steps.create_train_state(params, tx, state_rng)

    abstract = jax.eval_shape(init_state, None)
    state_sharding = _state_shardings(abstract, mesh)
    pretrained = None
    if config.init_from and not checkpointing.has_checkpoints(workdir):
        pretrained = checkpointing.load_pretrained(
            config.init_from, config.model.name, config.image_size, abstract.params)
    _prepare_workdir(workdir, config)
    reporter = metrics.Reporter(workdir, total_steps, config.log_every_steps)
    reporter.write_config(config)
    checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=config.max_checkpoints_to_keep)
    try:
        state = checkpointer.restore(jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract, state_sharding))
    except checkpointing.CheckpointError:
        checkpointer.close()
        raise
    if state is not None:
        logging.info("Resumed from step %d of %s", int(state.step), checkpointer.directory)
    else:
        state = jax.jit(init_state, out_shardings=state_sharding)(pretrained)
    start_step = int(state.step)
    # With several processes, tells jax's preemption protocol where the run starts, so that a
    # SIGTERM that arrives while the steps compile stops the run at its first step.
    checkpointer.reached_preemption(start_step)
    num_params = reporter.log_parameters(state.params)
    train_iter = data.create_train_iterator(
        ds.name, ds.train_split, data_dir=ds.data_dir, global_batch_size=config.batch_size,
        host_image_size=_host_image_size(config), seed=config.seed, crop=config.augment.crop,
        pad=config.augment.pad, flip=config.augment.flip,
        worker_count=config.input.worker_count, prefetch=config.input.prefetch,
        cache_decoded=config.input.cache_decoded, start_step=start_step,
    )

    preprocess = _preprocess_fn(config, info)
    replicated = sharding.replicated_sharding(mesh)
    batch_sharding = sharding.data_sharding(mesh)
    compiler_options = xla_options.step_compiler_options()
    train_fn = jax.jit(
        functools.partial(steps.train_step, model=model, tx=tx, schedule=schedule,
                          preprocess=preprocess, grad_accum_steps=config.optim.grad_accum_steps),
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=0,
        compiler_options=compiler_options,
    )
    eval_fn = jax.jit(
        functools.partial(steps.eval_step, model=model, preprocess=preprocess),
        in_shardings=(state_sharding.params, batch_sharding),
        out_shardings=replicated,
        compiler_options=compiler_options,
    )
    validation = eval_batches(ds.eval_split)

    last_saved = start_step
    pending: list[tuple[int, Any]] = []
    stop = checkpointing.StopSignal().install()
    timed_steps, timed_seconds, timer = 0, 0.0, None
    preempted = False
    try:
        for step in range(start_step + 1, total_steps + 1):
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                host = next(train_iter)
                batch = sharding.global_batch(
                    {"image": host["image"], "label": host["label"]}, mesh)
                state, step_metrics = train_fn(state, batch)
            pending.append((step, step_metrics))
            reporter.progress(step)
            if timer is None:  # The first step of a session compiles: not timed.
                jax.block_until_ready(state)
                timer = time.perf_counter()
            else:
                timed_steps += 1

            preempted = stop.is_set() or checkpointer.reached_preemption(step)
            is_last = step == total_steps
            do_log = step % config.log_every_steps == 0 or is_last
            do_eval = step % config.eval_every_steps == 0 and not is_last
            do_save = step % config.checkpoint_every_steps == 0 or is_last or preempted
            if do_log or do_eval or do_save:
                values = [(s, {k: float(v) for k, v in jax.device_get(m).items()})
                          for s, m in pending]
                pending.clear()
                _check_finite(values)
                if do_log:
                    reporter.write_train(step, {
                        k: float(np.mean([v[k] for _, v in values])) for k in values[-1][1]})
            if do_eval or do_save:
                jax.block_until_ready(state)
                timed_seconds += time.perf_counter() - timer
                if do_save:
                    checkpointer.save(state, step)
                    last_saved = step
                if do_eval:
                    reporter.write_eval(step, "eval", evaluate(eval_fn, state.params, validation,
                                                               mesh))
                timer = time.perf_counter()
            if preempted:
                logging.warning("Stopped at step %d on request; checkpoint saved.", step)
                break
        if timer is not None and not preempted:
            jax.block_until_ready(state)
            timed_seconds += time.perf_counter() - timer
    finally:
        stop.uninstall()
        checkpointer.close()
    if preempted:
        reporter.close()
        return None

    test = evaluate(eval_fn, state.params, eval_batches(ds.test_split), mesh)
    final_step = int(state.step)
    reporter.write_eval(final_step, "test", test)
    images = timed_steps * config.batch_size
    results = {
        "test_top1": test["top1"],
        "test_top5": test["top5"],
        "test_loss": test["loss"],
        "test_examples": test["examples"],
        "num_params": int(num_params),
        "steps": final_step,
        "resumed_from_step": start_step,
        "last_checkpoint_step": last_saved,
        "train_img_per_sec_per_device": (
            images / timed_seconds / jax.device_count() if timed_seconds > 0 else None),
        "wall_time_s": time.time() - wall_start,
        "model": config.model.name,
        "dataset": ds.name,
        "devices": jax.device_count(),
    }
    reporter.write_results(results)
    reporter.close()
    logging.info("Results: %s", results)
    return results
