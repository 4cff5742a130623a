"""Build the C++ runner (runner/graphopt_tvm_run.cc) against the TVM runtime shipped in the apache-tvm wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from graphopt.errors import GraphoptError

SOURCE = Path(__file__).resolve().parent / "runner" / "graphopt_tvm_run.cc"


def runtime_dirs() -> dict[str, Path]:
    """Include and library directories of tvm-ffi and the TVM runtime."""
    import tvm
    import tvm_ffi

    tvm_dir = Path(tvm.__file__).resolve().parent
    ffi_dir = Path(tvm_ffi.__file__).resolve().parent
    return {"include": ffi_dir / "include", "tvm_lib": tvm_dir / "lib", "ffi_lib": ffi_dir / "lib"}


def compile_command(output: str | os.PathLike, compiler: str = "g++") -> list[str]:
    d = runtime_dirs()
    rpath = f"{d['tvm_lib']}:{d['ffi_lib']}"
    return [compiler, "-std=c++17", "-O2", str(SOURCE), f"-I{d['include']}", f"-L{d['tvm_lib']}", f"-L{d['ffi_lib']}",
            "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", f"-Wl,-rpath,{rpath}", "-o", str(output)]


def build_runner(output: str | os.PathLike, compiler: str | None = None) -> Path:
    """Compile the runner to `output`; needs a C++17 compiler (g++ or $CXX)."""
    compiler = compiler or os.environ.get("CXX") or "g++"
    if shutil.which(compiler) is None:
        raise GraphoptError(f"no C++ compiler {compiler!r} on PATH: install g++ or set $CXX")
    cmd = compile_command(output, compiler)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise GraphoptError(f"building the C++ runner failed:\n{' '.join(cmd)}\n{done.stderr[-4000:]}")
    return Path(output)
