"""`visualize`: attention maps and adjacent-layer head correlations of a run, as PNGs."""

import jax
import numpy as np
import pytest
from PIL import Image
from test_predict import TINY_TNT, make_run, random_params, write_images

from nested_tnt_jax import models, predict, visualize


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A fake run (scan layout, depth 3), its loaded form, an image and the sown logits."""
    workdir = tmp_path_factory.mktemp("run")
    make_run(workdir)
    image = write_images(tmp_path_factory.mktemp("images"))[0]
    run = predict.load_run(str(workdir))
    inputs = predict.model_inputs(predict.load_image(image, run)[None], run)
    return workdir, image, run, visualize.attention_logits(run.model, run.params, inputs)


def test_cli_writes_pngs_with_one_panel_per_layer_head_or_pair(setup, tmp_path, capsys):
    workdir, image, _, _ = setup
    out = tmp_path / "figures"
    assert visualize.main([f"--workdir={workdir}", f"--image={image}", f"--out={out}"]) == 0
    depth = TINY_TNT["depth"]
    expected = {
        "outer_attention.png": depth * TINY_TNT["num_heads_outer"],
        "inner_attention.png": depth * TINY_TNT["num_heads_inner"],
        "correlation_inner.png": depth - 1,
        "correlation_outer.png": depth - 1,
    }
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    for name, panels in expected.items():
        with Image.open(out / name) as png:
            png.verify()
        assert f"{out / name} ({panels} panels)" in printed


def test_logits_per_layer_and_rows_sum_to_one(setup):
    _, _, run, chains = setup
    model = run.model
    grid = model.img_size // model.patch_size
    words = models.layers.word_grid(model.patch_size, model.word_kernel, model.word_stride)
    assert [len(chains["outer"]), len(chains["inner"])] == [TINY_TNT["depth"]] * 2
    assert chains["outer"][0].shape == (1, TINY_TNT["num_heads_outer"], grid**2 + 1, grid**2 + 1)
    assert chains["inner"][0].shape == (grid**2, TINY_TNT["num_heads_inner"], words**2, words**2)
    for layers in chains.values():
        for logits in layers:
            np.testing.assert_allclose(visualize.softmax(logits).sum(-1), 1.0, rtol=1e-5)
    # Class token over patches plus its weight on itself is one distribution.
    cls = visualize.class_token_maps(chains["outer"], grid)
    self_weight = np.stack([visualize.softmax(l[0])[:, 0, 0] for l in chains["outer"]])
    np.testing.assert_allclose(cls.sum((2, 3)) + self_weight, 1.0, rtol=1e-5)
    # Each patch's tile of word weights sums to one, averaged over queries or from one word.
    for query in (None, words**2 - 1):
        maps = visualize.word_maps(chains["inner"], grid, words, query=query)
        tiles = maps.reshape(*maps.shape[:2], grid, words, grid, words).sum((3, 5))
        np.testing.assert_allclose(tiles, 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="does not exist"):
        visualize.word_maps(chains["inner"], grid, words, query=words**2)


def test_correlation_of_a_layer_with_itself_and_with_the_next(setup):
    _, _, _, chains = setup
    for layers in chains.values():
        same = visualize.head_correlation(layers[1], layers[1])
        np.testing.assert_allclose(np.diag(same), 1.0, rtol=1e-6)
        np.testing.assert_allclose(same, same.T, atol=1e-12)
        pairs = visualize.adjacent_correlations(layers)
        assert len(pairs) == len(layers) - 1
        assert all(np.all(np.abs(m) <= 1.0 + 1e-9) for m in pairs)
    # A head that copies another (up to scale and shift) correlates exactly +-1 with it.
    a = chains["outer"][0]
    b = np.concatenate([3.0 * a[:, 1:2] + 2.0, -a[:, :1]], axis=1)
    np.testing.assert_allclose(visualize.head_correlation(a, b)[[1, 0], [0, 1]], [1.0, -1.0],
                               rtol=1e-6)


def test_render_vit_from_params_has_no_inner_figure(tmp_path):
    model = models.create_model("vit_cifar_patch8_32", num_classes=10, embed_dim=16, depth=2,
                                num_heads=2, mlp_ratio=1.0)
    params = random_params(model, 0)
    images = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    written = visualize.render(model, params, images, str(tmp_path))
    assert {p.split("/")[-1]: n for p, n in written.items()} == {
        "outer_attention.png": 4, "correlation_outer.png": 1}
