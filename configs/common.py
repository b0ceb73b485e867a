"""Shared config pieces: the full field set, the `:arguments`, the model choice, the end.

Every field a user can override lives in `base_config`, with a neutral default, so that
`--config.x.y=...` on any dataset config accepts the same keys and a typo is refused by the
locked ConfigDict. Each `configs/<dataset>.py` starts from `model_config` (fields, dataset,
model), sets its setup's values in its own body, and ends with `finish`.
"""

import ml_collections

from nested_tnt_jax import models
from nested_tnt_jax.data import dataset_info


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses `key=value,flag` (the part after `:` in `configs/x.py:...`) into a ConfigDict.

    A bare `flag` means `flag=True`. Values are converted to the type of the default, so
    `defaults` names every accepted key; anything else is refused with the accepted list.
    """
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in defaults:
            raise ValueError(
                f"Unknown config argument {key!r} in {arg!r}. The accepted arguments are "
                f"{', '.join(sorted(defaults))}, written as key=value or a bare flag, "
                "separated by commas, e.g. `configs/cifar10.py:model=nested_tnt,cpu`."
            )
        kind = type(defaults[key])
        if not _:
            out[key] = True
        elif kind is bool:
            out[key] = value.lower() in ("1", "true", "yes")
        else:
            out[key] = kind(value)
    return out


def base_config() -> ml_collections.ConfigDict:
    """Every field, with neutral defaults; dataset configs fill in the setup."""
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()
    c.model.name = ""
    # The nesting spec (`models.Nesting`): which attention chains carry their logits (`inner`:
    # TNT's words, `outer`: TNT's sentences and ViT's tokens), the head mixer, its width ratio
    # and the logit noise. Filled from the registered model, so each ablation is one flag,
    # e.g. `--config.model.nesting.inner=False`.
    c.model.nesting = ml_collections.ConfigDict(models.Nesting().to_dict())
    # Keyword overrides for `create_model` (drop_path_rate, dtype, ...). Left open
    # (unlocked): its keys are the model's keyword arguments, checked by `create_model`.
    c.model.overrides = ml_collections.ConfigDict()
    # How attention writes QK^T and AV (`attention.CORE_CHOICES`), here so that the command
    # line can ablate it; "auto" picks per backend and head width (`nested_tnt_jax/ops`).
    c.model.overrides.attention_core = "auto"

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = ""
    c.dataset.data_dir = ml_collections.FieldReference(None, field_type=str)
    # Splits and crop default to the dataset's entry in `nested_tnt_jax.data.DATASETS` (CIFAR:
    # train[:98%] / train[98%:] for validation / test), filled in by `model_config`.
    c.dataset.train_split = ""
    c.dataset.eval_split = ""
    c.dataset.test_split = ""

    c.input = ml_collections.ConfigDict()
    c.input.worker_count = 0
    c.input.prefetch = 2
    # Size of the uint8 images the host ships (0: image_size). CIFAR ships its native 32 px
    # and the device upsamples bicubically to image_size, cutting host work and transfer.
    c.input.host_image_size = 0
    # Read each split into memory, decoded, before the first batch (data.pipeline's
    # DecodedSource): for small-image datasets whose decoding would otherwise compete with the
    # step for the host's CPU (CIFAR-10 train: ~150 MB, ~17 s).
    c.input.cache_decoded = False

    c.augment = ml_collections.ConfigDict()
    c.augment.crop = "pad"
    c.augment.pad = 4
    c.augment.flip = True
    c.augment.mixup_alpha = 0.0
    c.augment.cutmix_alpha = 0.0
    c.augment.label_smoothing = 0.0

    c.image_size = 224
    c.batch_size = 128
    c.eval_batch_size = 0  # 0: same as batch_size.
    c.num_epochs = 1.0
    c.num_train_steps = -1
    c.seed = 0
    c.init_from = ""

    c.checkpoint_every_steps = 1000
    c.max_checkpoints_to_keep = 2
    # A gs:// workdir's lock is taken over after this many seconds without its holder's
    # heartbeat (`workdir.CloudLock`); local workdirs use a file lock, which needs none.
    c.lock_timeout_s = 300.0
    c.eval_every_steps = 1000
    c.log_every_steps = 50

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"
    c.optim.learning_rate = 0.1
    c.optim.momentum = 0.9
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.weight_decay = 1e-4
    c.optim.warmup_steps = 500
    c.optim.grad_clip_norm = 1.0
    c.optim.grad_accum_steps = 1

    # Device mesh: `model_axis` > 1 shards parameters and optimizer state over a second mesh
    # axis of that size (FSDP style); batches are split over all devices either way.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.model_axis = 1
    return c


def model_config(
    dataset: str, arg: str | None, *, has_cpu: bool = True
) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """(config, arguments) for `dataset` before its setup: every field at its neutral default,
    the dataset's splits and crop from its table entry, the chosen model with its registered
    nesting spec. The dataset file then sets its setup's values and calls `finish`.

    Arguments (`configs/<dataset>.py:<arguments>`): `model=<choice>` (a choice a model family
    registers, `models.registry`: vit, tnt, nested_tnt, nested_vit), `cpu` (the CPU setup,
    where the dataset has one), `steps=N`, `batch=N` (see `finish`).
    """
    args = parse_arg(arg, model="nested_tnt", cpu=False, steps=0, batch=0)
    choices = models.registry.choices()
    if args.model not in choices:
        raise ValueError(
            f"Config argument model={args.model!r} is not a model family. Use one of "
            f"{', '.join(choices)}, e.g. `configs/{dataset}.py:model=tnt`."
        )
    if args.cpu and not has_cpu:
        raise ValueError(
            f"configs/{dataset}.py has no `cpu` variant; drop the flag and use the paper setup."
        )
    c = base_config()
    c.dataset.name = dataset
    info = dataset_info(dataset)
    c.dataset.train_split = info.train_split
    c.dataset.eval_split = info.eval_split
    c.dataset.test_split = info.test_split
    c.augment.crop = info.crop
    choice = choices[args.model]
    c.model.name = choice.cpu if args.cpu else choice.paper
    spec = models.model_config(c.model.name)[1].get("nesting", models.Nesting())
    c.model.nesting.update(spec.to_dict())
    return c, args


def nests(c: ml_collections.ConfigDict) -> bool:
    """Whether the config's model nests any attention chain."""
    return any(c.model.nesting[chain] for chain in models.nesting.CHAINS)


def finish(
    c: ml_collections.ConfigDict, args: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """Applies the `steps=N` and `batch=N` arguments and locks the config (its model
    overrides stay open: their keys are the model's fields, checked by `create_model`).

    `steps=N` sets num_train_steps; a setup warmup that would not end before the run does
    (warmup_steps >= N) becomes a tenth of the run, N // 10, so any N >= 1 trains. A warmup that
    fits is kept, so every run recorded with `steps=N` trains as it did. `batch=N` sets
    batch_size.
    """
    if args.steps:
        c.num_train_steps = args.steps
        if c.optim.warmup_steps >= args.steps:
            c.optim.warmup_steps = args.steps // 10
    if args.batch:
        c.batch_size = args.batch
    c.lock()
    c.model.overrides.unlock()
    return c
