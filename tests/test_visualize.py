"""`visualize`: attention over the image and adjacent-layer head correlations, as PNGs."""

import jax
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image
from test_predict import (
    TINY_TNT,
    make_run,
    random_params,
    run_cli,
    warning_lines,
    write_images,
)

from nested_tnt_jax import errors, models, runs, visualize

PNGS = (
    "outer_attention.png",
    "inner_attention.png",
    "correlation_inner.png",
    "correlation_outer.png",
)


@pytest.fixture(scope="module")
def setup(shared_tfds, tmp_path_factory):
    """A fake run (scan layout, depth 3), its loaded form, an image and the sown logits."""
    workdir = tmp_path_factory.mktemp("run")
    make_run(workdir)
    image = write_images(tmp_path_factory.mktemp("images"), shared_tfds)[0]
    run = runs.load_run(str(workdir))
    inputs = run.inputs(run.view(image)[None])
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
    assert printed.startswith(f"{workdir}: nested_tnt_cifar_patch8_32, checkpoint at step 1\n")
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    for name, panels in expected.items():
        with Image.open(out / name) as png:
            png.verify()
        assert f"{out / name} ({panels} panels)" in printed


def test_layer_and_head_selection(setup, tmp_path, capsys):
    workdir, image, _, _ = setup
    out = tmp_path / "some"
    assert (
        visualize.main(
            [
                f"--workdir={workdir}",
                f"--image={image}",
                f"--out={out}",
                "--layers=1,3",
                "--heads=2",
                "--query_word=16",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    # Two layers x one head; the pairs that start at a chosen layer and have a next one.
    for name, panels in zip(PNGS, (2, 2, 1, 1)):
        assert f"{out / name} ({panels} panels)" in printed
    assert visualize.parse_selection("3,1-2,2", 4, "layers") == [2, 0, 1]
    assert visualize.parse_selection("", 4, "layers") is None


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--layers=4", "it has 3 layers, numbered 1..3"),
        ("--layers=2-x", "it has 3 layers"),
        ("--heads=3", "it has 2 heads"),
        ("--query_word=17", "query word 17 does not exist: a patch has 16 words"),
    ],
)
def test_bad_selection_is_one_paragraph_and_writes_nothing(setup, tmp_path, capsys, flag, message):
    workdir, image, _, _ = setup
    out = tmp_path / "none"
    args = [f"--workdir={workdir}", f"--image={image}", f"--out={out}", flag]
    with pytest.raises(SystemExit) as exit_:
        visualize.main(args)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and message in captured.err
    assert captured.err.count("\n") == 1 and not out.exists()


def test_unreadable_image_is_an_error_on_stderr(setup, tmp_path, capsys):
    workdir, _, _, _ = setup
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(SystemExit) as exit_:
        visualize.main([f"--workdir={workdir}", f"--image={bad}", f"--out={tmp_path / 'x'}"])
    assert exit_.value.code == 2 and not (tmp_path / "x").exists()
    assert capsys.readouterr().err.startswith(f"error: cannot read {str(bad)!r} as an image")


def test_logits_per_layer_and_rows_sum_to_one(setup):
    _, _, run, chains = setup
    model = run.model
    grid = model.img_size // model.patch_size
    words = models.tnt.word_grid(model.patch_size, model.word_kernel, model.word_stride)
    assert [len(chains["outer"]), len(chains["inner"])] == [TINY_TNT["depth"]] * 2
    assert chains["outer"][0].shape == (1, TINY_TNT["num_heads_outer"], grid**2 + 1, grid**2 + 1)
    assert chains["inner"][0].shape == (grid**2, TINY_TNT["num_heads_inner"], words**2, words**2)
    for layers in chains.values():
        for logits in layers:
            np.testing.assert_allclose(visualize.softmax(logits).sum(-1), 1.0, rtol=1e-5)
    # Class token over patches plus its weight on itself is one distribution.
    cls = visualize.class_token_maps(chains["outer"], grid)
    self_weight = np.stack([visualize.softmax(layer[0])[:, 0, 0] for layer in chains["outer"]])
    np.testing.assert_allclose(cls.sum((2, 3)) + self_weight, 1.0, rtol=1e-5)
    # Each patch's tile of word weights sums to one, averaged over queries or from one word.
    for query in (None, words**2 - 1):
        maps = visualize.word_maps(chains["inner"], grid, words, query=query)
        tiles = maps.reshape(*maps.shape[:2], grid, words, grid, words).sum((3, 5))
        np.testing.assert_allclose(tiles, 1.0, rtol=1e-5)
    with pytest.raises(errors.ConfigError, match="does not exist"):
        visualize.word_maps(chains["inner"], grid, words, query=words**2)


def test_word_maps_put_each_patch_and_word_where_it_lies(setup):
    """A patch's word attention lands in that patch's square, word (i, j) at row i, column j."""
    _, _, run, chains = setup
    model = run.model
    grid = model.img_size // model.patch_size
    words = models.tnt.word_grid(model.patch_size, model.word_kernel, model.word_stride)
    weights = visualize.softmax(chains["inner"][0])  # (patches, heads, query words, words)
    maps = visualize.word_maps(chains["inner"][:1], grid, words, query=0)[0]
    patch, word = grid + 1, words + 2  # patch (1, 1), word (1, 2)
    np.testing.assert_allclose(maps[:, words + 1, words + 2], weights[patch, :, 0, word])


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
    np.testing.assert_allclose(
        visualize.head_correlation(a, b)[[1, 0], [0, 1]], [1.0, -1.0], rtol=1e-6
    )


@pytest.mark.parametrize("name", ["vit_cifar_patch8_32", "nested_vit_cifar_patch8_32"])
def test_render_vit_and_nested_vit_have_no_inner_figure(tmp_path, name):
    model = models.create_model(
        name, num_classes=10, embed_dim=16, depth=2, num_heads=2, mlp_ratio=1.0
    )
    params = random_params(model, 0)
    images = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    picture = np.full((32, 32, 3), 0.5)
    written = visualize.render(model, params, images, picture, str(tmp_path), heads=[1])
    assert {p.split("/")[-1]: n for p, n in written.items()} == {
        "outer_attention.png": 2,
        "correlation_outer.png": 1,
    }


def _texts_outside(fig) -> list[str]:
    """The visible texts of `fig` (labels, titles, tick labels) that reach past its edges."""
    fig.canvas.draw()
    box = fig.bbox
    return [
        t.get_text()
        for t in fig.findobj(matplotlib.text.Text)
        if t.get_visible()
        and t.get_text().strip()
        and not (
            box.x0 - 1 <= t.get_window_extent().x0
            and t.get_window_extent().x1 <= box.x1 + 1
            and box.y0 - 1 <= t.get_window_extent().y0
            and t.get_window_extent().y1 <= box.y1 + 1
        )
    ]


@pytest.mark.parametrize(
    "layers, heads", [(None, None), ([0], [0]), ([0], None), ([2], [1]), (None, [0])]
)
def test_no_label_is_cut_for_any_selection(setup, layers, heads):
    _, _, run, chains = setup
    model = run.model
    grid = model.img_size // model.patch_size
    words = models.tnt.word_grid(model.patch_size, model.word_kernel, model.word_stride)
    layers = list(range(TINY_TNT["depth"])) if layers is None else layers
    picture = np.full((32, 32, 3), 0.5)
    for chain, maps, uniform in (
        ("outer", visualize.class_token_maps(chains["outer"], grid), 1.0 / (grid**2 + 1)),
        ("inner", visualize.word_maps(chains["inner"], grid, words), 1.0 / words**2),
    ):
        chosen = list(range(TINY_TNT[f"num_heads_{chain}"])) if heads is None else heads
        fig = visualize.overlay_figure(
            picture,
            maps[np.ix_(layers, chosen)],
            layers,
            chosen,
            "A title as long as the figures' own titles, " * 3,
            uniform,
            borders=8,
        )
        bar_label = fig.axes[-1].xaxis.label.get_text()
        assert "even weight" in bar_label
        assert not _texts_outside(fig), (chain, layers, heads, _texts_outside(fig))
        plt.close(fig)
    pairs = [layer for layer in layers if layer + 1 < TINY_TNT["depth"]]
    if pairs:
        matrices = [
            visualize.head_correlation(chains["outer"][i], chains["outer"][i + 1]) for i in pairs
        ]
        fig = visualize.correlation_figure(matrices, pairs, "Correlation title " * 6)
        assert not _texts_outside(fig)
        plt.close(fig)


def test_overlay_colours_are_ratios_to_even_attention():
    # Near-even attention (0.23..0.27 of 2x2 words) spans the minimum scale, 1/2..2, and is
    # drawn almost clear: the image shows through.
    near_even = np.array([0.23, 0.25, 0.27]) / 0.25
    assert visualize.ratio_span(near_even) == visualize.MIN_RATIO_SPAN
    cmap = visualize.ratio_colormap()
    norm = matplotlib.colors.LogNorm(1 / visualize.MIN_RATIO_SPAN, visualize.MIN_RATIO_SPAN)
    assert cmap(norm(near_even))[:, 3].max() < 0.1
    assert cmap(norm(1.0))[3] < 0.01
    np.testing.assert_allclose(cmap(norm([0.5, 2.0]))[:, 3], visualize.OVERLAY_ALPHA, rtol=0.01)
    # A peaked map widens the scale symmetrically, up to MAX_RATIO_SPAN.
    assert visualize.ratio_span(np.array([0.9, 5.0])) == 5.0
    assert visualize.ratio_span(np.array([0.1, 1.2])) == pytest.approx(10.0)
    assert visualize.ratio_span(np.array([1e-6, 1.0])) == visualize.MAX_RATIO_SPAN


def test_cli_prints_no_library_warnings_at_its_default_verbosity(setup, tmp_path):
    workdir, image, _, _ = setup
    proc = run_cli(
        "visualize",
        f"--workdir={workdir}",
        f"--image={image}",
        f"--out={tmp_path / 'maps'}",
        "--layers=1",
    )
    assert proc.returncode == 0, proc.stderr
    assert not warning_lines(proc.stderr), proc.stderr
    assert proc.stdout.count(" panels)") == 4
