"""A restricted unpickler for the field's feature files.

The MMSA and MulT/CMU-SDK feature files are pickles downloaded from the internet, and ``pickle.load`` runs
whatever callable a pickle names. :func:`safe_load` admits only the globals that numpy arrays and scalars need:

* ``_reconstruct``, ``scalar``, ``ndarray``, ``dtype`` and ``_frombuffer`` (protocol 5) under ``numpy.core.*``
  (numpy-1 writers) and ``numpy._core.*`` (numpy-2 writers), plus ``numpy.ndarray`` and ``numpy.dtype``. The
  names are resolved against the *installed* numpy, so numpy-1 names never import the deprecated ``numpy.core``
  shim;
* ``_codecs.encode`` with a Latin-1 codec, which protocol 0-2 pickles written by Python 3 use for ``bytes``, and
  ``bytes()`` without arguments (``__builtin__.bytes``), which they use for ``b""`` (the data of an empty array).

Plain containers and scalars (dict, list, tuple, str, bytes, int, float, bool, None) need no global. Any other
global raises :class:`UnsafePickleError` from ``find_class``, before the callable is ever obtained, so nothing
named by the file runs. Files are read with ``encoding="latin1"`` so that numpy pickles written by Python 2 load.

Admitting numpy's constructors verbatim would still let a file corrupt memory: ``numpy.ndarray(shape, "O",
buffer)`` turns file bytes into object pointers, and numpy trusts the flags in a pickled dtype state (a dtype that
claims to hold no objects makes ``ndarray.__setstate__`` copy raw bytes into an object array). So the pickle never
gets numpy's objects themselves:

* ``ndarray`` is a token accepted only as the first argument of ``_reconstruct``;
* ``dtype`` records its arguments and state; every consumer (array state, ``scalar``, ``_frombuffer``) rebuilds a
  fresh dtype from them and keeps only its canonical type string, and only plain numeric, string and object
  dtypes are admitted (no structured or sub-array dtypes, which the feature files never use);
* arrays are built as a private ``ndarray`` subclass whose ``__setstate__`` applies that rule, and are turned
  back into plain ``ndarray`` views once the whole file is loaded.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib
import io
import logging
import os
import pickle
from typing import Any

import numpy as np

from hrlf.data.features import DataFileError

logger = logging.getLogger(__name__)

__all__ = ["UnsafePickleError", "load_with_sha256", "safe_load"]

_HASH_CHUNK = 1 << 20  # bytes read per step when hashing the tail of a file
_MAX_NAME = 120  # longest global name echoed back in an error message
_DTYPE_KINDS = "biufcSUO"  # bool, integers, floats, complex, bytes, unicode, object
_ONLY_ARRAYS = "only numpy arrays and plain containers are allowed"
_PLAIN_DTYPES = "only numeric, string and object arrays are allowed"


class UnsafePickleError(DataFileError):
    """A pickle asks for a global (or a numpy construct) outside the allow-list; nothing from it was executed."""


class _Refused(Exception):
    """Raised inside the unpickler; :func:`load_with_sha256` turns it into an :class:`UnsafePickleError`."""

    def __init__(self, what: str, allowed: str = _ONLY_ARRAYS) -> None:
        super().__init__(what)
        self.what = what
        self.allowed = allowed


def _printable(text: str) -> str:
    """``text`` made safe for a one-line message: escaped when not printable, shortened when long."""
    if not text.isprintable():
        text = ascii(text)
    return text if len(text) <= _MAX_NAME else text[:_MAX_NAME] + "..."


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _ArrayToken:
    """Stands for ``numpy.ndarray`` in a pickle: accepted only as the first argument of ``_reconstruct``."""

    __slots__ = ()

    def __call__(self, *_args: object, **_kwargs: object) -> None:
        raise _Refused("numpy.ndarray called as a constructor (it can turn file bytes into object pointers)")

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _ArrayToken()


class _DtypeRecipe:
    """Stands for a ``numpy.dtype`` in a pickle: its arguments and BUILD state are recorded, never applied to a
    dtype that the pickle can reach again."""

    __slots__ = ("args", "state")

    def __init__(self, *args: object) -> None:
        self.args = args
        self.state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state


def _canonical_dtype(value: object) -> np.dtype:
    """A fresh dtype for what the pickle described, rebuilt from its type string; plain kinds only.

    Raises:
        _Refused: a structured, sub-array or otherwise unsupported dtype.
    """
    if isinstance(value, _DtypeRecipe):
        args: tuple[Any, ...] = getattr(value, "args", ())
        if not (1 <= len(args) <= 3 and isinstance(args[0], str) and all(isinstance(a, int) for a in args[1:])):
            raise _Refused(f"numpy dtype arguments {_printable(repr(args))}")
        # copy=True: the state below must never reach numpy's shared built-in descriptors
        dtype = np.dtype(args[0], bool(args[1]) if len(args) > 1 else False, True)
        state = getattr(value, "state", None)
        # state = (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        if isinstance(state, tuple) and len(state) >= 5 and any(part is not None for part in state[2:5]):
            raise _Refused("a structured or sub-array numpy dtype", _PLAIN_DTYPES)
        if state is not None:
            dtype.__setstate__(state)  # type: ignore[attr-defined]  # numpy's stubs omit it; pickle calls it
    elif isinstance(value, (str, bytes)):
        dtype = np.dtype(value.decode("latin1") if isinstance(value, bytes) else value)
    else:
        raise _Refused(f"a numpy dtype given as {type(value).__name__}")
    if dtype.names is not None or dtype.subdtype is not None or dtype.kind not in _DTYPE_KINDS:
        raise _Refused(f"numpy dtype {_printable(str(dtype))}", _PLAIN_DTYPES)
    return np.dtype(dtype.str)


class _GuardedArray(np.ndarray):
    """An array being unpickled: ``__setstate__`` rebuilds the pickled dtype before numpy reads the data."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise TypeError(f"numpy array state must be a 4- or 5-tuple, got {type(state).__name__}")
        items = list(state)
        items[-3] = _canonical_dtype(items[-3])  # (version,) shape, dtype, is_fortran, data
        np.ndarray.__setstate__(self, tuple(items))


def _latin1_encode(obj: object, encoding: object = "latin1", errors: object = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` that only does what pickles use it for (``str`` -> Latin-1 bytes).

    Raises:
        _Refused: any other codec (``_codecs.encode`` reaches every registered codec) or argument.
    """
    try:
        is_latin1 = isinstance(encoding, str) and codecs.lookup(encoding).name == "iso8859-1"
    except LookupError:
        is_latin1 = False
    if not is_latin1 or not isinstance(obj, str) or errors != "strict":
        raise _Refused(f"_codecs.encode with codec {_printable(str(encoding))}", "only latin1 is allowed")
    return obj.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    """Stand-in for ``bytes``: protocol 0-2 pickles written by Python 3 store ``b""`` as ``bytes()``.

    Raises:
        _Refused: any argument (``bytes(n)`` would allocate whatever the file asks for).
    """
    if args:
        raise _Refused("bytes called with arguments", "only bytes() for an empty byte string is allowed")
    return b""


def _numpy_core(submodule: str) -> Any:
    """``numpy._core.<submodule>`` on numpy >= 2, ``numpy.core.<submodule>`` before (both already imported)."""
    package = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"
    return importlib.import_module(f"{package}.{submodule}")


def _allowed_globals() -> dict[tuple[str, str], object]:
    """The allow-list: ``(module, name)`` as written in a pickle -> what the unpickler gets instead."""
    multiarray = _numpy_core("multiarray")
    numeric = _numpy_core("numeric")

    def reconstruct(subtype: object, shape: Any, typecode: object) -> np.ndarray:
        if subtype is not _NDARRAY:
            raise _Refused(f"_reconstruct of {_printable(type(subtype).__name__)}")
        return multiarray._reconstruct(_GuardedArray, shape, _canonical_dtype(typecode))

    def scalar(dtype: object, *args: Any) -> np.generic:
        return multiarray.scalar(_canonical_dtype(dtype), *args)

    def frombuffer(buffer: object, dtype: object, shape: Any, order: Any) -> np.ndarray:
        if not isinstance(buffer, (bytes, bytearray)):
            raise _Refused(f"_frombuffer of {_printable(type(buffer).__name__)}")
        return numeric._frombuffer(buffer, _canonical_dtype(dtype), shape, order).view(_GuardedArray)

    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _DtypeRecipe,
        ("_codecs", "encode"): _latin1_encode,
        ("__builtin__", "bytes"): _empty_bytes,
        ("builtins", "bytes"): _empty_bytes,
    }
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{prefix}.multiarray", "scalar")] = scalar
        allowed[(f"{prefix}.multiarray", "ndarray")] = _NDARRAY
        allowed[(f"{prefix}.multiarray", "dtype")] = _DtypeRecipe
        allowed[(f"{prefix}.numeric", "_frombuffer")] = frombuffer
    return allowed


def _plain(obj: object, done: dict[int, object]) -> object:
    """``obj`` with the unpickler's stand-ins replaced: guarded arrays by plain ``ndarray`` views, dtype recipes by
    their canonical dtypes, the ``ndarray`` token by the class (containers are updated in place)."""
    if isinstance(obj, _DtypeRecipe):
        return _canonical_dtype(obj)
    if obj is _NDARRAY:
        return np.ndarray
    key = id(obj)
    if key in done:
        return done[key]
    if isinstance(obj, np.ndarray):
        array = obj.view(np.ndarray) if isinstance(obj, _GuardedArray) else obj
        done[key] = array
        if array.dtype.hasobject:
            for index in np.ndindex(array.shape):
                item = array[index]
                new = _plain(item, done)
                if new is not item:
                    array[index] = new
        return array
    if isinstance(obj, dict):
        done[key] = obj
        for name, value in obj.items():
            new = _plain(value, done)
            if new is not value:
                obj[name] = new
        return obj
    if isinstance(obj, list):
        done[key] = obj
        for index, value in enumerate(obj):
            new = _plain(value, done)
            if new is not value:
                obj[index] = new
        return obj
    if isinstance(obj, tuple):
        done[key] = obj  # a cycle through this tuple keeps the original; arrays stay ndarrays either way
        items = [_plain(value, done) for value in obj]
        if any(new is not old for new, old in zip(items, obj, strict=True)):
            done[key] = tuple(items)
        return done[key]
    return obj


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only the numpy allow-list."""

    def __init__(self, file: _HashingReader) -> None:
        super().__init__(file, encoding="latin1")
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        """Resolve a global from the allow-list; refuse everything else without importing it.

        Raises:
            _Refused: ``module.name`` is not on the allow-list.
        """
        found = self._allowed.get((module, name))
        if found is None:
            raise _Refused(_printable(f"{module}.{name}"))
        return found


class _HashingReader:
    """Wraps a binary file so that every byte the unpickler reads also feeds a SHA-256 digest."""

    def __init__(self, file: io.BufferedReader) -> None:
        self._file = file
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self.digest.update(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        data = self._file.readline(size)
        self.digest.update(data)
        return data

    def readinto(self, buffer: Any) -> int:
        count = self._file.readinto(buffer)
        if count:
            self.digest.update(memoryview(buffer)[:count])
        return count or 0

    def finish(self) -> str:
        """Hash the bytes after the pickle's STOP opcode too, so the digest covers the whole file."""
        while chunk := self._file.read(_HASH_CHUNK):
            self.digest.update(chunk)
        return self.digest.hexdigest()


def load_with_sha256(path: str | os.PathLike[str]) -> tuple[object, str]:
    """Load a pickle with the restricted unpickler and return it with the SHA-256 of the file bytes.

    The file is read once: the digest is computed from the bytes as they stream into the unpickler.

    Args:
        path: the pickle file.

    Returns:
        The unpickled object and the hex SHA-256 digest of the whole file.

    Raises:
        UnsafePickleError: the pickle names a global outside the allow-list (nothing was executed).
        DataFileError: the file is missing, unreadable, empty, truncated or not a pickle.
    """
    source = os.fspath(path)
    try:
        handle = open(source, "rb")  # noqa: SIM115 - closed below; the reader wraps it
    except FileNotFoundError:
        raise DataFileError(f"{source}: no such file") from None
    except OSError as error:
        raise DataFileError(f"{source}: cannot open the file: {_one_line(error.strerror or str(error))}") from None
    with handle:
        reader = _HashingReader(handle)
        try:
            obj = _plain(_RestrictedUnpickler(reader).load(), {})
        except _Refused as refused:
            raise UnsafePickleError(f"refused to load {refused.what} from {source}: {refused.allowed}") from None
        except OSError as error:
            raise DataFileError(f"{source}: cannot read the file: {_one_line(str(error))}") from None
        except Exception as error:  # untrusted bytes make the unpickler fail in many ways
            reason = _one_line(f"{type(error).__name__}: {error}")
            raise DataFileError(f"{source}: not a readable pickle (truncated or not a pickle file): {reason}") from None
        digest = reader.finish()
    logger.debug("loaded %s (sha256 %s)", source, digest)
    return obj, digest


def safe_load(path: str | os.PathLike[str]) -> object:
    """Load a pickle that may come from the internet, admitting only numpy arrays and plain containers.

    Args:
        path: the pickle file.

    Returns:
        The unpickled object (typically a dict of splits holding dicts of numpy arrays).

    Raises:
        UnsafePickleError: the pickle names a global outside the allow-list (nothing was executed).
        DataFileError: the file is missing, unreadable, empty, truncated or not a pickle.
    """
    obj, _ = load_with_sha256(path)
    return obj
