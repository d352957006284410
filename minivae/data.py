"""Data for minivae: the built-in data sets (UCI digits, MNIST, Fashion-MNIST, KMNIST), the user's
own arrays (.npy, .npz, .h5/.hdf5, a folder of PNG images), the IDX reader and writer, seeded splits
and binarisation.

Every reader treats its file as hostile. It compares the sizes a header declares with the bytes the
file can hold *before* allocating, never unpickles, and turns any malformed input into one
``DataError`` line that names the file, what was wrong and what was expected.

Values: pixels stored as integers 0..255 are divided by 255; binary 0/1 data and floats already in
[0, 1] are kept; other values (say standardised features) are kept as they are, with
``Dataset.scaled = False``, so that only a Gaussian likelihood is offered them.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import struct
import urllib.request
import zipfile
import zlib
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

# IDX type byte -> big-endian element type (the format is big-endian throughout).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {(dt.kind, dt.itemsize): code for code, dt in IDX_DTYPES.items()}

# DEFLATE cannot expand data by more than about 1032:1 (a 258-byte match costs at least 2 bits),
# so a compressed file of n bytes cannot honestly hold more than this many times n. Declared sizes
# above that are lies, refused before anything is allocated.
MAX_DEFLATE_RATIO = 1032
CHUNK_BYTES = 1 << 20  # read and hash in 1 MiB steps: memory grows with the data actually present
DOWNLOAD_TIMEOUT_S = 60.0
LABEL_KEYS = ("y", "labels")  # arrays taken as labels when a .npz/.h5 file holds them
H5_HINT = "pip install minivae[hdf5]"


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
# IDX
# ---------------------------------------------------------------------------------------------

def _read_upto(f: IO[bytes], n: int) -> bytes:
    """Up to ``n`` bytes from ``f``, in chunks, so a short file costs only what it holds."""
    parts, got = [], 0
    while got < n:
        part = f.read(min(CHUNK_BYTES, n - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _parse_idx(f: IO[bytes], what: str, capacity: int, exact: bool) -> np.ndarray:
    """Read one IDX array from ``f``, which can hold at most ``capacity`` bytes in all (exactly
    that many when ``exact``, i.e. for an uncompressed file of known size)."""
    head = _read_upto(f, 4)
    if len(head) < 4:
        raise DataError(f"{what}: truncated IDX header ({len(head)} bytes), expected at least 4")
    if head[:2] != b"\x00\x00":
        raise DataError(f"{what}: wrong magic {head[:2].hex(' ')}, expected 00 00 (not an IDX "
                        "file, or still compressed without a .gz name)")
    code, ndim = head[2], head[3]
    if code not in IDX_DTYPES:
        raise DataError(f"{what}: unknown IDX type code 0x{code:02X}, expected one of "
                        + ", ".join(f"0x{c:02X}" for c in IDX_DTYPES))
    if ndim == 0:
        raise DataError(f"{what}: IDX header declares 0 dimensions, expected at least 1")
    raw_dims = _read_upto(f, 4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{what}: truncated IDX header, {ndim} dimensions declared but only "
                        f"{len(raw_dims) // 4} present")
    dims = struct.unpack(f">{ndim}I", raw_dims)
    dtype = IDX_DTYPES[code]
    need = math.prod(dims) * dtype.itemsize  # a Python int: no overflow for lying headers
    room = capacity - 4 - 4 * ndim
    if need > room or (exact and need != room):
        raise DataError(f"{what}: IDX header declares shape {dims} of {dtype.name} = {need} data "
                        f"bytes, but the file {'holds' if exact else 'can hold at most'} {room}")
    data = _read_upto(f, need)
    if len(data) < need:
        raise DataError(f"{what}: truncated, {len(data)} of the {need} data bytes its IDX header "
                        "declares are present")
    if f.read(1):
        raise DataError(f"{what}: extra bytes after the {need} data bytes its IDX header declares")
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (gzipped when the name ends in .gz) into a native-endian array.

    IDX layout: bytes 0 0, a type code (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int, 0x0D float,
    0x0E double), the number of dimensions, then each dimension as a big-endian uint32, then the
    data, big-endian, C order. Raises DataError on anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such IDX file")
    size = path.stat().st_size
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return _parse_idx(f, str(path), size * MAX_DEFLATE_RATIO, exact=False)
        with path.open("rb") as f:
            return _parse_idx(f, str(path), size, exact=True)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: unreadable ({type(err).__name__}: {err}); expected an IDX file"
                        + (" compressed with gzip" if path.name.endswith(".gz") else "")) from err


def write_idx(path: PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzipped when the name ends in .gz (reproducibly: mtime 0)."""
    path = Path(path)
    arr = np.asarray(array)
    code = _IDX_CODES.get((arr.dtype.kind, arr.dtype.itemsize))
    if code is None:
        raise DataError(f"write_idx: array dtype {arr.dtype} has no IDX type code, expected one of "
                        + ", ".join(dt.name for dt in IDX_DTYPES.values()))
    if not 1 <= arr.ndim <= 255 or any(d >= 2**32 for d in arr.shape):
        raise DataError(f"write_idx: array shape {arr.shape} does not fit IDX, expected 1 to 255 "
                        "dimensions each below 2**32")
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + np.ascontiguousarray(arr, dtype=IDX_DTYPES[code]).tobytes()
    if path.name.endswith(".gz"):
        with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


# ---------------------------------------------------------------------------------------------
# Turning arrays into a Dataset
# ---------------------------------------------------------------------------------------------

def _check_dtype(what: str, dtype: np.dtype) -> None:
    # b: bool, i/u: integers, f: floats; everything else (object, strings, records, complex,
    # dates) has no meaning as pixel or feature values, and object would need unpickling.
    if dtype.kind not in "biuf":
        raise DataError(f"{what}: dtype {dtype} is not numeric, expected integer, float or bool")


def _check_shape(what: str, shape: tuple[int, ...]) -> None:
    if len(shape) not in (2, 3):
        raise DataError(f"{what}: shape {shape} has {len(shape)} dimensions, expected 2 (N, D) "
                        "or 3 (N, H, W) images")
    if any(s < 0 for s in shape) or math.prod(shape) == 0:
        raise DataError(f"{what}: shape {shape} holds no values, expected a non-empty array")


def _features(what: str, arr: np.ndarray) -> tuple[np.ndarray, tuple[int, int] | None, bool]:
    """(x float32 (N, D), image_shape, scaled) from an (N, D) or (N, H, W) numeric array."""
    _check_dtype(what, arr.dtype)
    _check_shape(what, arr.shape)
    image_shape = (int(arr.shape[1]), int(arr.shape[2])) if arr.ndim == 3 else None
    flat = arr.reshape(arr.shape[0], -1)
    lo, hi = flat.min(), flat.max()
    if arr.dtype.kind in "iu" and lo >= 0 and hi <= 255 and hi > 1:
        # 8-bit pixels, whatever integer type they were stored in; 0/1 data stays binary
        return np.divide(flat, np.float32(255), dtype=np.float32), image_shape, True
    with np.errstate(over="ignore"):  # overflow to inf is caught just below, with its position
        x = flat.astype(np.float32)
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise DataError(f"{what}: value {flat[tuple(bad)]} at row {bad[0]}, column {bad[1]} is "
                        "not finite in float32, expected finite numbers")
    return x, image_shape, bool(x.min() >= 0 and x.max() <= 1)


def _labels(what: str, arr: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """(y int64, n_classes) from a 1-D array of non-negative integer labels, one per row."""
    if arr.dtype.kind not in "iu" or arr.shape != (n,):
        raise DataError(f"{what}: labels of dtype {arr.dtype} and shape {arr.shape}, expected "
                        f"integers of shape ({n},), one per row")
    if arr.min() < 0:
        raise DataError(f"{what}: label {arr.min()} is negative, expected labels 0..K-1")
    y = arr.astype(np.int64)
    return y, int(y.max()) + 1


def _dataset(name: str, what: str, arr: np.ndarray, labels: np.ndarray | None,
             label_what: str = "", class_names: tuple[str, ...] | None = None,
             notes: tuple[str, ...] = ()) -> Dataset:
    x, image_shape, scaled = _features(what, arr)
    y, n_classes = (None, 0) if labels is None else _labels(label_what, labels, len(x))
    return Dataset(name=name, x=x, y=y, image_shape=image_shape, n_classes=n_classes,
                   scaled=scaled, class_names=class_names, notes=notes)


def _pick_key(what: str, keys: list[str], key: str | None, kind: str) -> tuple[str, str | None]:
    """(data key, label key or None) from the keys of a .npz or .h5 file: ``key`` if given, else
    "x", else the only array that is not labels."""
    if key is None:
        others = [k for k in keys if k not in LABEL_KEYS]
        if "x" in keys:
            key = "x"
        elif len(others) == 1:
            key = others[0]
        else:
            raise DataError(f"{what} holds {kind} {', '.join(keys) or '(none)'}; pass key= "
                            "(--key) to choose one")
    elif key not in keys:
        raise DataError(f"{what}: key {key!r} not found; {kind} present: "
                        f"{', '.join(keys) or '(none)'}")
    label_key = next((k for k in LABEL_KEYS if k in keys and k != key), None)
    return key, label_key


# ---------------------------------------------------------------------------------------------
# Readers for the user's files
# ---------------------------------------------------------------------------------------------

def _check_npy_header(fp: IO[bytes], capacity: int, what: str, data: bool) -> None:
    """Parse the .npy header at ``fp`` and refuse, before any allocation, what is not a numeric
    array, would need unpickling, or declares more bytes than the ``capacity`` bytes the file can
    hold. ``data``: also check the shape is one minivae can train on."""
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise DataError(f"{what}: .npy format version {version[0]}.{version[1]}, expected 1.0 "
                            "or 2.0 (a plain numeric array)")
    except DataError:
        raise
    # The header is a Python literal parsed by tokenize and ast: hostile text makes them raise
    # TokenError, SyntaxError, RecursionError and more; any of them means "not a .npy header".
    except Exception as err:
        raise DataError(f"{what}: bad .npy header ({type(err).__name__}: {err}); expected a file "
                        "written by numpy.save") from err
    _check_dtype(what, dtype)
    if data:
        _check_shape(what, shape)
    need = math.prod(shape) * dtype.itemsize
    room = capacity - fp.tell()
    if any(s < 0 for s in shape) or need > room:
        raise DataError(f"{what}: header declares shape {shape} of {dtype} = {need} bytes but the "
                        f"file can hold at most {room}; it is truncated or corrupt")


# What parsers of numpy, zipfile, gzip and h5py raise on malformed input. Not MemoryError: every
# reader refuses a size its file cannot hold by arithmetic before allocating, so a MemoryError is a
# bug in that check (or an honest file too big for this machine) and must not pass for bad data.
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile, zlib.error,
                struct.error, RuntimeError)


def _load_npy(path: Path, key: str | None) -> Dataset:
    if key is not None:
        raise DataError(f"{path}: key={key!r} given, but a .npy file holds one array; "
                        "expected no key (keys select arrays in .npz and .h5 files)")
    try:
        with path.open("rb") as fp:
            _check_npy_header(fp, path.stat().st_size, str(path), data=True)
        arr = np.load(path, allow_pickle=False)
    except DataError:
        raise
    except _READ_ERRORS as err:
        raise DataError(f"{path}: unreadable ({type(err).__name__}: {err}); expected a .npy file "
                        "written by numpy.save") from err
    return _dataset(path.stem, str(path), arr, None)


def _npz_member(zf: zipfile.ZipFile, archive_size: int, key: str, what: str, data: bool) -> None:
    """Check the header of array ``key`` inside an open .npz against what its member can hold."""
    info = zf.getinfo(f"{key}.npy")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        # numpy writes only these two; the size bound below holds only for them
        raise DataError(f"{what}: zip compression method {info.compress_type}, expected stored or "
                        "deflated (as numpy.savez and numpy.savez_compressed write)")
    # the member's declared sizes are themselves untrusted: bound them by the archive's real size
    stored = min(info.compress_size, archive_size)
    ratio = 1 if info.compress_type == zipfile.ZIP_STORED else MAX_DEFLATE_RATIO
    capacity = min(info.file_size, stored * ratio)
    with zf.open(info) as fp:
        _check_npy_header(fp, capacity, what, data)


def _load_npz(path: Path, key: str | None) -> Dataset:
    try:
        with zipfile.ZipFile(path) as zf:
            keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
            key, label_key = _pick_key(str(path), keys, key, "arrays")
            size = path.stat().st_size
            _npz_member(zf, size, key, f"{path}[{key}]", data=True)
            if label_key is not None:
                _npz_member(zf, size, label_key, f"{path}[{label_key}]", data=False)
        with np.load(path, allow_pickle=False) as z:
            arr = z[key]
            labels = None if label_key is None else z[label_key]
    except DataError:
        raise
    except _READ_ERRORS as err:
        raise DataError(f"{path}: unreadable ({type(err).__name__}: {err}); expected a .npz file "
                        "written by numpy.savez") from err
    return _dataset(path.stem, f"{path}[{key}]", arr, labels, f"{path}[{label_key}]")


def _load_h5(path: Path, key: str | None) -> Dataset:
    try:
        import h5py
    except ImportError:
        raise DataError(f"{path}: reading HDF5 needs h5py, which is not installed; "
                        f"{H5_HINT}") from None
    size = path.stat().st_size

    def read(f: Any, k: str) -> np.ndarray:
        ds = f[k]
        if ds.shape is None:
            raise DataError(f"{path}[{k}]: an empty (null) dataset, expected an array")
        if ds.is_virtual or ds.external is not None:
            raise DataError(f"{path}[{k}]: its data lives in other files (a virtual or external "
                            "dataset), expected a dataset stored inside this file")
        # Unfiltered data is stored byte for byte; filtered (compressed) data is bounded by the
        # DEFLATE ratio. Python ints: a lying shape cannot overflow the product.
        filtered = ds.id.get_create_plist().get_nfilters() > 0
        room = size * (MAX_DEFLATE_RATIO if filtered else 1)
        need = math.prod(ds.shape) * ds.dtype.itemsize
        if need > room:
            raise DataError(f"{path}[{k}]: declares shape {ds.shape} of {ds.dtype} = {need} bytes, "
                            f"more than a {size}-byte file can hold ({room} bytes"
                            f"{' compressed' if filtered else ''})")
        _check_dtype(f"{path}[{k}]", ds.dtype)
        return ds[()]

    try:
        with h5py.File(path, "r") as f:
            keys: list[str] = []
            f.visititems(lambda n, obj: keys.append(n) if isinstance(obj, h5py.Dataset) else None)
            key, label_key = _pick_key(str(path), keys, key, "datasets")
            arr = read(f, key)
            labels = None if label_key is None else read(f, label_key)
    except DataError:
        raise
    except _READ_ERRORS as err:
        raise DataError(f"{path}: unreadable ({type(err).__name__}: {err}); expected an HDF5 "
                        "file") from err
    return _dataset(path.stem, f"{path}[{key}]", np.asarray(arr), labels, f"{path}[{label_key}]")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # IHDR colour type -> samples per pixel


def _check_png_header(path: Path) -> None:
    """Refuse, before any pixel is decoded, a PNG whose IHDR declares more image data than the file
    can hold: at least H rows of 1 filter byte + ceil(W bits / 8) bytes, DEFLATE-compressed."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return  # not a PNG header at all: Pillow's refusal names what is wrong
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    bits = depth * PNG_CHANNELS.get(colour, 1)
    need = height * (1 + -(-width * bits // 8))
    if need > size * MAX_DEFLATE_RATIO:
        raise DataError(f"{path}: PNG header declares {width}x{height} pixels of {bits} bits = "
                        f"{need} bytes of image data, but a {size}-byte file can hold at most "
                        f"{size * MAX_DEFLATE_RATIO}; it is truncated or corrupt")


# PNG modes that are grey already (Pillow's names): any other (RGB, RGBA, a palette, grey with
# alpha) is converted to grey, and the data set says so in its notes.
GREY_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L")


def _read_png(path: Path) -> tuple[np.ndarray, str]:
    """One PNG as a float32 (H, W) grey image in [0, 1], and the PNG's Pillow mode."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError(f"{path}: reading PNG images needs pillow; pip install pillow") from None
    try:
        _check_png_header(path)
        with Image.open(path) as img:
            if img.format != "PNG":
                raise DataError(f"{path}: a {img.format} image, expected PNG")
            if img.mode == "I" or img.mode.startswith("I;16"):  # 16-bit grey: convert("L") clips
                return np.asarray(img, dtype=np.float32) / np.float32(65535), img.mode
            # colour to grey by Pillow's ITU-R 601-2 luma: L = 0.299 R + 0.587 G + 0.114 B
            return np.asarray(img.convert("L"), dtype=np.float32) / np.float32(255), img.mode
    except DataError:
        raise
    # Image decoders raise a wide spread of types on hostile input (SyntaxError, struct.error,
    # DecompressionBombError, ...); any of them means this file is not a usable PNG.
    except Exception as err:
        raise DataError(f"{path}: unreadable ({type(err).__name__}: {err}); expected a PNG "
                        "image") from err


def _load_png_folder(folder: Path, key: str | None) -> Dataset:
    if key is not None:
        raise DataError(f"{folder}: key={key!r} given for a folder of images; expected no key")
    top = sorted(p for p in folder.glob("*.png") if p.is_file())
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and any(d.glob("*.png")))
    if top and subdirs:
        raise DataError(f"{folder}: holds both PNG files and sub-folders of PNGs, expected one "
                        "layout: <folder>/*.png, or <folder>/<label>/*.png")
    if subdirs:
        files = [(p, i) for i, d in enumerate(subdirs) for p in sorted(d.glob("*.png"))]
        class_names: tuple[str, ...] | None = tuple(d.name for d in subdirs)
    else:
        files = [(p, -1) for p in top]
        class_names = None
    if not files:
        raise DataError(f"{folder}: no .png files, expected <folder>/*.png or "
                        "<folder>/<label>/*.png")
    # one image at a time, each bounded by its own file: allocating len(files) copies of the
    # first image's size up front would trust the other files before reading them
    images: list[np.ndarray] = []
    colour: dict[str, int] = {}
    for p, _ in files:
        img, mode = _read_png(p)
        if mode not in GREY_MODES:
            colour[mode] = colour.get(mode, 0) + 1
        if images and img.shape != images[0].shape:
            raise DataError(f"{p}: image of {img.shape[1]}x{img.shape[0]} pixels, expected "
                            f"{images[0].shape[1]}x{images[0].shape[0]} like {files[0][0].name}")
        images.append(img)
    labels = np.array([lab for _, lab in files], dtype=np.int64) if class_names else None
    notes = ()
    if colour:
        modes = ", ".join(f"{n} {mode}" for mode, n in sorted(colour.items()))
        notes = (f"{folder}: {sum(colour.values())} of {len(files)} images are not grey ({modes}); "
                 "they were made grey (luma 0.299 R + 0.587 G + 0.114 B, alpha dropped): minivae "
                 "models one channel",)
    return _dataset(folder.name, str(folder), np.stack(images), labels, str(folder), class_names,
                    notes)


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
        img, lab = read_idx(img_path), read_idx(lab_path)
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
    name = os.fspath(name_or_path)
    if name in BUILTIN:
        if key is not None:
            raise DataError(f"key={key!r} given for built-in data set {name!r}; expected no key "
                            "(keys select arrays in .npz and .h5 files)")
        return _load_digits() if name == "digits" else _load_mnist_family(name, data_dir)
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_png_folder(path, key)
    if not path.is_file():
        raise DataError(f"data {name!r} is neither a built-in ({', '.join(BUILTIN)}) nor an "
                        "existing file or folder")
    readers: dict[str, Callable[[Path, str | None], Dataset]] = {
        ".npy": _load_npy, ".npz": _load_npz, ".h5": _load_h5, ".hdf5": _load_h5,
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
