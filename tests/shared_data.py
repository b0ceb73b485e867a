"""Where the tests find the shared, read-only CIFAR-10 (a TFDS data_dir).

By default `../shared/tfds` beside the repository; `NESTED_TNT_SHARED_TFDS` names another
place. One definition for the `shared_tfds` fixture (tests/conftest.py) and for
tests/cli_config.py, which the CLI loads in subprocesses (they inherit the variable).
"""

import os
import pathlib

ENV = "NESTED_TNT_SHARED_TFDS"
DEFAULT = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "tfds"


def shared_tfds() -> pathlib.Path:
    """The shared TFDS data_dir: $NESTED_TNT_SHARED_TFDS if set, else ../shared/tfds."""
    return pathlib.Path(os.environ.get(ENV) or DEFAULT)
