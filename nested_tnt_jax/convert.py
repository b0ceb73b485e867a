"""The older name of `nested_tnt_jax.models.convert`, the timm converter beside the models.

Importing it gives that very module, so `from nested_tnt_jax import convert` and
`from nested_tnt_jax.convert import timm_to_flax` keep working.
"""

import sys

from nested_tnt_jax.models import convert

sys.modules[__name__] = convert
