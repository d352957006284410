"""Pictures of a trained VAE: reconstructions, samples, latent walks, the latent space, the losses.

Every picture is a PNG written atomically (a temporary file in the same folder, then
``os.replace``), so a crash mid-write never leaves a half-written picture under the final name;
each function returns the Path it wrote. Figures are built on ``matplotlib.figure.Figure`` with
the Agg canvas, never pyplot, so nothing here touches matplotlib's global state or needs a display.

Images are shown greyscale on [0, 1]: the likelihood's mean is clipped for display, because a
Gaussian decoder's mean may leave [0, 1]. Data rows are flattened images of ``image_shape`` (H, W).

Labels follow one rule. Labels that *accompany data* (``y`` of ``reconstructions``,
``latent_traversal`` and ``latent_scatter``, ``y_a``/``y_b`` of ``interpolation``) are passed to a
conditional model and ignored by an unconditional one (the scatter still colours by them). Labels
that *choose what to generate* (``y`` of ``prior_samples`` and ``manifold_2d``) are an error for an
unconditional model. Every random draw comes from an explicit ``np.random.Generator``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from statistics import NormalDist

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from minivae import _checks
from minivae._files import atomic_write
from minivae.latent import kl_forward
from minivae.model import VAE

# Separators are NaN, drawn in a colour no greyscale pixel can take: any grey value would vanish
# against some images (mid grey against an untrained decoder's ~0.5 outputs, white against
# strokes), and then neighbouring tiles run together.
SEPARATOR_VALUE = float("nan")
SEPARATOR_COLOR = "#34465e"  # a dark slate blue: apart from every grey, without glaring
# Tiles are enlarged (each pixel drawn as a k x k block) until their longer side reaches this many
# pixels, so a 1-pixel separator is thin beside an 8x8 digit's pixels instead of as wide as one.
MIN_TILE_PX = 32
# The unused cells after the last image of a partial row: any value above vmax = 1 is drawn in
# the colormap's "over" colour, which the pictures make transparent, so the row simply ends.
# (Images are clipped to [0, 1] before tiling, so no pixel can reach it.)
EMPTY_VALUE = 2.0
# Longest side of an image figure in inches; at the default 100 dpi that is 800 pixels. The width
# never drops below the minimum so a tall, narrow grid still has room for its title.
FIGURE_LONG_SIDE_IN = 8.0
FIGURE_MIN_WIDTH_IN = 4.0
# Height of one line of title or label text at matplotlib's default 10-12 pt, and the padding.
TEXT_LINE_IN = 0.3
# Width of one character of a title (12 pt) and of a tick label (10 pt), about, in inches: a figure
# is made wide enough for its longest title line and its row labels.
TITLE_CHAR_IN = 0.1
LABEL_CHAR_IN = 0.09
MARGIN_IN = 0.2
DPI = 100
# Latent traversal: at most this many dimensions, one row each (a 50-dimensional model's rows
# would be too thin to read).
MAX_TRAVERSAL_ROWS = 16
# Reconstructions: tiles per row, and the most inputs one picture shows (30 rows of 8).
RECONSTRUCTION_COLUMNS = 8
MAX_RECONSTRUCTIONS = 240
# Up to this many distinct integer labels the scatter uses a discrete palette with a legend
# (tab10/tab20 have that many distinct colours); beyond it, a continuous colormap and colorbar.
MAX_LEGEND_CLASSES = 20

FILENAMES = {
    "reconstructions": "reconstructions.png",
    "samples": "samples.png",
    "interpolation": "interpolation.png",
    "traversal": "traversal.png",
    "manifold": "manifold.png",
    "latent_scatter": "latent_scatter.png",
    "loss_curves": "loss_curves.png",
    "class_grid": "class_grid.png",
}


# ----------------------------------------------------------------------------------------------
# shared helpers: checks, tiling, drawing, atomic save


def _check_image_shape(image_shape: Sequence[int] | None,
                       x_dim: int | None = None) -> tuple[int, int]:
    """``image_shape`` as (H, W); ValueError if it is None, malformed, or H*W != ``x_dim``."""
    if image_shape is None:
        raise ValueError("image_shape is None: this picture needs image data, give (H, W)")
    try:
        h, w = image_shape
    except (TypeError, ValueError):
        raise ValueError(f"image_shape must be (H, W), got {image_shape!r}") from None
    h = _checks.positive_int("image_shape[0]", h)
    w = _checks.positive_int("image_shape[1]", w)
    if x_dim is not None and h * w != x_dim:
        raise ValueError(f"image_shape {image_shape!r} holds {h * w} pixels but the data has "
                         f"x_dim = {x_dim}")
    return h, w


def _labels(model: VAE, name: str, y, n: int, *, generating: bool = False) -> np.ndarray | None:
    """``y`` (one label or n labels) as the (n,) int array the model takes, or None.

    An unconditional model takes no labels: data labels are dropped, generation labels refused.
    """
    if model.n_classes == 0:
        if generating and y is not None:
            raise ValueError(f"{name} was given but the model is not conditional (n_classes = 0)")
        return None
    if y is None:
        raise ValueError(f"{name} (labels in 0..{model.n_classes - 1}) is required: the model is "
                         "conditional")
    arr = np.asarray(y)
    if arr.ndim == 0:
        arr = np.full(n, arr)
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be one integer label or {n} of them, got dtype {arr.dtype} "
                         f"shape {arr.shape}")
    if arr.min() < 0 or arr.max() >= model.n_classes:
        raise ValueError(f"{name} must lie in 0..{model.n_classes - 1}, got "
                         f"[{arr.min()}, {arr.max()}]")
    return arr


def _one_row(name: str, x, x_dim: int) -> np.ndarray:
    """A single input, (D,) or (1, D), as a (1, D) array."""
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.shape != (1, x_dim):
        raise ValueError(f"{name} must be one input of shape ({x_dim},) or (1, {x_dim}), got "
                         f"{arr.shape}")
    return arr


def image_grid(images, image_shape: Sequence[int], ncols: int, *,
               separator: float = SEPARATOR_VALUE, empty: float | None = None) -> np.ndarray:
    """Tile flattened images row by row into one 2-D array with 1-pixel separators between tiles.

    images: (N, H*W). Returns (R*H + R-1, C*W + C-1) with C = ``ncols`` and R = ceil(N / C);
    image k sits at tile (k // C, k % C) and the separators hold ``separator`` (NaN by default,
    which the pictures draw in SEPARATOR_COLOR). In a partial last row, everything right of the
    separator that closes the last image holds ``empty`` (default: ``separator``).
    """
    h, w = _check_image_shape(image_shape)
    ncols = _checks.positive_int("ncols", ncols)
    images = _checks.finite_array("images", images, shape=(None, h * w))
    if images.shape[0] == 0:
        raise ValueError(f"images must hold at least one image, got shape {images.shape}")
    n = images.shape[0]
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + 1) - 1, ncols * (w + 1) - 1), separator, dtype=np.float64)
    for k, img in enumerate(images.reshape(n, h, w)):
        r, c = divmod(k, ncols)
        grid[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = img
    if n % ncols and empty is not None:
        grid[(nrows - 1) * (h + 1) :, (n % ncols) * (w + 1) :] = empty
    return grid


def _tile(images: np.ndarray, image_shape: tuple[int, int], ncols: int) -> np.ndarray:
    """image_grid for display: pixels clipped to [0, 1] (a Gaussian decoder's mean may leave it),
    each image enlarged by ``_display_scale``, unused cells marked EMPTY_VALUE."""
    h, w = image_shape
    k = _display_scale(image_shape)
    images = np.clip(np.asarray(images, dtype=np.float64), 0.0, 1.0).reshape(-1, h, w)
    big = images.repeat(k, axis=1).repeat(k, axis=2).reshape(len(images), h * k * w * k)
    return image_grid(big, (h * k, w * k), ncols, empty=EMPTY_VALUE)


def _display_scale(image_shape: tuple[int, int]) -> int:
    """The integer enlargement that brings a tile's longer side to at least MIN_TILE_PX."""
    return max(1, math.ceil(MIN_TILE_PX / max(image_shape)))


def _figure(width_px: int, height_px: int, text_lines: int, label_width_in: float = 0.0,
            min_width_in: float = FIGURE_MIN_WIDTH_IN) -> Figure:
    """A constrained-layout figure whose aspect follows a (width_px x height_px) picture, with
    room above and below it for ``text_lines`` lines of titles and labels, ``label_width_in``
    inches beside it for row labels, and at least ``min_width_in`` wide."""
    scale = FIGURE_LONG_SIDE_IN / max(width_px, height_px)
    width = max(min_width_in, width_px * scale + label_width_in)
    height = height_px * scale + TEXT_LINE_IN * text_lines + MARGIN_IN
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _show(ax: Axes, grid: np.ndarray, title: str) -> None:
    """Draw a grid from ``_tile`` greyscale on [0, 1], without ticks."""
    cmap = matplotlib.colormaps["gray"].with_extremes(bad=SEPARATOR_COLOR, over="none")
    ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)


def _grid_figure(grid: np.ndarray, title: str, label_lines: int = 0,
                 label_width_in: float = 0.0) -> tuple[Figure, Axes]:
    """One tiled grid under its title; ``label_lines`` reserves room for an x-axis label,
    ``label_width_in`` for row labels."""
    longest = max(len(line) for line in title.splitlines())
    fig = _figure(grid.shape[1], grid.shape[0], title.count("\n") + 1 + label_lines,
                  label_width_in, max(FIGURE_MIN_WIDTH_IN, TITLE_CHAR_IN * longest))
    ax = fig.subplots()
    _show(ax, grid, title)
    return fig, ax


def _label_rows(ax: Axes, labels: Sequence[str], tile_h: int) -> None:
    """Name each tile row at its centre (labels only: the tick marks stay hidden); ``tile_h`` is
    the height of a tile as drawn (after ``_display_scale``)."""
    ax.set_yticks([r * (tile_h + 1) + (tile_h - 1) / 2 for r in range(len(labels))], labels)
    ax.tick_params(axis="y", length=0)


def _label_columns(ax: Axes, labels: Sequence[str], tile_w: int) -> None:
    """Name each tile column at its centre, below the grid."""
    ax.set_xticks([c * (tile_w + 1) + (tile_w - 1) / 2 for c in range(len(labels))], labels)
    ax.tick_params(axis="x", length=0)


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (``minivae._files.atomic_write``) and return
    the Path; the folder is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # tight: the canvas grows to hold every label and title the layout left outside it
        return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=DPI,
                                                         bbox_inches="tight"))
    except OSError as e:
        if e.errno is None:  # a library's own message without errno: keep its text, name the file
            raise OSError(f"{e} (writing {path})") from None
        raise


def _square_cols(n: int) -> int:
    return math.ceil(math.sqrt(n))


# ----------------------------------------------------------------------------------------------
# the pictures


def reconstructions(model: VAE, x, y, image_shape: Sequence[int] | None,
                    path: str | os.PathLike, n: int = 16, originals=None) -> Path:
    """The first ``n`` inputs of ``x`` above their reconstructions (likelihood mean at z = mu).

    ``originals`` (optional, same rows as ``x``): the grey images ``x`` was binarised from; they
    are shown on top, so the reader sees that the model's inputs are one random binarisation.
    At most MAX_RECONSTRUCTIONS inputs are drawn; asking for more is a ValueError.
    """
    h, w = _check_image_shape(image_shape, model.x_dim)
    n = _checks.positive_int("n", n)
    if n > MAX_RECONSTRUCTIONS:
        raise ValueError(f"n must be at most {MAX_RECONSTRUCTIONS} (a picture of more inputs has "
                         f"tiles too small to see), got {n}")
    x = np.asarray(x)[:n]
    n = len(x)
    y = _labels(model, "y", None if y is None else np.asarray(y)[:n], n)
    recon = model.reconstruct(x, y)
    ncols = min(n, RECONSTRUCTION_COLUMNS)
    panels = []
    if originals is not None:
        originals = np.asarray(originals)[:n]
        if originals.shape != x.shape:
            raise ValueError(f"originals must have the shape of x's first rows {x.shape}, got "
                             f"{originals.shape}")
        panels.append((originals, f"Data ({n} test images)"))
        panels.append((x, "Inputs: one random binarisation of the data"))
    else:
        panels.append((x, f"Inputs ({n} test examples)"))
    panels.append((recon, "Reconstructions (decoder mean at z = posterior mean)"))
    grids = [(_tile(images, (h, w), ncols), title) for images, title in panels]
    one = grids[0][0]
    fig = _figure(one.shape[1], len(grids) * (one.shape[0] + 1), text_lines=len(grids))
    for ax, (grid, title) in zip(np.atleast_1d(fig.subplots(len(grids), 1)), grids, strict=True):
        _show(ax, grid, title)
    return _save(fig, path)


def prior_samples(model: VAE, rng: np.random.Generator, image_shape: Sequence[int] | None,
                  path: str | os.PathLike, n: int = 64, y=None) -> Path:
    """``n`` decoder means at z ~ N(0, I).

    For a conditional model ``y`` is one label or ``n`` labels; None cycles 0..K-1 along each
    row (K columns), so every column is one class.
    """
    h, w = _check_image_shape(image_shape, model.x_dim)
    n = _checks.positive_int("n", n)
    ncols = _square_cols(n)
    title = f"{n} samples from the prior (decoder mean at z ~ N(0, I))"
    if model.n_classes and y is None:
        y = np.arange(n) % model.n_classes
        ncols = model.n_classes
        title += f"\ncolumns: labels 0..{model.n_classes - 1}"
    elif y is not None:
        title += f"\nlabels {np.unique(y).tolist()}"
    y = _labels(model, "y", y, n, generating=True)
    grid = _tile(model.sample(n, rng, y), (h, w), ncols)
    fig, _ = _grid_figure(grid, title)
    return _save(fig, path)


def interpolation(model: VAE, x_a, x_b, image_shape: Sequence[int] | None,
                  path: str | os.PathLike, steps: int = 10, y_a=None, y_b=None) -> Path:
    """Decoder means along the straight line between the posterior means of ``x_a`` and ``x_b``.

    One row: x_a, then ``steps`` decodings at t = 0 .. 1 (endpoints included), then x_b. Each
    input is encoded with its own label; a conditional model decodes every step with ``y_a``'s
    label (``y_b`` defaults to ``y_a``), as the title says.
    """
    h, w = _check_image_shape(image_shape, model.x_dim)
    steps = _checks.positive_int("steps", steps)
    x_a = _one_row("x_a", x_a, model.x_dim)
    x_b = _one_row("x_b", x_b, model.x_dim)
    ya = _labels(model, "y_a", y_a, 1)
    yb = _labels(model, "y_b", y_a if y_b is None else y_b, 1)
    mu_a, _ = model.encode(x_a, ya)
    mu_b, _ = model.encode(x_b, yb)
    t = np.linspace(0.0, 1.0, steps, dtype=model.dtype)[:, None]
    z = (1 - t) * mu_a + t * mu_b  # (steps, d)
    y_path = None if ya is None else np.full(steps, ya[0])
    decoded = model.likelihood.mean(model.decode(z, y_path))
    grid = _tile(np.concatenate([x_a, decoded, x_b]), (h, w), steps + 2)
    title = f"Interpolation in z between posterior means, {steps} steps\ninputs at both ends"
    if ya is not None:
        title += f"; every step decoded with label {int(ya[0])} (y_a)"
    fig, _ = _grid_figure(grid, title)
    return _save(fig, path)


def latent_traversal(model: VAE, x, image_shape: Sequence[int] | None, path: str | os.PathLike,
                     values=None, y=None, kl=None, active=None) -> Path:
    """One row per latent dimension i: decoder means at z = mu with z_i = mu_i + v.

    ``mu`` is the posterior mean of the single input ``x``; ``values`` (default -3..3 in 9 steps,
    prior standard deviations) are the offsets v, one per column, named below the grid. ``kl``
    (optional, one number per dimension: ``kl_per_dimension`` of the test data) labels each row
    with its dimension's KL, and ``active`` (optional, one bool per dimension: Burda et al.'s
    active units, ``minivae.train.active_units``) marks the inactive rows: two views of a
    dimension the model barely uses (small KL: q stays near the prior; inactive: the posterior
    mean hardly moves with the data), whose images barely change. Of more than
    MAX_TRAVERSAL_ROWS dimensions, those with the largest KL are drawn (the first ones without
    ``kl``), as the title says.
    """
    h, w = _check_image_shape(image_shape, model.x_dim)
    values = np.linspace(-3, 3, 9) if values is None else values
    values = _checks.finite_array("values", values, ndim=1, dtype=model.dtype)
    if values.size == 0:
        raise ValueError("values must hold at least one offset, got an empty array")
    x = _one_row("x", x, model.x_dim)
    y = _labels(model, "y", y, 1)
    mu, _ = model.encode(x, y)
    d, k = model.z_dim, values.size
    if kl is not None:
        kl = _checks.finite_array("kl", kl, shape=(d,))
    if active is not None:
        active = np.asarray(active)
        if active.shape != (d,) or active.dtype != bool:
            raise ValueError(f"active must be {d} booleans (one per latent dimension), got dtype "
                             f"{active.dtype} shape {active.shape}")
    dims = np.arange(d)
    if d > MAX_TRAVERSAL_ROWS:
        dims = np.sort(np.argsort(-kl, kind="stable")[:MAX_TRAVERSAL_ROWS]) if kl is not None \
            else dims[:MAX_TRAVERSAL_ROWS]
    r = len(dims)
    z = np.repeat(mu, r * k, axis=0).reshape(r, k, d)
    z[np.arange(r), :, dims] += values  # row i moves only coordinate dims[i]
    y_all = None if y is None else np.full(r * k, y[0])
    decoded = model.likelihood.mean(model.decode(z.reshape(r * k, d), y_all))
    grid = _tile(decoded, (h, w), k)
    rows = [f"z{i + 1}" for i in dims]
    title = "Latent traversal: row i sets z_i = mu_i + v, mu = posterior mean"
    if r < d:
        title += (f"\nthe {r} of {d} dimensions with the largest KL" if kl is not None
                  else f"\nthe first {r} of {d} dimensions")
    if kl is not None:
        rows = [f"{name}  KL {v:.2f}" for name, v in zip(rows, kl[dims], strict=True)]
        title += "\nKL: each dimension's mean KL over the test data, nats"
    if active is not None:
        rows = [name if a else f"{name}  inactive" for name, a in zip(rows, active[dims], strict=True)]
        title += f"\n{int(active.sum())} of {d} units active (Var_x E_q[z_u|x] > 0.01)"
    # room for the row labels ("z12  KL 0.01  inactive": ~0.08 in a character at 10 pt)
    fig, ax = _grid_figure(grid, title, label_lines=1,
                           label_width_in=LABEL_CHAR_IN * max(len(name) for name in rows))
    scale = _display_scale((h, w))
    _label_rows(ax, rows, h * scale)
    _label_columns(ax, [f"{v:+.3g}" for v in values], w * scale)
    ax.tick_params(axis="x", labelsize="small")
    ax.set_xlabel("v (prior standard deviations)")
    return _save(fig, path)


def kl_per_dimension(model: VAE, x, y=None) -> np.ndarray:
    """Each latent dimension's KL(q(z_j|x) || N(0, 1)) averaged over the rows of ``x``, (d,) nats
    (``minivae.latent.kl_forward`` on one column at a time)."""
    mu, logvar = model.encode(x, _labels(model, "y", y, len(np.asarray(x))))
    mu, logvar = mu.astype(np.float64), logvar.astype(np.float64)
    return np.array([kl_forward(mu[:, j:j + 1], logvar[:, j:j + 1]).mean()
                     for j in range(model.z_dim)])


def manifold_2d(model: VAE, image_shape: Sequence[int] | None, path: str | os.PathLike,
                n: int = 15, y=None) -> Path:
    """Decoder means on an n x n grid of prior quantiles; only for z_dim == 2.

    Grid coordinates are Phi^-1((i + 1/2) / n): equal prior mass per cell, and never the infinite
    quantiles 0 and 1. z1 grows left to right, z2 bottom to top. A conditional model decodes the
    whole grid with the one label ``y``.
    """
    if model.z_dim != 2:
        raise ValueError(f"manifold_2d needs a model with z_dim = 2, got z_dim = {model.z_dim}")
    h, w = _check_image_shape(image_shape, model.x_dim)
    n = _checks.positive_int("n", n)
    y_all = _labels(model, "y", y, n * n, generating=True)
    normal = NormalDist()
    q = np.array([normal.inv_cdf((i + 0.5) / n) for i in range(n)], dtype=model.dtype)
    z1, z2 = np.meshgrid(q, q[::-1])  # top row holds the largest z2
    z = np.stack([z1.ravel(), z2.ravel()], axis=1)
    grid = _tile(model.likelihood.mean(model.decode(z, y_all)), (h, w), n)
    title = f"Decoder means on a {n}x{n} grid of prior quantiles"
    if y_all is not None:
        title += f", label {int(y_all[0])}"
    fig, ax = _grid_figure(grid, title, label_lines=1)
    ax.set_xlabel(f"z1: {q[0]:.2f} to {q[-1]:.2f}, left to right")
    ax.set_ylabel(f"z2: {q[0]:.2f} to {q[-1]:.2f}, bottom to top")
    return _save(fig, path)


def principal_components(a, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of the rows of ``a`` (N, d) on their first ``k`` principal axes, via SVD.

    Returns (coords (N, k), share of the total variance on each axis (k,)). With a - mean =
    U S V^T the axes are the rows of V^T and the coordinates U S; each axis's sign is fixed so its
    largest loading is positive, so the picture does not flip between runs.
    """
    k = _checks.positive_int("k", k)
    a = _checks.finite_array("a", a, ndim=2).astype(np.float64)
    if k > a.shape[1]:
        raise ValueError(f"k must be at most the number of columns {a.shape[1]}, got {k}")
    centred = a - a.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:k]
    axes *= np.sign(axes[np.arange(k), np.abs(axes).argmax(axis=1)])[:, None]
    total = float(np.sum(s**2))
    share = s[:k] ** 2 / total if total > 0 else np.zeros(k)
    return centred @ axes.T, share


def latent_scatter(model: VAE, x, y, path: str | os.PathLike) -> Path:
    """Posterior means of ``x`` coloured by label ``y``.

    z_dim 2: the two coordinates; z_dim > 2: the first two principal components of the means;
    z_dim 1: z1 against the label. Up to MAX_LEGEND_CLASSES integer labels get a legend, other
    labels a colorbar.
    """
    if y is None:
        raise ValueError("y is None: latent_scatter colours the points by label, give the labels")
    x = np.asarray(x)
    y_arr = np.asarray(y)
    if y_arr.shape != (len(x),) or not np.issubdtype(y_arr.dtype, np.number):
        raise ValueError(f"y must be {len(x)} numeric labels (one per row of x), got dtype "
                         f"{y_arr.dtype} shape {y_arr.shape}")
    mu, _ = model.encode(x, _labels(model, "y", y_arr, len(x)))
    mu = mu.astype(np.float64)
    if model.z_dim == 1:
        coords, xlabel, ylabel = np.stack([mu[:, 0], y_arr], axis=1), "z1", "label"
    elif model.z_dim == 2:
        coords, xlabel, ylabel = mu, "z1", "z2"
    else:
        coords, share = principal_components(mu, 2)
        xlabel = f"PC1 of the posterior means ({share[0]:.0%} of variance)"
        ylabel = f"PC2 ({share[1]:.0%} of variance)"
    fig = Figure(figsize=(7, 6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    classes = np.unique(y_arr)
    if np.issubdtype(y_arr.dtype, np.integer) and classes.size <= MAX_LEGEND_CLASSES:
        palette = matplotlib.colormaps["tab10" if classes.size <= 10 else "tab20"]
        for i, c in enumerate(classes):
            sel = y_arr == c
            ax.scatter(coords[sel, 0], coords[sel, 1], s=6, alpha=0.7, color=palette(i),
                       label=str(c))
        ax.legend(title="label", markerscale=2, fontsize="small", loc="best")
    else:
        points = ax.scatter(coords[:, 0], coords[:, 1], c=y_arr, s=6, alpha=0.7, cmap="viridis")
        fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    where = {1: "z1 against label", 2: "z1, z2"}.get(model.z_dim, f"PCA of {model.z_dim}-d means")
    ax.set_title(f"Posterior means of {len(x)} inputs ({where}), coloured by label")
    return _save(fig, path)


# Panels of the loss figure: (title, training key, validation key). The validation numbers are
# always -ELBO terms (beta = 1), so the first panel sets train -ELBO beside them; the objective
# optimised, recon + beta KL (``train_loss``), differs from -ELBO under beta != 1 or KL warm-up
# and is drawn apart, dashed and labelled as such, only where it differs.
LOSS_PANELS = (
    ("-ELBO = reconstruction + KL", "train_neg_elbo", "val_loss"),
    ("Reconstruction: -E_q[log p(x|z)]", "train_recon", "val_recon"),
    ("KL(q(z|x) || p(z))", "train_kl", "val_kl"),
)
OBJECTIVE_KEY = "train_loss"
OBJECTIVE_LABEL = "train objective: recon + beta KL"
IWAE_OBJECTIVE_LABEL = "train objective: -IWAE bound"


def loss_figure(metrics: Sequence[dict]) -> Figure:
    """The figure ``loss_curves`` saves: train and validation -ELBO, reconstruction and KL per
    epoch in three panels, plus the training objective in the first panel where it is not -ELBO.

    Each record needs ``epoch``; the ``train_*`` and ``val_*`` keys may be missing or None in any
    record (an epoch whose every step was skipped has no training numbers), and each curve shows
    only the epochs that have it. The objective is drawn only where beta is not 1.
    """
    if not isinstance(metrics, Sequence) or len(metrics) == 0:
        raise ValueError(f"metrics must be a non-empty list of records, got {metrics!r}")
    required = ("epoch",)
    for i, rec in enumerate(metrics):
        if not isinstance(rec, dict):
            raise ValueError(f"metrics[{i}] must be a dict, got {type(rec).__name__}")
        missing = [key for key in required if rec.get(key) is None]
        if missing:
            raise ValueError(f"metrics[{i}] lacks {', '.join(missing)} (has {sorted(rec)})")
    fig = Figure(figsize=(12, 3.8), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, (title, train_key, val_key) in zip(axes, LOSS_PANELS, strict=True):
        _plot_present(ax, metrics, train_key, label="train", marker="o", markersize=3)
        _plot_present(ax, metrics, val_key, label="validation", marker="o", markersize=3)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("nats per example")
        ax.grid(alpha=0.3)
    # beta = 1: the objective is -ELBO (to rounding), and a dashed copy would hide under it
    iwae = any(rec.get("objective") == "iwae" for rec in metrics)
    if iwae or any(rec.get(OBJECTIVE_KEY) is not None and rec.get("beta", 1.0) != 1.0
                   for rec in metrics):
        label = IWAE_OBJECTIVE_LABEL if iwae else OBJECTIVE_LABEL
        _plot_present(axes[0], metrics, OBJECTIVE_KEY, label=label, linestyle="--",
                      color="grey")
    for ax in axes:
        ax.legend(fontsize="small")
    fig.suptitle(f"Training curves over {len(metrics)} epochs")
    return fig


def _plot_present(ax: Axes, metrics: Sequence[dict], key: str, **style) -> None:
    """``key`` against epoch, for the records that have it."""
    points = [(rec["epoch"], rec[key]) for rec in metrics if rec.get(key) is not None]
    if points:
        xs, ys = np.array(points, dtype=np.float64).T
        ax.plot(xs, ys, **style)


def loss_curves(metrics: Sequence[dict], path: str | os.PathLike) -> Path:
    """Write ``loss_figure(metrics)`` (from metrics.jsonl records) as a PNG at ``path``."""
    return _save(loss_figure(metrics), path)


def class_grid(model: VAE, rng: np.random.Generator, image_shape: Sequence[int] | None,
               path: str | os.PathLike, per_class: int = 10) -> Path:
    """One row per class: ``per_class`` decoder means at z ~ N(0, I) with that label."""
    if model.n_classes == 0:
        raise ValueError("class_grid needs a conditional model (n_classes > 0), got n_classes = 0")
    h, w = _check_image_shape(image_shape, model.x_dim)
    per_class = _checks.positive_int("per_class", per_class)
    k = model.n_classes
    y = np.repeat(np.arange(k), per_class)
    grid = _tile(model.sample(k * per_class, rng, y), (h, w), per_class)
    fig, ax = _grid_figure(grid, f"Prior samples per class ({per_class} per row, z ~ N(0, I))")
    _label_rows(ax, [str(c) for c in range(k)], h * _display_scale((h, w)))
    ax.set_ylabel("label")
    return _save(fig, path)


def make_all(model: VAE, test_x, test_y, image_shape: Sequence[int] | None,
             outdir: str | os.PathLike, rng: np.random.Generator,
             metrics: Sequence[dict] | None = None, originals=None,
             active=None) -> list[Path]:
    """Write every picture that applies into ``outdir`` (named as in FILENAMES); return the paths.

    Image pictures need ``image_shape`` (skipped when it is None); the manifold needs z_dim == 2;
    the class grid a conditional model; the scatter labels; the loss curves ``metrics``. The
    interpolation runs from the first test input to the first with a different label (or the
    second input), the traversal walks around the first and labels its rows with each
    dimension's KL over ``test_x`` (and marks the inactive ones when ``active``, one bool per
    dimension, is given). ``originals``: the grey images ``test_x`` was binarised from, shown
    above the reconstructions.
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if model.n_classes and test_y is None:
        raise ValueError("test_y is None but the model is conditional: its pictures need labels")
    outdir = Path(outdir)
    test_x = np.asarray(test_x)
    if test_x.ndim != 2 or len(test_x) == 0:
        raise ValueError(f"test_x must be a non-empty (N, D) array, got shape {test_x.shape}")
    test_y = None if test_y is None else np.asarray(test_y)
    written: list[Path] = []
    if image_shape is not None:
        _check_image_shape(image_shape, model.x_dim)
        y0 = None if test_y is None else test_y[0]
        b = 1 if len(test_x) > 1 else 0
        if test_y is not None and np.any(test_y != y0):
            b = int(np.argmax(test_y != y0))
        yb = None if test_y is None else test_y[b]
        written += [
            reconstructions(model, test_x, test_y, image_shape,
                            outdir / FILENAMES["reconstructions"], originals=originals),
            prior_samples(model, rng, image_shape, outdir / FILENAMES["samples"]),
            interpolation(model, test_x[0], test_x[b], image_shape,
                          outdir / FILENAMES["interpolation"], y_a=y0, y_b=yb),
            latent_traversal(model, test_x[0], image_shape, outdir / FILENAMES["traversal"], y=y0,
                             kl=kl_per_dimension(model, test_x, test_y), active=active),
        ]
        if model.z_dim == 2:
            y_manifold = None if model.n_classes == 0 else int(y0)
            written.append(manifold_2d(model, image_shape, outdir / FILENAMES["manifold"],
                                       y=y_manifold))
    if test_y is not None:
        written.append(latent_scatter(model, test_x, test_y, outdir / FILENAMES["latent_scatter"]))
    if metrics:
        written.append(loss_curves(metrics, outdir / FILENAMES["loss_curves"]))
    if image_shape is not None and model.n_classes:
        written.append(class_grid(model, rng, image_shape, outdir / FILENAMES["class_grid"]))
    return written
