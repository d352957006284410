"""Data for minivae: what a data set is (``Dataset``), where one comes from (``load_dataset``: the
built-in data sets UCI digits, MNIST, Fashion-MNIST and KMNIST, or the user's own .npy, .npz,
.h5/.hdf5 files and folders of PNG images), how it is split (``split``) and binarised
(``Binarizer``), and how the MNIST family is downloaded and verified (``fetch``).

The readers of the files themselves (the IDX format, the user's arrays and images, each treated as
hostile input) are ``minivae.readers``.

Values: pixels stored as integers 0..255 are divided by 255; binary 0/1 data and floats already in
[0, 1] are kept; other values (say standardised features) are kept as they are, with
``Dataset.scaled = False``, so that only a Gaussian likelihood is offered them.
"""

from __future__ import annotations

import hashlib
import http.client
import math
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from minivae._checks import is_int
from minivae._files import atomic_write

PathLike = str | os.PathLike[str]

BUILTIN = ("digits", "mnist", "fashion-mnist", "kmnist")

# The four files of an MNIST-style data set, without their optional ".gz".
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# name -> (base URL, {file: (bytes, SHA-256)}). Sizes and SHA-256 sums as recorded by
# tensorflow/datasets (url_checksums/{mnist,fashion_mnist,kmnist}.txt); they are the same files
# whose MD5s torchvision lists, i.e. the originals, whichever mirror serves them. MNIST comes from
# the S3 mirror torchvision uses because the original host is often unreachable.
SOURCES: dict[str, tuple[str, dict[str, tuple[int, str]]]] = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte.gz":
            (9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        "train-labels-idx1-ubyte.gz":
            (28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        "t10k-images-idx3-ubyte.gz":
            (1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        "t10k-labels-idx1-ubyte.gz":
            (4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    }),
    # The bucket's website endpoint only speaks http; the SHA-256 check is what we trust.
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte.gz":
            (26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        "train-labels-idx1-ubyte.gz":
            (29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        "t10k-images-idx3-ubyte.gz":
            (4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        "t10k-labels-idx1-ubyte.gz":
            (5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    }),
    "kmnist": ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/", {
        "train-images-idx3-ubyte.gz":
            (18165135, "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4"),
        "train-labels-idx1-ubyte.gz":
            (29497, "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17"),
        "t10k-images-idx3-ubyte.gz":
            (3041136, "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5"),
        "t10k-labels-idx1-ubyte.gz":
            (5120, "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c"),
    }),
}

CHUNK_BYTES = 1 << 20  # read and hash in 1 MiB steps: memory grows with the data actually present
DOWNLOAD_TIMEOUT_S = 60.0


class DataError(ValueError):
    """Bad or missing data; the message is one line naming the file or argument."""


@dataclass
class Dataset:
    """Rows of data, optionally labelled.

    x:            float32 (N, D). In [0, 1] when ``scaled``; raw values otherwise.
    y:            int64 (N,) labels in 0..n_classes-1, or None.
    image_shape:  (H, W) when each row is an image flattened in C order, else None.
    n_classes:    number of classes (0 without labels).
    test_start:   row where an official test set begins (rows before it are the official training
                  set), or None; ``split`` keeps that test set whole.
    scaled:       True when every value lies in [0, 1] (a Bernoulli likelihood fits).
    class_names:  names of the classes in label order, where known (the sub-folders of a PNG
                  folder), else None.
    notes:        what reading changed that the user may not expect (colour images made grey),
                  one line each; training prints them.
    """

    name: str
    x: np.ndarray
    y: np.ndarray | None
    image_shape: tuple[int, int] | None
    n_classes: int
    test_start: int | None = None
    scaled: bool = True
    class_names: tuple[str, ...] | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.x.ndim != 2:
            raise DataError(f"Dataset {self.name!r}: x must be 2-D (N, D), "
                            f"got shape {self.x.shape}")
        if self.y is not None and self.y.shape != (self.x.shape[0],):
            raise DataError(f"Dataset {self.name!r}: y must have shape ({self.x.shape[0]},) to "
                            f"match x, got {self.y.shape}")
        if self.image_shape is not None and math.prod(self.image_shape) != self.x.shape[1]:
            raise DataError(f"Dataset {self.name!r}: image_shape {self.image_shape} holds "
                            f"{math.prod(self.image_shape)} pixels, expected D = {self.x.shape[1]}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, index: np.ndarray) -> Dataset:
        """The rows ``index`` as a new Dataset (no official test set any more)."""
        return replace(self, x=self.x[index], y=None if self.y is None else self.y[index],
                       test_start=None)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def load_dataset(name_or_path: PathLike, *, data_dir: PathLike | None = None,
                 key: str | None = None) -> Dataset:
    """Load a built-in data set by name, or the user's data from a path.

    Built-ins (these names win over a file of the same name; write ./mnist for the file):
      digits                        8x8 UCI digits shipped with scikit-learn, 1797 rows.
      mnist, fashion-mnist, kmnist  the four IDX files (raw or .gz) in <data_dir>/<name>/; rows are
                                    the 60000 official training images then the 10000 official test
                                    images, ``test_start`` = 60000 marks the boundary.
    Paths: .npy ((N, D) or (N, H, W)), .npz and .h5/.hdf5 (array ``key``, default "x" or the only
    array; labels from an array named "y" or "labels" when present), or a folder of PNGs
    (<folder>/*.png, or <folder>/<label>/*.png with labels in sorted folder order).
    """
    from minivae import readers

    name = os.fspath(name_or_path)
    if name in BUILTIN:
        if key is not None:
            raise DataError(f"key={key!r} given for built-in data set {name!r}; expected no key "
                            "(keys select arrays in .npz and .h5 files)")
        return _load_digits() if name == "digits" else _load_mnist_family(name, data_dir)
    path = Path(name).expanduser()
    if path.is_dir():
        return readers.load_png_folder(path, key)
    if not path.is_file():
        raise DataError(f"data {name!r} is neither a built-in ({', '.join(BUILTIN)}) nor an "
                        "existing file or folder")
    readers: dict[str, Callable[[Path, str | None], Dataset]] = {
        ".npy": readers.load_npy, ".npz": readers.load_npz, ".h5": readers.load_h5,
        ".hdf5": readers.load_h5,
    }
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unknown file type {path.suffix!r}, expected .npy, .npz, .h5, "
                        ".hdf5 or a folder of .png images")
    return reader(path, key)


# ---------------------------------------------------------------------------------------------
# Splits and binarisation
# ---------------------------------------------------------------------------------------------

def _fraction(name: str, value: object) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        v = math.nan
    if not 0 <= v < 1:
        raise DataError(f"{name} must be a number in [0, 1), got {value!r}")
    return v


def _count(fraction: float, n: int) -> int:
    # a positive fraction always gets at least one row, so a small data set still validates
    return max(1, round(fraction * n)) if fraction > 0 else 0


def split(ds: Dataset, *, val_fraction: float = 0.1, test_fraction: float = 0.1,
          seed: int = 0) -> tuple[Dataset, Dataset, Dataset]:
    """(train, val, test), disjoint and covering ``ds``, drawn by np.random.default_rng(seed).

    When ``ds`` has an official test set (``test_start``: MNIST, Fashion-MNIST, KMNIST) that set
    is the test part, whole, and ``test_fraction`` is not used, so test numbers compare with
    published ones; ``val_fraction`` of the official training rows become the validation part.
    Otherwise ``test_fraction`` and ``val_fraction`` of all rows are drawn. A positive fraction
    gets at least one row. Each part keeps the original row order.
    """
    val_f = _fraction("val_fraction", val_fraction)
    test_f = _fraction("test_fraction", test_fraction)
    if not is_int(seed) or seed < 0:
        raise DataError(f"seed must be an integer >= 0, got {seed!r}")
    rng = np.random.default_rng(seed)
    n = len(ds)
    if ds.test_start is not None:
        perm = rng.permutation(ds.test_start)
        test = np.arange(ds.test_start, n)
        n_val = _count(val_f, ds.test_start)
    else:
        if val_f + test_f >= 1:
            raise DataError(f"val_fraction + test_fraction must be below 1, got {val_f} + {test_f}")
        perm = rng.permutation(n)
        n_test, n_val = _count(test_f, n), _count(val_f, n)
        test, perm = np.sort(perm[:n_test]), perm[n_test:]
    val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    if len(train) == 0:
        raise DataError(f"split of {ds.name!r} ({n} rows) with val_fraction={val_fraction} and "
                        f"test_fraction={test_fraction} leaves no training rows; expected smaller "
                        "fractions or more data")
    return ds.take(train), ds.take(val), ds.take(test)


class Binarizer:
    """Turns grey values x in [0, 1] into binary samples b ~ Bernoulli(x).

    none:     x unchanged.
    static:   one fixed draw, the same every epoch (the fixed binarisation of Salakhutdinov &
              Murray, 2008). It is the draw of np.random.default_rng(seed), i.e. dynamic's epoch 0.
    dynamic:  a fresh draw every epoch from np.random.default_rng([seed, epoch]), so a run resumed
              at any epoch redraws exactly what the uninterrupted run drew.
    The draw is keyed by position in ``x``: call it on the whole split, not on mini-batches.
    """

    MODES = ("none", "static", "dynamic")

    def __init__(self, mode: str, seed: int = 0) -> None:
        if mode not in self.MODES:
            raise DataError(f"binarize mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        if not is_int(seed) or seed < 0:
            raise DataError(f"Binarizer seed must be an integer >= 0, got {seed!r}")
        self.mode, self.seed = mode, int(seed)

    def __call__(self, x: np.ndarray, epoch: int) -> np.ndarray:
        if not is_int(epoch) or epoch < 0:
            raise DataError(f"epoch must be an integer >= 0, got {epoch!r}")
        if self.mode == "none":
            return x
        if x.size and (x.min() < 0 or x.max() > 1):
            raise DataError(f"Binarizer({self.mode!r}) needs x in [0, 1], got values in "
                            f"[{x.min():.4g}, {x.max():.4g}]")
        rng = np.random.default_rng(self.seed if self.mode == "static" else [self.seed, epoch])
        u = rng.random(x.shape, dtype=np.float32)
        out_dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float32)
        return (u < x).astype(out_dtype)  # P(u < x) = x for u ~ U[0, 1)


# ---------------------------------------------------------------------------------------------
# Built-ins
# ---------------------------------------------------------------------------------------------

def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # UCI digits are counts of set pixels in 4x4 blocks: 0..16
    x = (bunch.data / 16.0).astype(np.float32)
    return Dataset(name="digits", x=x, y=bunch.target.astype(np.int64), image_shape=(8, 8),
                   n_classes=10)


def _load_mnist_family(name: str, data_dir: PathLike | None) -> Dataset:
    from minivae import readers

    folder = default_data_dir(data_dir) / name
    paths = {}
    for base in IDX_FILES:
        found = _find_idx(folder, base)
        if found is None:
            raise DataError(f"{name}: {base}.gz (or {base}) is missing from {folder}; run "
                            f"`minivae data fetch {name}` or put the four IDX files there by hand")
        paths[base] = found
    images, labels = [], []
    for part in ("train", "t10k"):
        img_path, lab_path = paths[f"{part}-images-idx3-ubyte"], paths[f"{part}-labels-idx1-ubyte"]
        img, lab = readers.read_idx(img_path), readers.read_idx(lab_path)
        if img.dtype != np.uint8 or img.ndim != 3 or 0 in img.shape:
            raise DataError(f"{img_path}: {img.dtype} array of shape {img.shape}, expected "
                            "unsigned bytes of shape (N, H, W), N, H, W > 0")
        if lab.dtype != np.uint8 or lab.shape != img.shape[:1]:
            raise DataError(f"{lab_path}: {lab.dtype} array of shape {lab.shape}, expected "
                            f"unsigned bytes of shape ({img.shape[0]},), one per image")
        if lab.max() > 9:
            raise DataError(f"{lab_path}: label {lab.max()}, expected labels 0..9")
        if images and img.shape[1:] != images[0].shape[1:]:
            raise DataError(f"{img_path}: images of {img.shape[1:]} pixels, expected "
                            f"{images[0].shape[1:]} like the training images")
        images.append(img)
        labels.append(lab)
    n_train, (h, w) = len(images[0]), images[0].shape[1:]
    x = np.divide(np.concatenate(images).reshape(-1, h * w), np.float32(255), dtype=np.float32)
    return Dataset(name=name, x=x, y=np.concatenate(labels).astype(np.int64), image_shape=(h, w),
                   n_classes=10, test_start=n_train)


# ---------------------------------------------------------------------------------------------
# Where the data lives
# ---------------------------------------------------------------------------------------------

def default_data_dir(data_dir: PathLike | None = None) -> Path:
    """``data_dir`` (from --data-dir) if given, else $MINIVAE_DATA, else the per-user cache
    ($XDG_CACHE_HOME or ~/.cache) / minivae."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("MINIVAE_DATA")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # the XDG spec says a relative value is invalid and must be ignored
    cache = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return cache / "minivae"


def _find_idx(folder: Path, base: str) -> Path | None:
    """The raw or gzipped copy of IDX file ``base`` in ``folder`` (raw first: faster to read)."""
    for candidate in (folder / base, folder / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def list_datasets(data_dir: PathLike | None = None) -> list[dict[str, Any]]:
    """One row per built-in: name, present, path (None for digits), missing files, source."""
    root = default_data_dir(data_dir)
    rows: list[dict[str, Any]] = [{"name": "digits", "present": True, "path": None, "missing": [],
                                   "source": "ships with scikit-learn"}]
    for name, (base_url, _) in SOURCES.items():
        folder = root / name
        missing = [f"{base}.gz" for base in IDX_FILES if _find_idx(folder, base) is None]
        rows.append({"name": name, "present": not missing, "path": str(folder),
                     "missing": missing, "source": base_url})
    return rows


# ---------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------

def _open_url(url: str, timeout: float) -> IO[bytes]:
    """minivae's only network call (tests replace it)."""
    return urllib.request.urlopen(url, timeout=timeout)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path, size: int, sha256: str, by_hand: str, progress: bool) -> None:
    """Stream ``url`` into a temporary file beside ``dest``, check its size and SHA-256, and only
    then move it into place (``atomic_write``), so ``dest`` is either absent or complete and
    verified."""
    from tqdm import tqdm

    def stream(out) -> None:
        digest, got = hashlib.sha256(), 0
        try:
            with _open_url(url, DOWNLOAD_TIMEOUT_S) as resp, \
                    tqdm(total=size, unit="B", unit_scale=True, desc=dest.name,
                         disable=not progress, leave=False) as bar:
                while chunk := resp.read(CHUNK_BYTES):
                    got += len(chunk)
                    if got > size:
                        raise DataError(f"{url} sent more than the expected {size} bytes; the "
                                        f"download was discarded; {by_hand}")
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as err:  # URLError and timeouts are OSErrors
            raise DataError(f"could not download {url} ({type(err).__name__}: {err}); "
                            f"{by_hand}") from err
        if digest.hexdigest() != sha256:
            raise DataError(f"{url}: SHA-256 {digest.hexdigest()} ({got} bytes) does not match the "
                            f"expected {sha256} ({size} bytes); the download was discarded; "
                            f"{by_hand}")

    try:
        atomic_write(dest, stream)
    except OSError as err:  # the temporary file could not be made, synced or renamed
        raise DataError(f"could not save {url} as {dest} ({err.strerror or err}); "
                        f"{by_hand}") from err


def fetch(name: str, data_dir: PathLike | None = None, *, progress: bool = True) -> Path:
    """Download the four IDX .gz files of ``name`` (mnist, fashion-mnist or kmnist) into
    <data_dir>/<name>/, verifying each SHA-256; files already there and valid are kept.
    Returns the folder. Without network, raises DataError saying which files to put where."""
    if name not in SOURCES:
        hint = " (digits ships with scikit-learn: nothing to fetch)" if name == "digits" else ""
        raise DataError(f"cannot fetch {name!r}{hint}, expected one of {', '.join(SOURCES)}")
    base_url, files = SOURCES[name]
    folder = default_data_dir(data_dir) / name
    by_hand = (f"to install by hand, download {', '.join(files)} from {base_url} and put them in "
               f"{folder}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create {folder} ({err}); expected a writable data directory "
                        "(--data-dir or $MINIVAE_DATA)") from err
    for file_name, (size, sha256) in files.items():
        dest = folder / file_name
        if (folder / file_name.removesuffix(".gz")).is_file():
            continue  # an uncompressed copy put there by hand; read_idx checks it on loading
        if dest.is_file() and dest.stat().st_size == size and _sha256(dest) == sha256:
            continue
        _download(base_url + file_name, dest, size, sha256, by_hand, progress)
    return folder
