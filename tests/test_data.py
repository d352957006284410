"""Data: the built-ins, IDX reading and writing, the user's files, splits, binarisation and fetch.

Every reader is fed hostile bytes and must answer with DataError and nothing else; no test touches
the network (the one network call, ``data._open_url``, is replaced).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tempfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minivae import data, readers
from minivae.data import (
    BUILTIN,
    IDX_FILES,
    SOURCES,
    Binarizer,
    DataError,
    Dataset,
    default_data_dir,
    fetch,
    list_datasets,
    load_dataset,
    split,
)
from minivae.readers import read_idx, write_idx

MNIST_FAMILY = ("mnist", "fashion-mnist", "kmnist")
IDX_TEST_DTYPES = (np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64)
# Per fuzz test, all its examples (25 in CI, 1000 with HYPOTHESIS_PROFILE=thorough): a reader that
# hangs fails here, named, instead of at the suite's global 600 s.
FUZZ_TIMEOUT_S = 120


def _write_mnist(folder: Path, *, gz: bool, n_train: int = 12, n_test: int = 5, h: int = 7,
                 w: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a small MNIST-style data set (real IDX headers) into ``folder``; return its arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, h, w), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, h, w), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for base, arr in arrays.items():
        write_idx(folder / (base + (".gz" if gz else "")), arr)
    return arrays


def _idx_bytes(arr: np.ndarray) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "a.idx"
        write_idx(p, arr)
        return p.read_bytes()


def _read_idx_bytes(raw: bytes, name: str = "f.idx") -> np.ndarray | None:
    """read_idx on ``raw`` written to a file; None when it raised DataError (any other exception
    escapes and fails the test)."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / name
        p.write_bytes(raw)
        try:
            return read_idx(p)
        except DataError:
            return None


# -------------------------------------------------------------------------------------------------
# Built-ins
# -------------------------------------------------------------------------------------------------

def test_digits_loads_with_its_shape_range_and_labels():
    ds = load_dataset("digits")
    assert ds.x.shape == (1797, 64) and ds.x.dtype == np.float32
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0  # 0..16 divided by 16
    assert np.all(np.isin(ds.x * 16, np.arange(17)))
    assert ds.y is not None and ds.y.dtype == np.int64 and set(ds.y.tolist()) == set(range(10))
    assert ds.image_shape == (8, 8) and ds.n_classes == 10
    assert ds.test_start is None and ds.scaled


def test_key_for_a_builtin_is_refused():
    with pytest.raises(DataError, match="key='x'.*digits"):
        load_dataset("digits", key="x")


@pytest.mark.parametrize("name", MNIST_FAMILY)
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_mnist_family_loads_idx_files_with_the_official_test_set(tmp_path, name, gz):
    arrays = _write_mnist(tmp_path / name, gz=gz)
    ds = load_dataset(name, data_dir=tmp_path)
    images = np.concatenate([arrays["train-images-idx3-ubyte"], arrays["t10k-images-idx3-ubyte"]])
    labels = np.concatenate([arrays["train-labels-idx1-ubyte"], arrays["t10k-labels-idx1-ubyte"]])
    assert ds.x.shape == (17, 42) and ds.x.dtype == np.float32 and ds.image_shape == (7, 6)
    np.testing.assert_array_equal(ds.x, images.reshape(17, 42) / np.float32(255))
    np.testing.assert_array_equal(ds.y, labels)
    assert ds.test_start == 12 and ds.n_classes == 10 and ds.scaled

    train, val, test = split(ds, val_fraction=0.25, test_fraction=0.5, seed=3)
    # the official test set is the test part, whole and in order; test_fraction is not used
    np.testing.assert_array_equal(test.x, ds.x[12:])
    np.testing.assert_array_equal(test.y, ds.y[12:])
    assert len(val) == 3 and len(train) == 9
    rows = {r.tobytes() for r in ds.x[:12]}
    assert {r.tobytes() for r in np.concatenate([train.x, val.x])} == rows


def test_mnist_missing_file_names_directory_file_and_fetch_command(tmp_path):
    _write_mnist(tmp_path / "kmnist", gz=True)
    (tmp_path / "kmnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        load_dataset("kmnist", data_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "kmnist") in msg and "t10k-labels-idx1-ubyte" in msg
    assert "minivae data fetch kmnist" in msg and "\n" not in msg


def test_mnist_labels_that_do_not_match_the_images_are_refused(tmp_path):
    _write_mnist(tmp_path / "mnist", gz=False)
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte", np.zeros(11, np.uint8))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*expected.*\(12,\)"):
        load_dataset("mnist", data_dir=tmp_path)


def test_mnist_test_images_of_another_size_are_refused(tmp_path):
    _write_mnist(tmp_path / "mnist", gz=False)
    write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte", np.zeros((5, 6, 7), np.uint8))
    with pytest.raises(DataError, match="t10k-images.*expected"):
        load_dataset("mnist", data_dir=tmp_path)


def test_list_datasets_reports_present_and_missing(tmp_path):
    _write_mnist(tmp_path / "mnist", gz=True)
    rows = {r["name"]: r for r in list_datasets(tmp_path)}
    assert tuple(rows) == BUILTIN
    assert rows["digits"]["present"] and rows["mnist"]["present"]
    assert rows["mnist"]["path"] == str(tmp_path / "mnist")
    assert not rows["kmnist"]["present"] and len(rows["kmnist"]["missing"]) == 4


def test_default_data_dir_prefers_argument_then_env_then_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVAE_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert default_data_dir() == tmp_path / "env"
    monkeypatch.delenv("MINIVAE_DATA")
    assert default_data_dir() == tmp_path / "xdg" / "minivae"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # invalid by the XDG spec: ignored
    assert default_data_dir() == Path.home() / ".cache" / "minivae"


# -------------------------------------------------------------------------------------------------
# IDX
# -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", IDX_TEST_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("suffix", [".idx", ".idx.gz"])
@pytest.mark.parametrize("shape", [(5,), (3, 4, 2)], ids=["1d", "3d"])
def test_idx_round_trip(tmp_path, dtype, suffix, shape):
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(dtype)
    arr = np.random.default_rng(1).uniform(-100, 100, shape).astype(dtype)
    arr.flat[0], arr.flat[-1] = info.min, info.max  # the extremes survive the byte order swap
    write_idx(tmp_path / f"a{suffix}", arr)
    back = read_idx(tmp_path / f"a{suffix}")
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, arr)


def test_idx_bytes_follow_the_standard_layout(tmp_path):
    raw = _idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3))
    assert raw == bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 0, 1, 2, 3, 4, 5])
    (tmp_path / "s.idx").write_bytes(bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 1, 0, 0xFF, 0xFE]))
    np.testing.assert_array_equal(read_idx(tmp_path / "s.idx"), [256, -2])  # big-endian shorts
    write_idx(tmp_path / "a.gz", np.arange(3, dtype=np.int32))
    assert gzip.decompress((tmp_path / "a.gz").read_bytes())[:4] == bytes([0, 0, 0x0C, 1])


def test_write_idx_refuses_dtypes_idx_cannot_hold(tmp_path):
    with pytest.raises(DataError, match="int64.*expected one of uint8"):
        write_idx(tmp_path / "a.idx", np.zeros(3, np.int64))
    assert not (tmp_path / "a.idx").exists()


GOOD_IDX = _idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


@pytest.mark.parametrize("raw, match", [
    (b"\x01\x00" + GOOD_IDX[2:], "wrong magic 01 00"),
    (b"\x00\x00\x07" + GOOD_IDX[3:], "unknown IDX type code 0x07"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (GOOD_IDX[:2], "truncated IDX header"),
    (GOOD_IDX[:10], "truncated IDX header"),
    (GOOD_IDX[:-1], "declares shape"),
    (GOOD_IDX + b"\x00", "declares shape"),
    # a lying header: 3 x (2**32 - 1) bytes would be 7e28 bytes; refused before allocating
    (b"\x00\x00\x08\x03" + b"\xff" * 12 + GOOD_IDX[16:], r"declares shape \(4294967295,"),
    (b"", "truncated IDX header"),
], ids=["magic", "code", "ndim0", "short-head", "short-dims", "short-data", "extra", "liar",
        "empty"])
def test_corrupt_idx_is_refused_with_its_reason(tmp_path, raw, match):
    (tmp_path / "bad.idx").write_bytes(raw)
    with pytest.raises(DataError, match=match):
        read_idx(tmp_path / "bad.idx")


@pytest.mark.parametrize("raw, match", [
    (gzip.compress(b"\x00\x00\x08\x03" + b"\xff" * 12 + GOOD_IDX[16:]), "can hold at most"),
    (gzip.compress(GOOD_IDX[:-3]), "truncated, 21 of the 24"),
    (gzip.compress(GOOD_IDX + b"x"), "extra bytes"),
    (gzip.compress(GOOD_IDX)[:-12], "unreadable"),
    (GOOD_IDX, "unreadable.*gzip"),
], ids=["liar", "short-data", "extra", "cut-stream", "not-gzip"])
def test_corrupt_gzipped_idx_is_refused_with_its_reason(tmp_path, raw, match):
    (tmp_path / "bad.gz").write_bytes(raw)
    with pytest.raises(DataError, match=match):
        read_idx(tmp_path / "bad.gz")


def test_missing_idx_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such IDX file"):
        read_idx(tmp_path / "nope.idx")


@pytest.mark.timeout(FUZZ_TIMEOUT_S)
@given(raw=st.binary(max_size=64), gz=st.booleans())
def test_random_bytes_give_an_array_or_data_error_only(raw, gz):
    """Property: no input bytes make read_idx raise anything but DataError."""
    _read_idx_bytes(raw, "f.gz" if gz else "f.idx")
    if gz:
        _read_idx_bytes(gzip.compress(raw), "f.gz")


@pytest.mark.timeout(FUZZ_TIMEOUT_S)
@given(edits=st.lists(st.tuples(st.integers(0, len(GOOD_IDX) - 1), st.integers(0, 255)),
                      max_size=4),
       cut=st.integers(0, len(GOOD_IDX)), gz_stream=st.booleans())
def test_corrupted_idx_files_give_an_array_or_data_error_only(edits, cut, gz_stream):
    """Property: a valid IDX file with bytes overwritten and its tail cut (raw, gzipped, or with
    the gzip stream itself damaged) reads as a consistent array or raises DataError only."""
    raw = bytearray(GOOD_IDX)
    for pos, val in edits:
        raw[pos] = val
    raw = bytes(raw[:cut])
    for blob, name in ((raw, "f.idx"), (gzip.compress(raw, mtime=0), "f.gz")):
        if gz_stream and name == "f.gz":
            damaged = bytearray(gzip.compress(GOOD_IDX, mtime=0))
            for pos, val in edits:
                damaged[pos % len(damaged)] = val
            blob = bytes(damaged[: max(cut, 1)])
        arr = _read_idx_bytes(blob, name)
        if arr is not None:
            assert arr.size * arr.dtype.itemsize + 4 + 4 * arr.ndim <= max(len(raw), len(GOOD_IDX))


# -------------------------------------------------------------------------------------------------
# The user's files
# -------------------------------------------------------------------------------------------------

def test_npy_images_are_flattened_and_pixels_scaled(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (4, 3, 5), dtype=np.uint8)
    imgs[0, 0, 0] = 255
    np.save(tmp_path / "faces.npy", imgs)
    ds = load_dataset(tmp_path / "faces.npy")
    assert ds.name == "faces" and ds.image_shape == (3, 5) and ds.x.shape == (4, 15)
    np.testing.assert_array_equal(ds.x, imgs.reshape(4, 15) / np.float32(255))
    assert ds.x.max() == 1.0 and ds.scaled and ds.y is None and ds.n_classes == 0


@pytest.mark.parametrize("arr, scaled, factor", [
    (np.array([[0.0, 0.25], [1.0, 0.5]]), True, 1.0),                # floats in [0, 1]: kept
    (np.array([[-1.5, 0.25], [3.0, 0.5]], np.float32), False, 1.0),  # raw features: kept as is
    (np.array([[0, 1], [1, 0]], np.int64), True, 1.0),               # binary ints stay binary
    (np.array([[0, 200], [17, 3]], np.int32), True, 1 / 255),        # 8-bit pixels, wider int
    (np.array([[0, 1000], [-3, 3]], np.int16), False, 1.0),          # not pixels: kept as is
    (np.array([[True, False]]), True, 1.0),
], ids=["unit-float", "raw-float", "binary-int", "int-pixels", "raw-int", "bool"])
def test_npy_values_are_scaled_only_when_they_are_pixels(tmp_path, arr, scaled, factor):
    np.save(tmp_path / "a.npy", arr)
    ds = load_dataset(tmp_path / "a.npy")
    assert ds.scaled is scaled and ds.x.dtype == np.float32 and ds.image_shape is None
    np.testing.assert_allclose(ds.x, arr.astype(np.float64) * factor, rtol=1e-6)


@pytest.mark.parametrize("arr, match", [
    (np.array([[0.0, np.nan]]), "not finite"),
    (np.array([[0.0, np.inf]]), "not finite"),
    (np.array([[1e300]]), "not finite in float32"),
    (np.zeros((0, 3)), "holds no values"),
    (np.zeros(3), "expected 2"),
    (np.zeros((2, 2, 2, 2)), "expected 2"),
    (np.zeros((2, 2), complex), "not numeric"),
    (np.array([["a", "b"]]), "not numeric"),
])
def test_bad_npy_arrays_are_refused(tmp_path, arr, match):
    np.save(tmp_path / "a.npy", arr)
    with pytest.raises(DataError, match=match):
        load_dataset(tmp_path / "a.npy")


class _Payload:
    """Unpickling this creates a file: the witness that a loader unpickled."""

    def __init__(self, witness: Path):
        self.witness = witness

    def __reduce__(self):
        return (open, (str(self.witness), "w"))


def test_object_arrays_are_never_unpickled(tmp_path):
    witness = tmp_path / "unpickled"
    arr = np.empty((1, 1), dtype=object)
    arr[0, 0] = _Payload(witness)
    np.save(tmp_path / "o.npy", arr, allow_pickle=True)
    np.savez(tmp_path / "o.npz", x=arr)
    for name in ("o.npy", "o.npz"):
        with pytest.raises(DataError, match="dtype object is not numeric"):
            load_dataset(tmp_path / name)
    assert not witness.exists()


def _npy_with_header(shape: tuple[int, ...], data: bytes) -> bytes:
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.float32))
    header["shape"] = shape
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


@pytest.mark.parametrize("shape", [(3, 3), (10**12, 1000)])
def test_npy_header_that_lies_about_its_shape_is_refused_before_allocating(tmp_path, shape):
    (tmp_path / "a.npy").write_bytes(_npy_with_header(shape, b"\x00" * 24))  # 2 x 3 float32
    with pytest.raises(DataError, match=rf"declares shape \({shape[0]}, {shape[1]}\) .* can hold "
                                        "at most 24; it is truncated or corrupt"):
        load_dataset(tmp_path / "a.npy")


def test_npz_picks_the_key_and_its_labels(tmp_path):
    x = np.random.default_rng(0).random((6, 4))
    y = np.array([0, 2, 1, 2, 0, 1])
    np.savez_compressed(tmp_path / "d.npz", feats=x, labels=y)
    ds = load_dataset(tmp_path / "d.npz")  # the only array that is not labels
    np.testing.assert_allclose(ds.x, x.astype(np.float32))
    np.testing.assert_array_equal(ds.y, y)
    assert ds.n_classes == 3
    np.savez(tmp_path / "e.npz", x=x, other=x * 2, y=y)
    assert np.allclose(load_dataset(tmp_path / "e.npz").x, x)  # "x" is the default
    np.testing.assert_allclose(load_dataset(tmp_path / "e.npz", key="other").x, 2 * x, rtol=1e-6)


def test_npz_missing_key_lists_the_keys_present(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.zeros((2, 2)), b=np.ones((2, 2)))
    with pytest.raises(DataError, match="key 'x' not found; arrays present: a, b"):
        load_dataset(tmp_path / "d.npz", key="x")
    with pytest.raises(DataError, match=r"holds arrays a, b; pass key="):
        load_dataset(tmp_path / "d.npz")


def test_npz_labels_must_match_the_rows(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2)), y=np.array([0, 1]))
    with pytest.raises(DataError, match=r"d.npz\[y\].*expected integers of shape \(3,\)"):
        load_dataset(tmp_path / "d.npz")
    np.savez(tmp_path / "f.npz", x=np.zeros((2, 2)), y=np.array([0.5, 1.0]))
    with pytest.raises(DataError, match="labels of dtype float64"):
        load_dataset(tmp_path / "f.npz")


def _saved(save, **arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    save(buf, **arrays)
    return buf.getvalue()


GOOD_NPY = _saved(lambda b, x: np.save(b, x), x=np.arange(12, dtype=np.uint8).reshape(3, 4))
GOOD_NPZ = _saved(np.savez, x=np.arange(12, dtype=np.uint8).reshape(3, 4), y=np.arange(3))


@pytest.mark.timeout(FUZZ_TIMEOUT_S)
@given(edits=st.lists(st.tuples(st.integers(0, len(GOOD_NPZ) - 1), st.integers(0, 255)),
                      min_size=1, max_size=6),
       cut=st.integers(0, len(GOOD_NPZ)), npy=st.booleans())
def test_corrupted_npz_and_npy_give_a_dataset_or_data_error_only(edits, cut, npy):
    """Property: damaged .npz/.npy bytes load or raise DataError, never anything else."""
    raw = bytearray(GOOD_NPY if npy else GOOD_NPZ)
    for pos, val in edits:
        raw[pos % len(raw)] = val
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / ("f.npy" if npy else "f.npz")
        p.write_bytes(bytes(raw[:cut]))
        try:
            ds = load_dataset(p)
        except DataError:
            return
        assert isinstance(ds, Dataset) and ds.x.dtype == np.float32


def test_npz_member_that_lies_about_its_shape_is_refused_before_allocating(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", _npy_with_header((10**12, 10), b"\x00" * 4096))
    with pytest.raises(DataError, match=r"bomb.npz\[x\]: header declares shape \(1000000000000, "
                                        r"10\)"):
        load_dataset(tmp_path / "bomb.npz")


def _save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_png_folder_without_labels(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 4, 5), dtype=np.uint8)
    for i, img in enumerate(imgs):
        _save_png(tmp_path / "pics" / f"{i:02d}.png", img)
    ds = load_dataset(tmp_path / "pics")
    assert ds.name == "pics" and ds.image_shape == (4, 5) and ds.y is None and ds.scaled
    np.testing.assert_allclose(ds.x, imgs.reshape(3, 20) / 255, rtol=1e-6)


def test_png_subfolders_are_labels_in_sorted_order_and_rgb_becomes_grey(tmp_path):
    grey = {"cat": [10, 20], "ant": [30], "bee": [250, 0]}
    for label, values in grey.items():
        for i, v in enumerate(values):
            rgb = np.full((2, 3, 3), v, dtype=np.uint8)  # r = g = b: grey is exactly v
            _save_png(tmp_path / "pics" / label / f"{i}.png", rgb)
    ds = load_dataset(tmp_path / "pics")
    assert ds.class_names == ("ant", "bee", "cat") and ds.n_classes == 3
    np.testing.assert_array_equal(ds.y, [0, 1, 1, 2, 2])
    np.testing.assert_allclose(ds.x[:, 0] * 255, [30, 250, 0, 10, 20], atol=1e-4)


@pytest.mark.parametrize("layout, match", [
    ({"a.png": (3, 3), "b.png": (3, 4)}, r"b.png: image of 4x3 pixels, expected 3x3"),
    ({}, "no .png files"),
    ({"a.png": (2, 2), "sub/b.png": (2, 2)}, "both PNG files and sub-folders"),
    ({"a.png": None}, "a.png: unreadable.*expected a PNG"),
], ids=["sizes", "empty", "mixed", "not-png"])
def test_bad_png_folders_are_refused(tmp_path, layout, match):
    folder = tmp_path / "pics"
    folder.mkdir()
    for name, shape in layout.items():
        if shape is None:
            (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 5)
        else:
            _save_png(folder / name, np.zeros(shape, np.uint8))
    with pytest.raises(DataError, match=match):
        load_dataset(folder)


def _png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


GOOD_PNG = _png_bytes(np.arange(48, dtype=np.uint8).reshape(6, 8))


@pytest.mark.timeout(FUZZ_TIMEOUT_S)
@given(edits=st.lists(st.tuples(st.integers(0, len(GOOD_PNG) - 1), st.integers(0, 255)),
                      min_size=1, max_size=6),
       cut=st.integers(1, len(GOOD_PNG)))
def test_corrupted_png_gives_a_dataset_or_data_error_only(edits, cut):
    """Property: a damaged PNG in a folder loads as a (6, 8) image or raises DataError only."""
    raw = bytearray(GOOD_PNG)
    for pos, val in edits:
        raw[pos] = val
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "a.png").write_bytes(bytes(raw[:cut]))
        try:
            ds = load_dataset(d)
        except DataError:
            return
        assert ds.x.shape[0] == 1 and 0 <= ds.x.min() and ds.x.max() <= 1


def test_h5_reads_a_dataset_by_key_and_lists_datasets_when_wrong(tmp_path):
    h5py = pytest.importorskip("h5py", reason="h5py is the optional [hdf5] extra")
    x = np.random.default_rng(0).integers(0, 256, (5, 2, 3), dtype=np.uint8)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["group/images"] = x
        f["y"] = np.array([1, 0, 1, 1, 0])
        f["extra"] = np.zeros((5, 1))
    ds = load_dataset(tmp_path / "d.h5", key="group/images")
    assert ds.image_shape == (2, 3) and ds.n_classes == 2
    np.testing.assert_array_equal(ds.x, x.reshape(5, 6) / np.float32(255))
    with pytest.raises(DataError, match="key 'images' not found; datasets present: extra, "
                                        "group/images, y"):
        load_dataset(tmp_path / "d.h5", key="images")
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(DataError, match="bad.h5: unreadable"):
        load_dataset(tmp_path / "bad.h5", key="x")


def test_h5_without_h5py_says_how_to_install_it(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` fail
    (tmp_path / "d.hdf5").write_bytes(b"")
    with pytest.raises(DataError, match=r'needs h5py.*pip install -e "\.\[hdf5\]"'):
        load_dataset(tmp_path / "d.hdf5", key="x")


@pytest.mark.parametrize("name, match", [
    ("no/such/file.npy", "neither a built-in"),
    ("table.csv", "unknown file type '.csv'"),
])
def test_unknown_data_is_refused(tmp_path, monkeypatch, name, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "table.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=match):
        load_dataset(name)


# -------------------------------------------------------------------------------------------------
# Lying headers: refused by arithmetic, before anything is allocated or decoded
# -------------------------------------------------------------------------------------------------

PEAK_BYTES = 1 << 20  # a refusal costs parsing a header, never the data the header claims


def _png_claiming(width: int, height: int) -> bytes:
    """GOOD_PNG with its IHDR rewritten to claim width x height (and a correct CRC, so the lie is
    only in the numbers)."""
    import struct
    import zlib

    raw = bytearray(GOOD_PNG)
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    return bytes(raw)


def _h5_claiming(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...] | None = None,
                 compression: str | None = None) -> None:
    """An HDF5 file whose dataset "x" declares ``shape`` with no data written: the HDF5 library
    reads unwritten chunks as fill values, so only the arithmetic can tell the lie."""
    h5py = pytest.importorskip("h5py", reason="h5py is the optional [hdf5] extra")
    with h5py.File(path, "w") as f:
        f.create_dataset("x", shape=shape, dtype="u1", chunks=chunks or (1,) * len(shape),
                         compression=compression)


def _zip_claiming(path: Path, method: int) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w", method) as zf:
        zf.writestr("x.npy", _npy_with_header((10**6, 1000), b"\x00" * 4096))


def _lying_file(tmp_path: Path, kind: str) -> Path:
    import zipfile

    lie = b"\x00\x00\x08\x03" + b"\xff" * 12 + GOOD_IDX[16:]  # 3 x (2**32 - 1) bytes
    makers = {
        "idx": lambda p: p.write_bytes(lie),
        "idx.gz": lambda p: p.write_bytes(gzip.compress(lie)),
        "npy": lambda p: p.write_bytes(_npy_with_header((10**9, 10**6), b"\x00" * 24)),
        "npz": lambda p: _zip_claiming(p, zipfile.ZIP_DEFLATED),
        "stored.npz": lambda p: _zip_claiming(p, zipfile.ZIP_STORED),
        "h5": lambda p: _h5_claiming(p, (10**9, 10**6), chunks=(1, 1024)),
        # 1 MB of unwritten, uncompressed data in a ~2 kB file: within DEFLATE's 1032:1 but not
        # within what unfiltered storage can hold (1 byte per byte)
        "unwritten.h5": lambda p: _h5_claiming(p, (1000, 1000), chunks=(100, 100)),
        "gzip.h5": lambda p: _h5_claiming(p, (2**40, 2**20), chunks=(1, 1024), compression="gzip"),
        # 81 Mpixels: below Pillow's decompression-bomb limit (89 Mpixels), so Pillow would decode
        "png": lambda p: (p.mkdir(), (p / "a.png").write_bytes(_png_claiming(9000, 9000))),
        "huge.png": lambda p: (p.mkdir(), (p / "a.png").write_bytes(_png_claiming(2**31 - 1, 2**31 - 1))),
    }
    path = tmp_path / ("pics" if kind.endswith("png") else f"f.{kind}")
    makers[kind](path)
    return path


@pytest.mark.parametrize("kind", ["idx", "idx.gz", "npy", "npz", "stored.npz", "h5", "unwritten.h5",
                                  "gzip.h5", "png", "huge.png"])
def test_lying_headers_are_refused_by_arithmetic_before_anything_is_read(tmp_path, monkeypatch, kind):
    """A header that declares more data than its file can hold is refused with a DataError that
    says so, before the reader reads, decodes or allocates the data: every function that would is
    replaced by one that fails the test, and tracemalloc's peak (numpy and h5py allocations) stays
    at the cost of a header. MemoryError is not among the errors a reader turns into DataError, so
    an attempted huge allocation would fail this test too."""
    import tracemalloc

    from PIL import ImageFile

    path = _lying_file(tmp_path, kind)

    def forbidden(*args, **kwargs):
        raise AssertionError(f"{kind}: the data was read before the header was checked")

    monkeypatch.setattr(np, "frombuffer", forbidden)  # the IDX reader's data
    monkeypatch.setattr(np, "load", forbidden)  # .npy and .npz data
    monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden)  # PNG pixels (Pillow's own memory)
    if kind.endswith("h5"):
        import h5py

        monkeypatch.setattr(h5py.Dataset, "__getitem__", forbidden)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"declares .*(can hold|more than|file holds)") as info:
            read_idx(path) if kind.startswith("idx") else load_dataset(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"{kind}: {peak} bytes allocated to refuse a lying header"
    assert len(str(info.value).splitlines()) == 1


def test_without_the_size_check_a_lying_header_is_a_memory_error_not_a_data_error(tmp_path,
                                                                                 monkeypatch):
    """Why MemoryError is not swallowed: with the .npy header check switched off, numpy attempts
    the 4 PB the header claims, and that MemoryError escapes the reader, so a missing check fails
    the fuzz tests (which accept DataError only) instead of passing for bad data."""
    monkeypatch.setattr(readers, "_check_npy_header", lambda *args, **kwargs: None)
    (tmp_path / "a.npy").write_bytes(_npy_with_header((10**9, 10**6), b"\x00" * 24))
    with pytest.raises(MemoryError):
        load_dataset(tmp_path / "a.npy")


def test_png_folder_allocates_only_for_images_it_has_read(tmp_path):
    """A large honest first image and many broken files after it: the reader must not allocate
    room for every file at the first image's size (here 200 x 4 MB) before reading the others."""
    import tracemalloc

    folder = tmp_path / "pics"
    folder.mkdir()
    _save_png(folder / "000.png", np.zeros((1000, 1000), np.uint8))  # ~1 kB, 4 MB as float32
    for i in range(1, 200):
        (folder / f"{i:03d}.png").write_bytes(GOOD_PNG[:40])
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="001.png: unreadable"):
            load_dataset(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"{peak} bytes allocated for one readable 4 MB image"


def test_h5_data_stored_in_other_files_is_refused(tmp_path):
    """External and virtual datasets read bytes from other files (any file the user can read);
    the reader takes only data stored inside the file it was given."""
    h5py = pytest.importorskip("h5py", reason="h5py is the optional [hdf5] extra")
    (tmp_path / "elsewhere.bin").write_bytes(bytes(range(16)))
    with h5py.File(tmp_path / "ext.h5", "w") as f:
        f.create_dataset("x", shape=(4, 4), dtype="u1", external=[(str(tmp_path / "elsewhere.bin"),
                                                                  0, 16)])
    with h5py.File(tmp_path / "src.h5", "w") as f:
        f["x"] = np.arange(16, dtype=np.uint8).reshape(4, 4)
    layout = h5py.VirtualLayout(shape=(4, 4), dtype="u1")
    layout[:] = h5py.VirtualSource(str(tmp_path / "src.h5"), "x", shape=(4, 4))
    with h5py.File(tmp_path / "virtual.h5", "w") as f:
        f.create_virtual_dataset("x", layout)
    assert load_dataset(tmp_path / "src.h5").x.shape == (4, 4)  # the same data, stored inside
    for name in ("ext.h5", "virtual.h5"):
        with pytest.raises(DataError, match=rf"{name}\[x\]: its data lives in other files"):
            load_dataset(tmp_path / name)


def test_null_h5_dataset_is_refused(tmp_path):
    h5py = pytest.importorskip("h5py", reason="h5py is the optional [hdf5] extra")
    with h5py.File(tmp_path / "e.h5", "w") as f:
        f.create_dataset("x", data=h5py.Empty("u1"))
    with pytest.raises(DataError, match=r"e.h5\[x\]: an empty \(null\) dataset"):
        load_dataset(tmp_path / "e.h5")


# -------------------------------------------------------------------------------------------------
# Splits
# -------------------------------------------------------------------------------------------------

def _rows(n: int, labels: bool = True) -> Dataset:
    x = np.arange(n, dtype=np.float32).reshape(n, 1)
    y = np.arange(n, dtype=np.int64) % 3 if labels else None
    return Dataset("rows", x, y, None, 3 if labels else 0)


def test_split_is_deterministic_disjoint_and_covers_all():
    ds = load_dataset("digits")
    parts = split(ds, val_fraction=0.1, test_fraction=0.2, seed=7)
    again = split(ds, val_fraction=0.1, test_fraction=0.2, seed=7)
    other = split(ds, val_fraction=0.1, test_fraction=0.2, seed=8)
    assert [len(p) for p in parts] == [1258, 180, 359]
    for a, b in zip(parts, again, strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(parts[2].x, other[2].x)
    assert all(p.image_shape == (8, 8) and p.n_classes == 10 for p in parts)


@given(n=st.integers(1, 60), val=st.floats(0, 0.6), test=st.floats(0, 0.6),
       seed=st.integers(0, 2**32 - 1))
def test_split_parts_are_disjoint_and_cover_every_row(n, val, test, seed):
    """Property: whatever the sizes, split either refuses with DataError or returns three disjoint
    parts whose rows are exactly the rows of the data set."""
    want = [max(1, round(f * n)) if f > 0 else 0 for f in (val, test)]  # the documented rule
    try:
        parts = split(_rows(n), val_fraction=val, test_fraction=test, seed=seed)
    except DataError:
        assert val + test >= 1 or sum(want) >= n  # refused only when no training row is left
        return
    ids = [p.x[:, 0].astype(int) for p in parts]
    assert sorted(np.concatenate(ids).tolist()) == list(range(n))
    assert [len(p) for p in parts] == [n - sum(want), *want]
    for p, i in zip(parts, ids, strict=True):
        np.testing.assert_array_equal(p.y, i % 3)  # labels travel with their rows


@pytest.mark.parametrize("kwargs, match", [
    ({"val_fraction": 1.0}, r"val_fraction must be a number in \[0, 1\), got 1.0"),
    ({"test_fraction": -0.1}, "test_fraction must be"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "must be below 1"),
    ({"seed": -1}, "seed must be an integer >= 0, got -1"),
])
def test_split_refuses_bad_arguments(kwargs, match):
    with pytest.raises(DataError, match=match):
        split(_rows(10), **kwargs)


def test_split_that_leaves_no_training_rows_is_refused():
    with pytest.raises(DataError, match="leaves no training rows"):
        split(_rows(2), val_fraction=0.1, test_fraction=0.1)


# -------------------------------------------------------------------------------------------------
# Binarizer
# -------------------------------------------------------------------------------------------------

X_GREY = np.random.default_rng(0).random((50, 40)).astype(np.float32)


def test_static_binarization_is_fixed_across_epochs():
    b = Binarizer("static", seed=3)
    first = b(X_GREY, 0)
    assert set(np.unique(first).tolist()) <= {0.0, 1.0} and first.dtype == np.float32
    for epoch in (1, 5, 99):
        np.testing.assert_array_equal(b(X_GREY, epoch), first)
    assert not np.array_equal(Binarizer("static", seed=4)(X_GREY, 0), first)


def test_dynamic_binarization_differs_by_epoch_and_repeats_for_the_same_seed_and_epoch():
    b = Binarizer("dynamic", seed=3)
    draws = [b(X_GREY, e) for e in range(3)]
    assert not np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[1], draws[2])
    resumed = Binarizer("dynamic", seed=3)  # a fresh object, as after a restart
    np.testing.assert_array_equal(resumed(X_GREY, 2), draws[2])
    np.testing.assert_array_equal(b(X_GREY, 1), draws[1])  # order of calls does not matter


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_binarization_draws_bernoulli_of_the_grey_value(mode):
    x = np.full((200, 500), 0.3, np.float32)
    x[:, :100] = 0.0
    x[:, 100:200] = 1.0
    b = Binarizer(mode, seed=1)(x, 4)
    assert b[:, :100].max() == 0 and b[:, 100:200].min() == 1
    assert abs(b[:, 200:].mean() - 0.3) < 0.005  # 60000 draws: 5 standard errors ~= 0.0094 / 2


def test_binarizer_none_is_the_identity_and_bad_use_is_refused():
    assert Binarizer("none", seed=0)(X_GREY, 0) is X_GREY
    with pytest.raises(DataError, match="binarize mode must be one of none, static, dynamic"):
        Binarizer("random", seed=0)
    with pytest.raises(DataError, match=r"needs x in \[0, 1\]"):
        Binarizer("dynamic", seed=0)(X_GREY * 2, 0)
    with pytest.raises(DataError, match="epoch must be an integer >= 0, got -1"):
        Binarizer("dynamic", seed=0)(X_GREY, -1)


# -------------------------------------------------------------------------------------------------
# Fetch (never the network)
# -------------------------------------------------------------------------------------------------

def test_sources_table_has_the_four_files_with_sizes_and_sha256():
    assert set(SOURCES) == set(BUILTIN) - {"digits"}
    for base_url, files in SOURCES.values():
        assert base_url.endswith("/")
        assert sorted(files) == sorted(f"{b}.gz" for b in IDX_FILES)
        for size, sha in files.values():
            assert size > 0 and len(sha) == 64 and int(sha, 16) >= 0


def _files_in(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_fetch_without_network_says_where_to_put_the_files(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(data, "_open_url", offline)
    with pytest.raises(DataError) as err:
        fetch("fashion-mnist", tmp_path, progress=False)
    msg = str(err.value)
    assert "URLError" in msg and str(tmp_path / "fashion-mnist") in msg and "\n" not in msg
    assert all(f"{b}.gz" in msg for b in IDX_FILES) and SOURCES["fashion-mnist"][0] in msg
    assert _files_in(tmp_path / "fashion-mnist") == []


def test_fetch_refuses_a_checksum_mismatch_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_open_url", lambda url, timeout: io.BytesIO(b"not the file"))
    with pytest.raises(DataError, match="SHA-256 .* does not match the expected .* discarded"):
        fetch("mnist", tmp_path, progress=False)
    assert _files_in(tmp_path / "mnist") == []


def test_fetch_refuses_a_download_larger_than_expected(tmp_path, monkeypatch):
    table = {f"{b}.gz": (10, hashlib.sha256(b"x" * 10).hexdigest()) for b in IDX_FILES}
    monkeypatch.setitem(SOURCES, "mnist", ("https://example.invalid/", table))
    monkeypatch.setattr(data, "_open_url", lambda url, timeout: io.BytesIO(b"x" * 11))
    with pytest.raises(DataError, match="sent more than the expected 10 bytes"):
        fetch("mnist", tmp_path, progress=False)
    assert _files_in(tmp_path / "mnist") == []


def test_fetch_writes_verified_files_that_load_and_skips_them_next_time(tmp_path, monkeypatch):
    src = tmp_path / "src"
    arrays = _write_mnist(src, gz=True)
    blobs = {p.name: p.read_bytes() for p in src.iterdir()}
    table = {n: (len(b), hashlib.sha256(b).hexdigest()) for n, b in blobs.items()}
    monkeypatch.setitem(SOURCES, "kmnist", ("https://example.invalid/k/", table))
    calls, seen_early = [], []

    class Response(io.BytesIO):
        def __init__(self, name: str):
            super().__init__(blobs[name])
            self.final = tmp_path / "cache" / "kmnist" / name

        def read(self, n: int = -1) -> bytes:
            # atomic write: the final name appears only once the whole file is verified
            seen_early.append(self.final.exists())
            return super().read(n)

    def serve(url, timeout):
        calls.append(url)
        return Response(url.rsplit("/", 1)[1])

    monkeypatch.setattr(data, "_open_url", serve)
    folder = fetch("kmnist", tmp_path / "cache", progress=False)
    assert folder == tmp_path / "cache" / "kmnist" and len(calls) == 4
    assert _files_in(folder) == sorted(blobs)  # no temporary files left behind
    assert seen_early and not any(seen_early)
    ds = load_dataset("kmnist", data_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds.y[:12], arrays["train-labels-idx1-ubyte"])
    fetch("kmnist", tmp_path / "cache", progress=False)
    assert len(calls) == 4  # verified files are not downloaded again


def test_fetch_of_something_not_downloadable_is_refused(tmp_path):
    with pytest.raises(DataError, match="digits ships with scikit-learn"):
        fetch("digits", tmp_path)
    with pytest.raises(DataError, match="expected one of mnist, fashion-mnist, kmnist"):
        fetch("cifar", tmp_path)
