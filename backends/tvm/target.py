"""Host target detection: the LLVM CPU name and core count TVM should compile and tune for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tvm
from tvm.target import codegen

from graphopt.backends.tvm.artifact import physical_cores
from graphopt.errors import GraphoptError


def host_mcpu() -> str:
    """The host CPU as LLVM names it (e.g. 'znver4', 'skylake-avx512'), checked to be valid for TVM's LLVM."""
    cpu = str(codegen.llvm_get_system_cpu())
    if not cpu or cpu == "generic" or not codegen.llvm_is_valid_cpu(cpu, str(codegen.llvm_get_system_triple())):
        return "generic"
    return cpu


def detect_target(target: Any = None, *, num_cores: int | None = None, mcpu: str | None = None) -> tvm.target.Target:
    """A `tvm.target.Target` for `target`, or for this host when `target` is None.

    `target` may be a Target, a JSON-style dict (`{"kind": "llvm", "mcpu": "znver4"}`) or a kind
    name ("llvm"); for an llvm target, missing `mcpu` and `num-cores` are filled in from the host,
    because without `mcpu` LLVM emits baseline x86-64 (no AVX-512) and without `num-cores`
    MetaSchedule tunes for the wrong parallelism.
    """
    if isinstance(target, tvm.target.Target):
        return target
    if target is None:
        config: dict[str, Any] = {"kind": "llvm"}
    elif isinstance(target, str):
        if target.lstrip().startswith("{"):
            import json

            config = dict(json.loads(target))
        elif " " in target or target != target.strip():
            raise GraphoptError(f"target {target!r}: TVM 0.27 takes targets as a kind name or a JSON dict, "
                                "e.g. {'kind': 'llvm', 'mcpu': 'znver4', 'num-cores': 2}; not as a flag string")
        else:
            config = {"kind": target}
    elif isinstance(target, Mapping):
        config = dict(target)
    else:
        raise GraphoptError(f"target must be None, a tvm Target, a dict or a kind name, not {type(target).__name__}")
    if config.get("kind") == "llvm":
        if mcpu is not None:
            config["mcpu"] = mcpu
        config.setdefault("mcpu", host_mcpu())
        if num_cores is not None:
            config["num-cores"] = num_cores
        config.setdefault("num-cores", physical_cores())
    return tvm.target.Target(config)


def target_key(target: tvm.target.Target) -> str:
    """A short stable file-name-safe key for a target: tuning records are only valid for their target."""
    import hashlib

    cfg = dict(target.export())
    cfg.pop("tag", None)
    text = repr(sorted((k, str(v)) for k, v in cfg.items()))
    name = "-".join(str(cfg.get(k)) for k in ("kind", "mcpu") if cfg.get(k)) or "target"
    return f"{name}-{cfg.get('num-cores', 'x')}c-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
