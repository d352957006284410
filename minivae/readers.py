"""Readers of data files, each file treated as hostile: the IDX format (``read_idx``,
``write_idx``), the user's .npy, .npz and .h5/.hdf5 arrays and folders of PNG images. Each returns
a ``minivae.data.Dataset``; ``minivae.data.load_dataset`` chooses the reader.

Every reader compares the sizes a header declares with the bytes the file can hold *before*
allocating, never unpickles, and turns any malformed input into one ``DataError`` line that names
the file, what was wrong and what was expected.
"""

from __future__ import annotations

import gzip
import math
import struct
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np

from minivae.data import CHUNK_BYTES, DataError, Dataset, PathLike

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
LABEL_KEYS = ("y", "labels")  # arrays taken as labels when a .npz/.h5 file holds them
H5_HINT = "pip install -e \".[hdf5]\" (the README's install)"


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


def load_npy(path: Path, key: str | None) -> Dataset:
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


def load_npz(path: Path, key: str | None) -> Dataset:
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


def load_h5(path: Path, key: str | None) -> Dataset:
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


def load_png_folder(folder: Path, key: str | None) -> Dataset:
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


