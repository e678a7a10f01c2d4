"""mobilemoe_kernels: CPU kernels of mobilemoe's exported programs: a MoE feed-forward over
the top-k experts' INT4 weights, and attention that reads only the KV-cache slots a query
may see.

* ``mobilemoe_kernels.ops``: torch ops ``mmoe::moe_ffn_8da4w`` / ``mmoe::moe_ffn_f32`` /
  ``mmoe::attend_kv`` (functional + ``.out``; CPU = the pure-torch reference, Meta =
  shapes) for eager runs and ``torch.export``.
* ``load()``: loads ``lib/libmobilemoe_kernels.so`` (the ExecuTorch kernels of the same
  ops, plus raw ``extern "C"`` entry points) once per process, so ExecuTorch programs that
  call the ops can run.
* ``pack`` / ``reference``: weight packing and the numerics.

Importing this package is cheap (no torch import). Stands alone: never imports
``mobilemoe`` or ``device_lab``.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

__all__ = [
    "OPERATORS",
    "KernelLibraryError",
    "library_path",
    "load",
    "is_loaded",
    "isa",
    "raw",
    "operators_in",
    "load_for",
]

OPERATORS = ("mmoe::moe_ffn_8da4w", "mmoe::moe_ffn_f32", "mmoe::attend_kv")

_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None = None
_LOADED_PATH: Path | None = None
# Guard across copies of this package in one process (two libraries registering the same
# op names abort the process): "<pid>:<path>" is kept in the process environment
# (the pid makes a child process, which inherits the environment, start clean).
_ENV_GUARD = "_MOBILEMOE_KERNELS_LOADED"


class KernelLibraryError(RuntimeError):
    """The kernel library is missing or cannot be loaded."""


def library_path() -> Path:
    """``lib/libmobilemoe_kernels.so`` beside this package, or ``$MOBILEMOE_KERNELS_LIBRARY``."""
    override = os.environ.get("MOBILEMOE_KERNELS_LIBRARY")
    if override:
        return Path(override).expanduser().resolve()
    return Path(__file__).resolve().parent / "lib" / "libmobilemoe_kernels.so"


def is_loaded() -> bool:
    return _LIB is not None


def load() -> Path:
    """Load the kernel library into the process (idempotent) and return its path."""
    global _LIB, _LOADED_PATH
    with _LOCK:
        if _LIB is not None:
            return _LOADED_PATH  # type: ignore[return-value]
        path = library_path()
        pid, _, other = os.environ.get(_ENV_GUARD, "").partition(":")
        if other and pid == str(os.getpid()) and Path(other) != path:
            raise KernelLibraryError(
                f"another copy of libmobilemoe_kernels is already loaded in this process ({other}); "
                "loading a second one would register mmoe:: ops twice and abort"
            )
        if not path.exists():
            raise KernelLibraryError(
                f"{path} is missing: build it with `make setup` or `python -m mobilemoe_kernels.build`"
            )
        # The shared libexecutorch.so (the one kernel registry) must be loaded first.
        import executorch.extension.pybindings._C  # noqa: F401

        try:
            lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise KernelLibraryError(f"cannot load {path}: {e}") from e
        _declare(lib)
        os.environ[_ENV_GUARD] = f"{os.getpid()}:{path}"
        _LIB, _LOADED_PATH = lib, path
        return path


def operators_in(program: str | os.PathLike) -> list[str]:
    """The ``mmoe::`` operators a ``.pte`` file calls (its operator table names them)."""
    import mmap

    with open(program, "rb") as f:
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            return []
        with data:
            return [op for op in OPERATORS if data.find(op.encode()) >= 0]


def load_for(program: str | os.PathLike) -> list[str]:
    """Load the library if ``program`` calls our operators; returns those operators.

    Without the library such a program loads but fails at its first run with ExecuTorch's
    bare "OperatorMissing"; this raises :class:`KernelLibraryError` naming the operator
    and how to get the library instead.
    """
    ops = operators_in(program)
    if ops and not is_loaded():
        try:
            load()
        except KernelLibraryError as e:
            raise KernelLibraryError(
                f"{program} calls {', '.join(ops)} (mobilemoe's kernels), which needs "
                f"libmobilemoe_kernels loaded in the process: {e}. From Python, "
                "`import mobilemoe_kernels; mobilemoe_kernels.load()` before loading the program; "
                "a C++ runner links or dlopens lib/libmobilemoe_kernels.so (docs/kernels.md)"
            ) from None
    return ops


def _declare(lib: ctypes.CDLL) -> None:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.mmoe_moe_ffn_8da4w_raw.argtypes = [p, p, p, i64, i64, i64, i64, i64, p, p, p, p, p, p, p]
    lib.mmoe_moe_ffn_8da4w_raw.restype = ctypes.c_int
    lib.mmoe_moe_ffn_f32_raw.argtypes = [p, p, p, i64, i64, i64, i64, i64, p, p, p]
    lib.mmoe_moe_ffn_f32_raw.restype = ctypes.c_int
    lib.mmoe_attend_kv_raw.argtypes = [p, p, p, p, i64, i64, i64, i64, i64, i64, i64, p]
    lib.mmoe_attend_kv_raw.restype = ctypes.c_int
    lib.mmoe_isa.restype = ctypes.c_char_p
    lib.mmoe_set_isa.argtypes = [ctypes.c_char_p]
    lib.mmoe_set_isa.restype = ctypes.c_int
    lib.mmoe_last_error.restype = ctypes.c_char_p


def raw() -> ctypes.CDLL:
    """The loaded library as a ctypes handle (``mmoe_moe_ffn_8da4w_raw``, ``mmoe_attend_kv_raw``,
    ``mmoe_isa``, ...)."""
    load()
    return _LIB  # type: ignore[return-value]


def isa() -> str:
    """The SIMD path the kernels use: portable, avx2, avx512vnni (x86) or neon (AArch64).

    The environment variable MOBILEMOE_KERNELS_ISA forces one."""
    return raw().mmoe_isa().decode()
