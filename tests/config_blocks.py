"""The `dataset`, `augment` and `input` blocks of a run config, as the data entry points take
them, for tests that call the pipeline directly."""

from configs import common
from nested_tnt_jax import data


def blocks(name, data_dir, **fields):
    """(dataset, augment, input) for dataset `name` read from `data_dir`: splits and crop from
    its table entry, everything else the configs' defaults, then `fields` (each a field of one
    of the three blocks) set."""
    config = common.base_config()
    info = data.dataset_info(name)
    config.dataset.update(
        name=name,
        data_dir=str(data_dir),
        train_split=info.train_split,
        eval_split=info.eval_split,
        test_split=info.test_split,
    )
    config.augment.crop = info.crop
    chosen = (config.dataset, config.augment, config.input)
    for field, value in fields.items():
        owners = [block for block in chosen if field in block]
        if not owners:
            raise KeyError(f"{field!r} is not a field of the dataset, augment or input block")
        owners[0][field] = value
    return chosen
