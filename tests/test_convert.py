"""timm -> Flax conversion: logits parity with timm, param counts, adaptation, errors, files."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from nested_tnt_jax.convert import (
    _OFFICIAL_RENAMES,
    load_checkpoint_file,
    resample_pos_embed,
    timm_to_flax,
)
from nested_tnt_jax.models import create_model, params_to_scan


def _perturbed_timm(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A random timm model whose biases, norms and embeddings are moved off their default init,
    so a converter that dropped or mis-mapped one of them would change the logits."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    with torch.no_grad():
        for key, p in model.named_parameters():
            if p.ndim == 1 or "pos" in key or "cls" in key:
                p.add_(0.2 * torch.randn_like(p))
    return model


def _nhwc(x: torch.Tensor) -> jax.Array:
    return jnp.asarray(x.numpy().transpose(0, 2, 3, 1))


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(
    "name", ["tnt_s_patch16_224", "tnt_s_legacy_patch16_224", "vit_small_patch16_224"]
)
def test_converted_timm_model_gives_the_same_logits(name):
    ref_model = _perturbed_timm(name)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = ref_model(x).numpy()
    params = timm_to_flax(ref_model.state_dict(), name)
    out = jax.jit(lambda p, x: create_model(name).apply({"params": p}, x))(params, _nhwc(x))
    assert np.abs(np.asarray(out) - ref).max() <= 1e-4


@pytest.mark.parametrize(
    "name",
    [
        "vit_tiny_patch16_224",
        "vit_small_patch16_224",
        "vit_base_patch16_224",
        "tnt_s_patch16_224",
        "tnt_s_legacy_patch16_224",
        "tnt_b_patch16_224",
    ],
)
def test_param_count_equals_timm(name):
    model = create_model(name)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    with torch.device("meta"):
        ref = timm.create_model(name, pretrained=False)
    assert _count(shapes["params"]) == sum(p.numel() for p in ref.parameters())


def test_resampling_matches_timm():
    posemb = np.random.default_rng(0).normal(size=(1, 197, 8)).astype(np.float32)
    for side in (4, 20):
        ref = resample_abs_pos_embed(torch.from_numpy(posemb), (side, side), num_prefix_tokens=1)
        np.testing.assert_allclose(
            resample_pos_embed(posemb, side * side + 1), ref.numpy(), atol=1e-5
        )


def test_tnt_into_nested_tnt_at_another_size_and_class_count():
    """TNT weights -> Nested-TNT at 64 px with 10 classes: position embedding resampled as timm
    does, fresh head and mixers; with the chains off it reproduces timm's model at 64 px."""
    name = "tnt_s_patch16_224"
    src = _perturbed_timm(name)
    params = timm_to_flax(src.state_dict(), "nested_tnt_s_patch16_224", num_classes=10, img_size=64)
    assert params["patch_pos"].shape == (1, 17, 384) and params["head"]["kernel"].shape == (384, 10)
    assert "mixer" in params["blocks_1"]["attn_in"] and "mixer" in params["blocks_11"]["attn_out"]

    # timm's own adaptation: same checkpoint loaded into a 64 px model via its filter.
    ref_model = timm.create_model(name, pretrained=False, img_size=64, num_classes=10).eval()
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith("head")}
    sd["patch_pos"] = resample_abs_pos_embed(sd["patch_pos"], (4, 4), num_prefix_tokens=1)
    sd["head.weight"] = torch.from_numpy(np.asarray(params["head"]["kernel"]).T.copy())
    sd["head.bias"] = torch.from_numpy(np.asarray(params["head"]["bias"]).copy())
    ref_model.load_state_dict(sd)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = ref_model(x).numpy()
    plain = create_model(
        "nested_tnt_s_patch16_224",
        num_classes=10,
        img_size=64,
        nest_inner=False,
        nest_outer=False,
        scan_blocks=True,
    )
    out = jax.jit(plain.apply)({"params": params_to_scan(params)}, _nhwc(x))
    assert np.abs(np.asarray(out) - ref).max() <= 1e-4


def test_official_tnt_names_are_accepted():
    """The official TNT release's keys (outer_pos, inner_attn, ... and a (1, words, C) inner_pos)
    convert like timm's."""
    src = _perturbed_timm("tnt_s_patch16_224")
    timm_sd = src.state_dict()
    official = {"outer_tokens": torch.zeros(1)}
    for key, value in timm_sd.items():
        for old, new in reversed(_OFFICIAL_RENAMES):
            key = key.replace(new, old) if not key.startswith(old) else key
        official[key] = value
    official["inner_pos"] = timm_sd["pixel_pos"].flatten(2).transpose(1, 2)
    assert "outer_pos" in official and "blocks.0.inner_attn.qk.weight" in official
    ours = timm_to_flax(official, "tnt_s_patch16_224")
    jax.tree.map(np.testing.assert_array_equal, ours, timm_to_flax(timm_sd, "tnt_s_patch16_224"))


def test_checkpoint_of_another_model_is_rejected_clearly():
    with torch.device("meta"):
        vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    sd = {k: np.zeros(v.shape, np.float32) for k, v in vit.state_dict().items()}
    with pytest.raises(
        ValueError,
        match=r"does not fit model 'tnt_s_patch16_224'.*missing: "
        r".*unexpected: blocks\.0\.attn\.proj\.bias",
    ):
        timm_to_flax(sd, "tnt_s_patch16_224")
    with pytest.raises(
        ValueError,
        match=r"shape mismatches .*blocks\.0\.attn\.qkv\.weight \(192, 576\) "
        r"vs model \(384, 1152\)",
    ):
        timm_to_flax(sd, "vit_small_patch16_224")


def test_load_checkpoint_file_reads_pth_and_safetensors(tmp_path):
    from safetensors.numpy import save_file

    state = {"a.weight": torch.randn(3, 2), "b": torch.arange(4.0)}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "c.pth")
    save_file({k: v.numpy() for k, v in state.items()}, str(tmp_path / "c.safetensors"))
    for fname in ("c.pth", "c.safetensors"):
        loaded = load_checkpoint_file(tmp_path / fname)
        assert sorted(loaded) == sorted(state)
        for key, value in state.items():
            np.testing.assert_array_equal(loaded[key], value.numpy())
