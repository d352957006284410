"""Tests for minivae.pictures: every picture is a readable, non-blank PNG written atomically; the
tiling puts every pixel where it belongs; pictures that cannot apply refuse with a named error."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.figure import Figure

from minivae import pictures
from minivae.model import VAE

X_DIM = 64
IMAGE_SHAPE = (8, 8)
N_CLASSES = 3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Records as train.py writes them, with beta = 1: the objective train_loss equals -ELBO.
METRICS = [
    {"epoch": 1, "train_loss": 50.0, "train_neg_elbo": 50.0, "train_recon": 45.0, "train_kl": 5.0,
     "val_loss": 49.0, "val_recon": 44.5, "val_kl": 4.5},
    {"epoch": 2, "train_loss": 40.0, "train_neg_elbo": 40.0, "train_recon": 34.0, "train_kl": 6.0,
     "val_loss": None},
    {"epoch": 3, "train_loss": 35.0, "train_neg_elbo": 35.0, "train_recon": 28.5, "train_kl": 6.5},
]


def make_model(z_dim: int, n_classes: int = 0, likelihood: str = "bernoulli") -> VAE:
    return VAE(X_DIM, z_dim, (16,), n_classes=n_classes, likelihood=likelihood, dtype="float32",
               rng=np.random.default_rng(100 + 10 * z_dim + n_classes))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((30, X_DIM), dtype=np.float32), rng.integers(0, N_CLASSES, 30)


def assert_png(path) -> None:
    """A real PNG that matplotlib reads back, with some pixels and more than one colour."""
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 0 and img.shape[1] > 0
    assert np.ptp(img[..., :3]) > 0, f"{path.name} is a single flat colour"


def assert_only(outdir, names) -> None:
    """``outdir`` holds exactly these files: nothing half-written or temporary is left over."""
    assert sorted(p.name for p in outdir.iterdir()) == sorted(names)


# ----------------------------------------------------------------------------------------------
# image_grid


def test_image_grid_places_every_pixel():
    images = np.arange(18, dtype=np.float64).reshape(3, 6)  # three 2x3 images
    s = -1.0
    expected = np.array([
        [0, 1, 2, s, 6, 7, 8],
        [3, 4, 5, s, 9, 10, 11],
        [s, s, s, s, s, s, s],
        [12, 13, 14, s, s, s, s],
        [15, 16, 17, s, s, s, s],
    ])
    np.testing.assert_array_equal(pictures.image_grid(images, (2, 3), 2, separator=s), expected)
    # the unused cells of a partial row (and the separators between them) take ``empty``; the
    # separator that closes the last image stays
    e = 9.5
    expected[3:, 4:] = e
    np.testing.assert_array_equal(
        pictures.image_grid(images, (2, 3), 2, separator=s, empty=e), expected)


def test_image_grid_default_separators_are_nan_and_full_rows_have_no_padding():
    images = np.ones((4, 4))
    grid = pictures.image_grid(images, (2, 2), 2)
    assert grid.shape == (5, 5)
    assert np.isnan(grid[2]).all() and np.isnan(grid[:, 2]).all()
    assert (np.nan_to_num(grid, nan=0) == 1).sum() == 16
    assert pictures.image_grid(images, (2, 2), 4).shape == (2, 11)  # one row, three separators


def test_tile_clips_to_unit_interval_and_enlarges_small_images_for_display():
    grid = pictures._tile(np.array([[-1.0, 2.0, 0.25, 1.0]]), (2, 2), 1)
    k = pictures.MIN_TILE_PX // 2  # a 2x2 image is drawn with k x k blocks per pixel
    np.testing.assert_array_equal(grid, np.kron([[0.0, 1.0], [0.25, 1.0]], np.ones((k, k))))


@pytest.mark.parametrize(("shape", "scale"), [((8, 8), 4), ((28, 28), 2), ((32, 32), 1),
                                              ((3, 40), 1), ((7, 5), 5)])
def test_separators_stay_one_pixel_beside_enlarged_tiles(shape, scale):
    """Each image pixel becomes a scale x scale block; the separator between tiles stays one
    display pixel, so an 8x8 digit's separators are a quarter of its pixels' width, not equal."""
    h, w = shape
    assert pictures._display_scale(shape) == scale
    grid = pictures._tile(np.full((2, h * w), 0.5), shape, 2)
    assert grid.shape == (h * scale, 2 * w * scale + 1)
    assert np.isnan(grid[:, w * scale]).all() and not np.isnan(np.delete(grid, w * scale, 1)).any()


@pytest.mark.parametrize(("args", "name"), [
    ((np.zeros((2, 63)), (8, 8), 2), "images"),
    ((np.zeros((0, 64)), (8, 8), 2), "images"),
    ((np.full((1, 4), np.nan), (2, 2), 1), "images"),
    ((np.zeros((2, 64)), (8, 8), 0), "ncols"),
    ((np.zeros((2, 64)), None, 2), "image_shape"),
    ((np.zeros((2, 64)), (64,), 2), "image_shape"),
    ((np.zeros((2, 64)), (0, 8), 2), "image_shape"),
])
def test_image_grid_rejects_bad_arguments_by_name(args, name):
    with pytest.raises(ValueError, match=name):
        pictures.image_grid(*args)


# ----------------------------------------------------------------------------------------------
# principal components


@given(st.integers(0, 2**32 - 1))
def test_principal_components_keep_the_geometry_of_planar_data(seed):
    """Points on a 2-D plane in 5-D: the first two PCs hold all the variance and every pairwise
    distance, and the PC coordinates are uncorrelated and centred."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((5, 2)))  # orthonormal columns
    flat = rng.standard_normal((20, 2)) * [3.0, 1.0]
    points = flat @ basis.T + rng.standard_normal(5)
    coords, share = pictures.principal_components(points, 2)

    def distances(a):
        return np.linalg.norm(a[:, None] - a[None], axis=-1)

    np.testing.assert_allclose(distances(coords), distances(points), atol=1e-9)
    np.testing.assert_allclose(share.sum(), 1.0, atol=1e-12)
    assert share[0] >= share[1]
    np.testing.assert_allclose(coords.mean(axis=0), 0.0, atol=1e-9)
    cov = coords.T @ coords
    assert abs(cov[0, 1]) <= 1e-8 * np.abs(cov).max()


def test_principal_components_rejects_too_many_components():
    with pytest.raises(ValueError, match="k must be at most"):
        pictures.principal_components(np.zeros((5, 2)), 3)


# ----------------------------------------------------------------------------------------------
# each picture on its own


@pytest.mark.parametrize(("z_dim", "n_classes"), [(2, 0), (3, N_CLASSES)])
def test_every_picture_is_a_valid_png(tmp_path, data, z_dim, n_classes):
    x, y = data
    model = make_model(z_dim, n_classes)
    rng = np.random.default_rng(1)
    y0 = y[0] if n_classes else None
    written = [
        pictures.reconstructions(model, x, y, IMAGE_SHAPE, tmp_path / "r.png", n=10),
        pictures.prior_samples(model, rng, IMAGE_SHAPE, tmp_path / "s.png", n=12),
        pictures.interpolation(model, x[0], x[1:2], IMAGE_SHAPE, tmp_path / "i.png", steps=5,
                               y_a=y0, y_b=y[1] if n_classes else None),
        pictures.latent_traversal(model, x[0], IMAGE_SHAPE, tmp_path / "t.png",
                                  values=np.linspace(-2, 2, 5), y=y0),
        pictures.latent_scatter(model, x, y, tmp_path / "sc.png"),
        pictures.loss_curves(METRICS, tmp_path / "l.png"),
    ]
    if z_dim == 2:
        written.append(pictures.manifold_2d(model, IMAGE_SHAPE, tmp_path / "m.png", n=5, y=y0))
    if n_classes:
        written.append(pictures.class_grid(model, rng, IMAGE_SHAPE, tmp_path / "c.png",
                                           per_class=4))
    for path in written:
        assert_png(path)
    assert_only(tmp_path, [p.name for p in written])


def test_gaussian_means_outside_unit_interval_still_draw(tmp_path, data):
    x, _ = data
    model = make_model(2, likelihood="gaussian")
    means = model.sample(16, np.random.default_rng(0))
    assert means.min() < 0 or means.max() > 1  # the case the display clip exists for
    assert_png(pictures.prior_samples(model, np.random.default_rng(0), IMAGE_SHAPE,
                                      tmp_path / "s.png", n=16))


def test_conditional_samples_take_one_label_or_cycle_classes(tmp_path):
    model = make_model(2, N_CLASSES)
    assert_png(pictures.prior_samples(model, np.random.default_rng(0), IMAGE_SHAPE,
                                      tmp_path / "one.png", n=7, y=2))
    assert_png(pictures.prior_samples(model, np.random.default_rng(0), IMAGE_SHAPE,
                                      tmp_path / "cycle.png", n=7))


def test_same_seed_same_picture(tmp_path):
    model = make_model(2)
    a = pictures.prior_samples(model, np.random.default_rng(5), IMAGE_SHAPE, tmp_path / "a.png")
    b = pictures.prior_samples(model, np.random.default_rng(5), IMAGE_SHAPE, tmp_path / "b.png")
    assert a.read_bytes() == b.read_bytes()


def test_latent_scatter_handles_one_latent_and_many_float_labels(tmp_path, data):
    x, _ = data
    assert_png(pictures.latent_scatter(make_model(1), x, np.arange(len(x)), tmp_path / "a.png"))
    labels = np.linspace(0.0, 1.0, len(x))  # a continuous target: colorbar, not legend
    assert_png(pictures.latent_scatter(make_model(4), x, labels, tmp_path / "b.png"))


def test_loss_curves_without_any_validation(tmp_path):
    metrics = [{k: v for k, v in rec.items() if not k.startswith("val")} for rec in METRICS]
    assert_png(pictures.loss_curves(metrics, tmp_path / "l.png"))
    assert_png(pictures.loss_curves(METRICS[:1], tmp_path / "one_epoch.png"))


def _curves(ax) -> dict[str, list[float]]:
    return {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}


def test_elbo_panel_sets_train_elbo_beside_validation_elbo_and_the_objective_apart():
    """Under KL warm-up (beta < 1) the objective recon + beta KL is below -ELBO: the -ELBO panel
    must plot train -ELBO (train_neg_elbo) against validation -ELBO, and the objective only as a
    separately labelled curve."""
    betas = (0.25, 0.5, 1.0)
    metrics = [{"epoch": e, "beta": b, "train_recon": 40.0 - e, "train_kl": 4.0 + e,
                "train_neg_elbo": 44.0, "train_loss": 40.0 - e + b * (4.0 + e),
                "val_loss": 45.0 - e, "val_recon": 41.0, "val_kl": 4.0 - e}
               for e, b in enumerate(betas)]
    elbo, recon, kl = pictures.loss_figure(metrics).axes[:3]
    assert elbo.get_title().startswith("-ELBO")
    assert _curves(elbo) == {"train": [44.0] * 3, "validation": [45.0, 44.0, 43.0],
                             pictures.OBJECTIVE_LABEL: [r["train_loss"] for r in metrics]}
    assert _curves(recon) == {"train": [40.0, 39.0, 38.0], "validation": [41.0] * 3}
    assert _curves(kl)["train"] == [4.0, 5.0, 6.0]
    # with beta = 1 throughout the objective is -ELBO: no second curve
    assert set(_curves(pictures.loss_figure(METRICS).axes[0])) == {"train", "validation"}


def test_with_beta_1_the_objective_is_not_drawn_even_when_it_differs_by_rounding():
    """Training sums the objective and -ELBO in different orders, so under beta = 1 they differ in
    the last digits (as in a real metrics.jsonl): a dashed copy would lie hidden under -ELBO."""
    metrics = [{"epoch": 1, "beta": 1.0, "train_loss": 42.77523024312804,
                "train_neg_elbo": 42.77522945152071, "train_recon": 42.66, "train_kl": 0.11}]
    assert set(_curves(pictures.loss_figure(metrics).axes[0])) == {"train"}


def test_an_iwae_runs_objective_is_drawn_and_named_as_the_bound():
    metrics = [dict(rec, objective="iwae", beta=1.0, train_loss=rec["train_neg_elbo"] - 1)
               for rec in METRICS]
    curves = _curves(pictures.loss_figure(metrics).axes[0])
    assert curves[pictures.IWAE_OBJECTIVE_LABEL] == [49.0, 39.0, 34.0]


def test_an_epoch_whose_every_step_was_skipped_is_a_gap_in_the_curves(tmp_path):
    """A skipped epoch's training numbers are null in metrics.jsonl: the curve leaves it out."""
    skipped = {"epoch": 2, "beta": 1.0, "train_loss": None, "train_neg_elbo": None,
               "train_recon": None, "train_kl": None, "val_loss": None}
    metrics = [METRICS[0], skipped, METRICS[2]]
    elbo = pictures.loss_figure(metrics).axes[0]
    assert elbo.get_lines()[0].get_xdata().tolist() == [1.0, 3.0]
    assert _curves(elbo)["train"] == [50.0, 35.0]
    assert_png(pictures.loss_curves(metrics, tmp_path / "gap.png"))


def test_traversal_rows_show_each_dimensions_kl_over_the_data(tmp_path, data):
    """kl_per_dimension is the closed-form KL of each latent coordinate averaged over the data."""
    x, _ = data
    model = make_model(3)
    kl = pictures.kl_per_dimension(model, x)
    mu, logvar = (a.astype(np.float64) for a in model.encode(x))
    expected = 0.5 * (mu**2 + np.exp(logvar) - 1 - logvar).mean(axis=0)
    np.testing.assert_allclose(kl, expected, rtol=1e-6, atol=1e-9)
    assert kl.shape == (3,) and (kl >= 0).all()
    assert_png(pictures.latent_traversal(model, x[0], IMAGE_SHAPE, tmp_path / "t.png", kl=kl))
    with pytest.raises(ValueError, match="kl"):
        pictures.latent_traversal(model, x[0], IMAGE_SHAPE, tmp_path / "u.png", kl=kl[:2])
    active = np.array([True, False, True])
    assert_png(pictures.latent_traversal(model, x[0], IMAGE_SHAPE, tmp_path / "a.png", kl=kl,
                                         active=active))
    with pytest.raises(ValueError, match="active must be 3 booleans"):
        pictures.latent_traversal(model, x[0], IMAGE_SHAPE, tmp_path / "b.png", active=[1, 0, 1])


def test_reconstructions_refuse_more_inputs_than_fit_and_check_the_originals(tmp_path, data):
    x, _ = data
    model = make_model(2)
    with pytest.raises(ValueError, match=f"n must be at most {pictures.MAX_RECONSTRUCTIONS}"):
        pictures.reconstructions(model, x, None, IMAGE_SHAPE, tmp_path / "r.png",
                                 n=pictures.MAX_RECONSTRUCTIONS + 1)
    with pytest.raises(ValueError, match="originals must have the shape"):
        pictures.reconstructions(model, x, None, IMAGE_SHAPE, tmp_path / "r.png", n=4,
                                 originals=x[:3])
    assert_png(pictures.reconstructions(model, x, None, IMAGE_SHAPE, tmp_path / "r.png", n=4,
                                        originals=x))


# ----------------------------------------------------------------------------------------------
# refusals, each naming its argument


def test_manifold_refuses_z_dim_other_than_2(tmp_path):
    with pytest.raises(ValueError, match="z_dim = 2, got z_dim = 3"):
        pictures.manifold_2d(make_model(3), IMAGE_SHAPE, tmp_path / "m.png")
    assert_only(tmp_path, [])


def test_class_grid_refuses_unconditional_model(tmp_path):
    with pytest.raises(ValueError, match="n_classes"):
        pictures.class_grid(make_model(2), np.random.default_rng(0), IMAGE_SHAPE,
                            tmp_path / "c.png")
    assert_only(tmp_path, [])


IMAGE_PICTURES = {
    "reconstructions": lambda m, x, s, p: pictures.reconstructions(m, x, None, s, p),
    "prior_samples": lambda m, x, s, p: pictures.prior_samples(m, np.random.default_rng(0), s, p),
    "interpolation": lambda m, x, s, p: pictures.interpolation(m, x[0], x[1], s, p),
    "latent_traversal": lambda m, x, s, p: pictures.latent_traversal(m, x[0], s, p),
    "manifold_2d": lambda m, x, s, p: pictures.manifold_2d(m, s, p),
}


@pytest.mark.parametrize("name", sorted(IMAGE_PICTURES))
@pytest.mark.parametrize(("image_shape", "message"), [
    (None, "image_shape is None"),
    ((4, 4), r"image_shape \(4, 4\) holds 16 pixels but the data has x_dim = 64"),
])
def test_image_pictures_need_a_matching_image_shape(tmp_path, data, name, image_shape, message):
    with pytest.raises(ValueError, match=message):
        IMAGE_PICTURES[name](make_model(2), data[0], image_shape, tmp_path / "p.png")
    assert_only(tmp_path, [])


@pytest.mark.parametrize(("call", "message"), [
    (lambda m, c, x, p: pictures.prior_samples(m, np.random.default_rng(0), IMAGE_SHAPE, p, y=1),
     "y was given but the model is not conditional"),
    (lambda m, c, x, p: pictures.manifold_2d(m, IMAGE_SHAPE, p, y=0),
     "y was given but the model is not conditional"),
    (lambda m, c, x, p: pictures.interpolation(c, x[0], x[1], IMAGE_SHAPE, p),
     "y_a .* is required"),
    (lambda m, c, x, p: pictures.interpolation(c, x[0], x[1], IMAGE_SHAPE, p, y_a=N_CLASSES),
     "y_a must lie in 0..2"),
    (lambda m, c, x, p: pictures.interpolation(c, x[0], x[1], IMAGE_SHAPE, p, y_a=0, y_b=1.5),
     "y_b must be one integer label"),
    (lambda m, c, x, p: pictures.interpolation(m, x[:2], x[1], IMAGE_SHAPE, p),
     r"x_a must be one input of shape \(64,\)"),
    (lambda m, c, x, p: pictures.latent_traversal(m, x[0], IMAGE_SHAPE, p, values=[]),
     "values must hold at least one"),
    (lambda m, c, x, p: pictures.latent_scatter(m, x, None, p), "y is None"),
    (lambda m, c, x, p: pictures.latent_scatter(m, x, np.zeros(3, int), p), "y must be 30"),
    (lambda m, c, x, p: pictures.reconstructions(m, x, None, IMAGE_SHAPE, p, n=0), "n must"),
    (lambda m, c, x, p: pictures.loss_curves([], p), "metrics must be a non-empty list"),
    (lambda m, c, x, p: pictures.loss_curves([METRICS[0], {"train_loss": 1.0}], p),
     r"metrics\[1\] lacks epoch"),
])
def test_bad_arguments_are_refused_by_name(tmp_path, data, call, message):
    with pytest.raises(ValueError, match=message):
        call(make_model(2), make_model(2, N_CLASSES), data[0], tmp_path / "p.png")
    assert_only(tmp_path, [])


# ----------------------------------------------------------------------------------------------
# atomic writes


def test_a_failed_save_leaves_the_old_picture_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "curves.png"
    pictures.loss_curves(METRICS, path)
    before = path.read_bytes()

    def broken_savefig(self, fname, **kwargs):
        fname.write(b"\x89PNG half a picture")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        pictures.loss_curves(METRICS[:2], path)
    assert path.read_bytes() == before
    assert_only(tmp_path, ["curves.png"])


def test_rewriting_replaces_the_picture_and_creates_missing_folders(tmp_path):
    path = tmp_path / "new" / "folder" / "curves.png"
    pictures.loss_curves(METRICS[:1], path)
    first = path.read_bytes()
    assert pictures.loss_curves(METRICS, path) == path
    assert path.read_bytes() != first
    assert_only(path.parent, ["curves.png"])


# ----------------------------------------------------------------------------------------------
# make_all


F = pictures.FILENAMES
IMAGE_SET = [F["reconstructions"], F["samples"], F["interpolation"], F["traversal"]]


@pytest.mark.parametrize(("z_dim", "n_classes", "labels", "metrics", "image_shape", "expected"), [
    (2, 0, True, True, IMAGE_SHAPE,
     [*IMAGE_SET, F["manifold"], F["latent_scatter"], F["loss_curves"]]),
    (3, N_CLASSES, True, True, IMAGE_SHAPE,
     [*IMAGE_SET, F["latent_scatter"], F["loss_curves"], F["class_grid"]]),
    (2, N_CLASSES, True, False, IMAGE_SHAPE,
     [*IMAGE_SET, F["manifold"], F["latent_scatter"], F["class_grid"]]),
    (3, 0, False, False, IMAGE_SHAPE, IMAGE_SET),
    (2, 0, True, True, None, [F["latent_scatter"], F["loss_curves"]]),
    (3, 0, False, False, None, []),
], ids=["z2-plain", "z3-conditional", "z2-conditional-no-metrics", "z3-no-labels",
        "non-image", "non-image-nothing-applies"])
def test_make_all_writes_exactly_the_pictures_that_apply(tmp_path, data, z_dim, n_classes,
                                                         labels, metrics, image_shape, expected):
    x, y = data
    outdir = tmp_path / "pictures"
    written = pictures.make_all(make_model(z_dim, n_classes), x, y if labels else None,
                                image_shape, outdir, np.random.default_rng(7),
                                METRICS if metrics else None)
    assert [p.name for p in written] == expected
    assert all(p.parent == outdir for p in written)
    for path in written:
        assert_png(path)
    if expected:
        assert_only(outdir, expected)


def test_make_all_needs_labels_for_a_conditional_model(tmp_path, data):
    with pytest.raises(ValueError, match="test_y is None but the model is conditional"):
        pictures.make_all(make_model(2, N_CLASSES), data[0], None, IMAGE_SHAPE, tmp_path,
                          np.random.default_rng(0))


def test_a_wide_latent_traversal_draws_the_dimensions_with_the_largest_kl(tmp_path, data, monkeypatch):
    """50 dimensions would make 50 unreadable rows: the MAX_TRAVERSAL_ROWS with the largest KL
    are drawn, each row moving its own coordinate."""
    x, _ = data
    model = VAE(X_DIM, 50, (16,), dtype="float64", rng=np.random.default_rng(3))
    kl = np.arange(50.0)[::-1] % 7  # ties broken by index
    decoded = []
    real = model.decode
    monkeypatch.setattr(model, "decode", lambda z, y=None: decoded.append(z.copy()) or real(z, y))
    assert_png(pictures.latent_traversal(model, x[0], IMAGE_SHAPE, tmp_path / "t.png", kl=kl))
    z = decoded[0].reshape(pictures.MAX_TRAVERSAL_ROWS, 9, 50)
    mu = model.encode(x[:1])[0][0]
    moved = [int(np.flatnonzero(np.any(row != mu, axis=0))[0]) for row in z]
    want = sorted(np.argsort(-kl, kind="stable")[:pictures.MAX_TRAVERSAL_ROWS])
    assert moved == want and len(moved) == 16
