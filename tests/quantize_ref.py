"""llama.cpp as the reference for `ggufkit quantize`: llama_model_quantize through llama-cpp-python with every
field of llama_model_quantize_params it exposes, and llama.cpp's own llama-quantize / llama-gguf-split programs
(shipped in llama-cpp-python's lib/) for what only the programs do (imatrix files and their filters,
--tensor-type-file, --override-kv, the quantize.imatrix.* keys, gguf-split's layout)."""
from __future__ import annotations

import ctypes
import functools
import os
import subprocess
from pathlib import Path

from gguf import GGMLQuantizationType as T


@functools.cache
def lib_dir() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).resolve().parent / "lib"


def llama_quantize(src: Path, dst: Path, scheme: str, *, pure: bool = False, output_type: T | None = None,
                   embd_type: T | None = None, leave_output: bool = False,
                   tensor_types: tuple[tuple[str, T], ...] = (), imatrix: dict | None = None,
                   allow_requantize: bool = False, keep_split: bool = False, nthread: int = 2) -> None:
    """llama_model_quantize(src -> dst) with these params; raises with llama.cpp's log on failure."""
    import llama_cpp
    from llama_quantize_schemes import _LOG, _capture_llama_log

    from ggufkit.plan.schemes import get_scheme

    _capture_llama_log()
    _LOG.clear()
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = int(get_scheme(scheme).file_type)
    p.nthread = nthread
    p.pure = pure
    p.quantize_output_tensor = not leave_output
    p.allow_requantize = allow_requantize
    p.keep_split = keep_split
    if output_type is not None:  # the default is GGML_TYPE_COUNT, llama.cpp's "not set"
        p.output_tensor_type = int(output_type)
    if embd_type is not None:
        p.token_embedding_type = int(embd_type)
    keep = []
    if tensor_types:
        tt = (llama_cpp.llama_model_tensor_override * (len(tensor_types) + 1))()
        for slot, (pattern, qtype) in zip(tt, tensor_types):
            raw = ctypes.create_string_buffer(pattern.encode())
            keep.append(raw)
            slot.pattern, slot.type = ctypes.cast(raw, ctypes.c_char_p), int(qtype)
        tt[len(tensor_types)].pattern = None
        p.tt_overrides = tt
        keep.append(tt)
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for slot, (name, values) in zip(entries, imatrix.items()):
            arr = (ctypes.c_float * len(values))(*[float(v) for v in values])
            keep.append(arr)
            slot.name, slot.data, slot.size = name.encode(), arr, len(values)
        entries[len(imatrix)].name = None
        p.imatrix = entries
        keep.append(entries)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src.name} -> {scheme}) failed:\n{''.join(_LOG)[-2000:]}")


def run_tool(name: str, *args, cwd: Path | None = None) -> str:
    """Run one of llama.cpp's programs from llama-cpp-python's lib/; its output, or an assertion error."""
    env = {**os.environ, "LD_LIBRARY_PATH": str(lib_dir())}
    result = subprocess.run([str(lib_dir() / name), *map(str, args)], check=False, capture_output=True, text=True,
                            env=env, cwd=cwd, timeout=600)
    assert result.returncode == 0, f"{name} {' '.join(map(str, args))} failed:\n{result.stderr[-2000:]}"
    return result.stdout + result.stderr
