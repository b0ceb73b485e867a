"""A model family is one file: a toy family kept outside the tree, named by
`NESTED_TNT_JAX_FAMILIES`, registers its variant and its config choice and trains through the
real CLI, with no edit in the tree; the tools find what they need of it in its declaration."""

import json
import subprocess
import sys
import textwrap

from nested_tnt_jax import models
from nested_tnt_jax.models import registry
import shared_data
from tests.cli_runs import ROOT, environment

TOY_FAMILY = textwrap.dedent('''
    """A toy family: patch embedding, one nested attention layer per block, a linear head."""

    import flax.linen as nn
    import jax.numpy as jnp

    from nested_tnt_jax.models import registry
    from nested_tnt_jax.models.attention import Attention
    from nested_tnt_jax.models.layers import dense, stack_blocks
    from nested_tnt_jax.models.nesting import Nesting


    class ToyBlock(nn.Module):
        dim: int
        nesting: Nesting = Nesting()
        attention_core: str = "auto"
        deterministic: bool = True

        @nn.compact
        def __call__(self, carry, drop_path):
            x, logits = carry
            y, logits = Attention(self.dim, 2, nesting=self.nesting, chain="outer",
                                  deterministic=self.deterministic, core=self.attention_core,
                                  name="attn")(x, logits)
            return (x + y, logits), None


    class Toy(nn.Module):
        img_size: int = 32
        patch_size: int = 8
        num_classes: int = 10
        embed_dim: int = 16
        depth: int = 2
        nesting: Nesting = Nesting()
        attention_core: str = "auto"
        drop_path_rate: float = 0.0
        dtype: str = "float32"

        @nn.compact
        def __call__(self, images, *, train=False):
            p = self.patch_size
            x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), name="embed")(images)
            x = x.reshape(x.shape[0], -1, self.embed_dim)
            x, _ = stack_blocks(ToyBlock, dict(dim=self.embed_dim, nesting=self.nesting,
                                               attention_core=self.attention_core,
                                               deterministic=not train),
                                (x, None), [0.0] * self.depth, scan=False, remat=False)
            return dense(self.num_classes, "head", jnp.float32)(x.mean(axis=1))


    FAMILY = registry.register_family(registry.Family(
        name="toy", module=Toy, chains={"attn": "outer"},
        heads=lambda model: {"outer": 2}, chain_words={"outer": "attention (between patches)"}))
    registry.register_model("toy_32", FAMILY)
    registry.register_model("nested_toy_32", FAMILY, nesting=Nesting(outer=True))
    registry.register_choice("nested_toy", paper="nested_toy_32", cpu="nested_toy_32")
''')


def test_a_family_in_one_file_outside_the_tree_trains_through_the_cli(tmp_path, tmp_path_factory):
    family_file = tmp_path / "toy_family.py"
    family_file.write_text(TOY_FAMILY)
    workdir = tmp_path / "run"
    env = dict(environment(tmp_path_factory), NESTED_TNT_JAX_FAMILIES=str(family_file))
    cmd = [
        sys.executable,
        "-m",
        "nested_tnt_jax.main",
        "--config=configs/cifar10.py:model=nested_toy,cpu,steps=3",
        f"--workdir={workdir}",
        f"--config.dataset.data_dir={shared_data.shared_tfds()}",
        "--config.dataset.train_split=train[:256]",
        "--config.dataset.eval_split=train[256:288]",
        "--config.dataset.test_split=test[:32]",
        "--config.batch_size=16",
        "--config.input.cache_decoded=False",
        "--config.model.nesting.mixer=False",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["steps"] == 3 and results["test_examples"] == 32
    recorded = json.loads((workdir / "config.json").read_text())["model"]
    assert recorded["name"] == "nested_toy_32"
    assert recorded["nesting"]["outer"] is True and recorded["nesting"]["mixer"] is False


def test_the_built_in_families_declare_what_the_tools_read():
    for family in registry.families():
        for name in models.list_models():
            if registry.lookup(name)[0] is family:
                model = models.create_model(name)
                assert models.family_of(model) is family
                assert set(family.heads(model)) == set(family.chains.values())
                assert set(family.chain_words) >= set(family.chains.values())
                assert ("inner" in family.chain_names) == (family.word_grid is not None)
    for choice in registry.choices().values():
        assert set(choice.references) <= set(registry.choices())
