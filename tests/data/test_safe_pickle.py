"""The restricted unpickler: numpy pickles of every era load, everything else is refused before it runs."""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import pickle
import struct
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from hrlf.data.features import DataFileError, load_features
from hrlf.data.safe_pickle import UnsafePickleError, load_with_sha256, safe_load

# ----------------------------------------------------------------------------------------------- helpers

_NUMPY1_NAMES = {
    "numpy._core.multiarray": "numpy.core.multiarray",
    "numpy._core.numeric": "numpy.core.numeric",
}


class _Numpy1Pickler(pickle._Pickler):
    """Writes numpy globals under their numpy-1 module names (``numpy.core.*``), as numpy-1 era files do."""

    def save_global(self, obj: object, name: str | None = None) -> None:
        module = getattr(obj, "__module__", None)
        if module not in _NUMPY1_NAMES:
            super().save_global(obj, name)
            return
        qualname = name or obj.__qualname__  # type: ignore[attr-defined]
        if self.proto >= 4:
            self.save(_NUMPY1_NAMES[module])
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{_NUMPY1_NAMES[module]}\n{qualname}\n".encode())
        self.memoize(obj)

    # python functions (numpy's ``_frombuffer``) are dispatched through this table, not through the method
    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[types.FunctionType] = save_global


class _Python2Pickler(_Numpy1Pickler):
    """Also writes ``bytes`` as python-2 ``str`` (BINSTRING), which Python 3 reads back only with ``latin1``."""

    def save_bytes(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + struct.pack("<I", len(obj)) + obj)
        self.memoize(obj)

    dispatch = dict(_Numpy1Pickler.dispatch)
    dispatch[bytes] = save_bytes


def _dumps(obj: object, pickler: type[pickle._Pickler], protocol: int) -> bytes:
    buffer = io.BytesIO()
    pickler(buffer, protocol=protocol).dump(obj)
    return buffer.getvalue()


def _sample() -> dict[str, object]:
    return {
        "f32": np.arange(12, dtype=np.float32).reshape(2, 3, 2),
        "f64": np.linspace(-1, 1, 5),
        "i64": np.array([3, 1, 4], dtype=np.int64),
        "empty": np.zeros((0, 3), dtype=np.float32),  # protocol 2 writes its data as bytes()
        "big_endian": np.array([1.5, -2.0], dtype=">f4"),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
        "strings": np.array(["a$_$1", "b$_$2"], dtype=object),
        "unicode": np.array(["x", "yz"]),
        "bytes_ids": np.array([[b"v1", b"0.5"], [b"v2", b"1.5"]]),
        "dtype": np.dtype(">i2"),
        "scalar": np.float64(2.5),
        "int_scalar": np.int32(7),
        "plain": [1, 2.0, "three", b"four", None, True, (5, 6), {"k": "v"}],
        "nested": [(np.arange(2.0), {"deep": np.ones((1, 2), dtype=np.int16)})],
    }


def _assert_same(loaded: object, expected: object) -> None:
    assert isinstance(loaded, dict) and isinstance(expected, dict)
    assert loaded.keys() == expected.keys()
    nested = loaded.pop("nested", None)
    if nested is not None:
        ((array, inner),) = nested
        assert type(array) is np.ndarray and type(inner["deep"]) is np.ndarray  # plain arrays at any depth
        np.testing.assert_array_equal(inner["deep"], expected["nested"][0][1]["deep"])
        expected = {k: v for k, v in expected.items() if k != "nested"}
    for key, value in expected.items():
        if isinstance(value, np.ndarray):
            assert type(loaded[key]) is np.ndarray, key
            # numpy itself reads some big-endian pickles back in native order; the values are what matter
            assert loaded[key].dtype.newbyteorder("=") == value.dtype.newbyteorder("="), key
            np.testing.assert_array_equal(loaded[key], value)
        elif isinstance(value, np.dtype):
            assert isinstance(loaded[key], np.dtype) and loaded[key] == value, key
        else:
            assert loaded[key] == value, key
            assert type(loaded[key]) is type(value), key


class _System:
    """Unpickles into ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


class _Open:
    """Unpickles into ``open(<marker>, "w")``, which creates the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return builtins.open, (str(self.marker), "w")


# ------------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_and_plain_containers_load_for_each_protocol(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / f"p{protocol}.pkl"
    path.write_bytes(pickle.dumps(_sample(), protocol=protocol))
    _assert_same(safe_load(path), _sample())


@pytest.mark.parametrize("protocol", [2, 4])
def test_numpy1_core_globals_load_without_importing_the_deprecated_shim(tmp_path: Path, protocol: int) -> None:
    payload = _dumps(_sample(), _Numpy1Pickler, protocol)
    assert b"numpy.core.multiarray" in payload and b"_reconstruct" in payload and b"numpy._core" not in payload
    path = tmp_path / "numpy1.pkl"
    path.write_bytes(payload)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy.core import would raise DeprecationWarning on numpy 2
        _assert_same(safe_load(path), _sample())


def test_numpy1_protocol5_frombuffer_loads(tmp_path: Path) -> None:
    payload = _dumps({"x": np.arange(4, dtype=np.float32)}, _Numpy1Pickler, 5)
    assert b"numpy.core.numeric" in payload and b"_frombuffer" in payload
    path = tmp_path / "numpy1_p5.pkl"
    path.write_bytes(payload)
    loaded = safe_load(path)
    assert isinstance(loaded, dict)
    np.testing.assert_array_equal(loaded["x"], np.arange(4, dtype=np.float32))


def test_python2_style_pickle_loads_with_latin1(tmp_path: Path) -> None:
    data = {"audio": np.array([[0.25, -1.0], [3.0, 1e-3]], dtype=np.float64), "label": np.float32(-1.5)}
    payload = _dumps(data, _Python2Pickler, 2)
    assert b"_codecs" not in payload  # array bytes are BINSTRING, as written by Python 2
    path = tmp_path / "py2.pkl"
    path.write_bytes(payload)
    _assert_same(safe_load(path), data)


def test_sha256_covers_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "with_tail.pkl"
    path.write_bytes(pickle.dumps({"x": np.ones(3)}, protocol=4) + b"trailing bytes after STOP")
    obj, digest = load_with_sha256(path)
    assert isinstance(obj, dict)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_codecs_encode_admits_latin1_only(tmp_path: Path) -> None:
    def encode_call(codec: str) -> bytes:
        args = b"".join(pickle.BINUNICODE + struct.pack("<I", len(s)) + s for s in (b"abc", codec.encode()))
        return b"\x80\x02" + pickle.GLOBAL + b"_codecs\nencode\n" + args + pickle.TUPLE2 + pickle.REDUCE + pickle.STOP

    path = tmp_path / "codec.pkl"
    path.write_bytes(encode_call("latin1"))
    assert safe_load(path) == b"abc"
    path.write_bytes(encode_call("zlib_codec"))
    with pytest.raises(UnsafePickleError, match="latin1"):
        safe_load(path)


# ----------------------------------------------------------------------------------------------- refusing


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_malicious_os_system_is_refused_and_never_runs(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    split = {"text": np.zeros((2, 3, 4), dtype=np.float32), "audio": _System(marker)}
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"train": split, "valid": split, "test": split}, protocol=protocol))

    with pytest.raises(UnsafePickleError) as info:
        safe_load(path)
    message = str(info.value)
    assert message == (
        f"refused to load {os.system.__module__}.system from {path}: only numpy arrays and plain containers are allowed"
    )
    assert isinstance(info.value, DataFileError)
    with pytest.raises(UnsafePickleError):
        load_features(path)
    assert not marker.exists()


def test_malicious_open_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    control = tmp_path / "created_by_plain_pickle"
    pickle.loads(pickle.dumps(_Open(control))).close()  # the payload is live: plain pickle creates the file
    assert control.exists()

    marker = tmp_path / "created_by_pickle"
    path = tmp_path / "evil_open.pkl"
    path.write_bytes(pickle.dumps([np.ones(2), _Open(marker)], protocol=4))
    with pytest.raises(UnsafePickleError, match=r"refused to load .*open from .*evil_open\.pkl"):
        safe_load(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("numpy", "load"),  # numpy, but not an array constructor
        ("numpy._core.multiarray", "fromfile"),
        ("numpy.core.multiarray", "_reconstruct_evil"),
        ("builtins", "eval"),
        ("builtins", "getattr"),
        ("copyreg", "_reconstructor"),
        ("_codecs", "decode"),
        ("builtins", "bytearray"),
    ],
)
def test_any_other_global_is_refused(tmp_path: Path, module: str, name: str) -> None:
    path = tmp_path / "global.pkl"
    path.write_bytes(b"\x80\x02" + pickle.GLOBAL + f"{module}\n{name}\n".encode() + pickle.STOP)
    with pytest.raises(UnsafePickleError, match=f"refused to load {module}.{name} from "):
        safe_load(path)


def test_refused_names_are_echoed_on_one_line(tmp_path: Path) -> None:
    def unicode(text: str) -> bytes:
        return pickle.SHORT_BINUNICODE + bytes([len(text)]) + text.encode()

    path = tmp_path / "odd_name.pkl"
    path.write_bytes(b"\x80\x04" + unicode("os\nx") + unicode("system\r\x1b[2J") + pickle.STACK_GLOBAL + pickle.STOP)
    with pytest.raises(UnsafePickleError) as info:
        safe_load(path)
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)


# ------------------------------------------------------------------------------------------- broken files


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(pickle.dumps({"x": np.arange(50.0)}, protocol=4)[:60], id="truncated"),
        pytest.param(b"PK\x03\x04 this is a zip, not a pickle", id="not-a-pickle"),
        pytest.param(b"\x80\x05" + b"\x88" * 3, id="no-stop"),
    ],
)
def test_unreadable_files_give_one_line_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.pkl"
    path.write_bytes(content)
    with pytest.raises(DataFileError) as info:
        safe_load(path)
    message = str(info.value)
    assert not isinstance(info.value, UnsafePickleError)
    assert message.startswith(f"{path}: not a readable pickle (truncated or not a pickle file): ")
    assert "\n" not in message


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "aligned_50.pkl"
    with pytest.raises(DataFileError, match="aligned_50.pkl: no such file"):
        safe_load(path)


# ------------------------------------------------------------------------------------- numpy memory safety

_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's own _reconstruct, whatever module it lives in


class _Reduce:
    """Pickles as ``func(*args)`` followed by BUILD with ``state`` (when given)."""

    def __init__(self, func: object, args: tuple[object, ...], state: object = None) -> None:
        self.value = (func, args) if state is None else (func, args, state)

    def __reduce__(self) -> tuple[object, ...]:
        return self.value


def _write(tmp_path: Path, obj: object) -> Path:
    path = tmp_path / "crafted.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


def test_ndarray_cannot_be_called_on_a_buffer(tmp_path: Path) -> None:
    # numpy.ndarray((1,), "O", buffer) would read file bytes as object pointers
    path = _write(tmp_path, _Reduce(np.ndarray, ((1,), "O", b"\0" * 8)))
    with pytest.raises(UnsafePickleError, match="numpy.ndarray called as a constructor"):
        safe_load(path)


def test_dtype_state_claiming_no_objects_cannot_smuggle_pointers(tmp_path: Path) -> None:
    # a pickled object dtype whose state clears the "holds objects" flags: numpy would copy raw bytes
    spoofed = _Reduce(np.dtype, ("O8", False, True), (3, "|", None, None, None, -1, -1, 0))
    path = _write(tmp_path, _Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (1,), spoofed, False, b"\0" * 8)))
    with pytest.raises(DataFileError, match="not a readable pickle"):
        safe_load(path)


def test_dtype_state_never_touches_numpys_shared_descriptors(tmp_path: Path) -> None:
    before = (np.dtype("f8").byteorder, np.dtype("f8").flags)
    # copy=False asks for numpy's shared float64 descriptor; its state claims objects and a foreign byte order
    spoofed = _Reduce(np.dtype, ("f8", False, False), (3, ">", None, None, None, -1, -1, 63))
    path = _write(tmp_path, _Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, (1,), spoofed, False, [1.5])))
    with pytest.raises(DataFileError):
        safe_load(path)
    assert (np.dtype("f8").byteorder, np.dtype("f8").flags) == before


def test_structured_dtypes_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, {"x": np.zeros(2, dtype=[("a", "f4"), ("b", "O")])})
    with pytest.raises(UnsafePickleError, match="numpy dtype.* only numeric, string and object arrays"):
        safe_load(path)


def test_bytes_admits_only_the_empty_byte_string(tmp_path: Path) -> None:
    path = tmp_path / "bytes.pkl"
    path.write_bytes(b"\x80\x02" + pickle.GLOBAL + b"__builtin__\nbytes\n" + pickle.EMPTY_TUPLE + pickle.REDUCE + b".")
    assert safe_load(path) == b""
    big = pickle.BININT + struct.pack("<i", 2**30)
    path.write_bytes(b"\x80\x02" + pickle.GLOBAL + b"builtins\nbytes\n" + big + pickle.TUPLE1 + pickle.REDUCE + b".")
    with pytest.raises(UnsafePickleError, match="bytes called with arguments"):
        safe_load(path)
