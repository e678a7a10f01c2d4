"""Build lib/libmobilemoe_kernels.so from csrc/*.cpp against the executorch wheel.

``python -m mobilemoe_kernels.build [--force] [--verbose]``. Skips the build when the
library is newer than every source. Portable binary: no -march; the SIMD paths are
compiled per function with target attributes and chosen at run time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent
CSRC = PKG / "csrc"
LIB_DIR = PKG / "lib"
LIB = LIB_DIR / "libmobilemoe_kernels.so"


def executorch_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("mobilemoe_kernels.build: the executorch package is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def sources() -> list[Path]:
    return sorted(CSRC.glob("*.cpp")) + sorted(CSRC.glob("*.h"))


def up_to_date() -> bool:
    if not LIB.exists():
        return False
    t = LIB.stat().st_mtime
    return all(p.stat().st_mtime < t for p in sources() + [Path(__file__)])


def command(et: Path, out: Path) -> list[str]:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx or not shutil.which(cxx):
        raise RuntimeError("mobilemoe_kernels.build: no C++ compiler found (install g++ or set $CXX)")
    inc = et / "include"
    lib = et / "lib"
    return [
        cxx,
        "-std=c++17",
        "-O3",
        "-fPIC",
        "-shared",
        "-DC10_USING_CUSTOM_GENERATED_MACROS",
        "-DET_EVENT_TRACER_ENABLED",
        "-DET_USE_THREADPOOL",
        f"-I{inc}",
        f"-I{inc / 'executorch/runtime/core/portable_type/c10'}",
        *[str(p) for p in sorted(CSRC.glob("*.cpp"))],
        "-o",
        str(out),
        f"-L{lib}",
        "-lexecutorch",
        "-lexecutorch_threadpool",
        f"-Wl,-rpath,{lib}",
    ]


def build(force: bool = False, verbose: bool = False) -> Path:
    if not force and up_to_date():
        return LIB
    LIB_DIR.mkdir(exist_ok=True)
    tmp = LIB.with_suffix(f".so.tmp{os.getpid()}")
    cmd = command(executorch_dir(), tmp)
    if verbose:
        print(" ".join(cmd))
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"mobilemoe_kernels.build: compile failed:\n{res.stderr[-4000:]}")
    os.replace(tmp, LIB)
    return LIB


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    try:
        path = build(force=args.force, verbose=args.verbose)
    except RuntimeError as e:
        print(str(e), file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
