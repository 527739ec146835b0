"""The independent reference for GGUF structure: llama.cpp's own gguf reader (gguf_init_from_file in the
libggml-base that llama-cpp-python ships), through ctypes.

`python tests/corpus/llama_gguf.py FILE...` prints one JSON line per file. Run it in a subprocess
(`read_in_subprocess`): llama.cpp may abort the process on some inputs, and that abort counts as a rejection. Accepting here means: gguf_init_from_file succeeds and every
tensor's data lies inside the file (the check llama.cpp's model loader makes before mapping a tensor).
"""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path


class _InitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


def _lib() -> ctypes.CDLL:
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")  # its directory only; importing llama_cpp loads much more
    lib_dir = Path(spec.origin).parent / "lib"
    lib = ctypes.CDLL(str(min(lib_dir.glob("libggml-base.so*"))))
    ctx, i64, size = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
    signatures = {
        "gguf_init_from_file": (ctx, [ctypes.c_char_p, _InitParams]),
        "gguf_free": (None, [ctx]),
        "gguf_get_version": (ctypes.c_uint32, [ctx]),
        "gguf_get_alignment": (size, [ctx]),
        "gguf_get_data_offset": (size, [ctx]),
        "gguf_get_n_kv": (i64, [ctx]),
        "gguf_get_key": (ctypes.c_char_p, [ctx, i64]),
        "gguf_get_n_tensors": (i64, [ctx]),
        "gguf_get_tensor_name": (ctypes.c_char_p, [ctx, i64]),
        "gguf_get_tensor_type": (ctypes.c_int, [ctx, i64]),
        "gguf_get_tensor_offset": (size, [ctx, i64]),
        "gguf_get_tensor_size": (size, [ctx, i64]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def read(path: str) -> dict:
    """llama.cpp's view of the file: {"ok": False} or its version, alignment, data offset, keys and tensors."""
    lib = _lib()
    ctx = lib.gguf_init_from_file(os.fsencode(path), _InitParams(True, None))
    if not ctx:
        return {"ok": False, "reason": "gguf_init_from_file failed"}
    try:
        data_offset = lib.gguf_get_data_offset(ctx)
        tensors = [{"name": lib.gguf_get_tensor_name(ctx, i).decode(errors="replace"),
                    "type": lib.gguf_get_tensor_type(ctx, i),
                    "offset": lib.gguf_get_tensor_offset(ctx, i), "bytes": lib.gguf_get_tensor_size(ctx, i)}
                   for i in range(lib.gguf_get_n_tensors(ctx))]
        info = {"ok": True, "version": lib.gguf_get_version(ctx), "alignment": lib.gguf_get_alignment(ctx),
                "data_offset": data_offset,
                "keys": [lib.gguf_get_key(ctx, i).decode(errors="replace") for i in range(lib.gguf_get_n_kv(ctx))],
                "tensors": tensors}
    finally:
        lib.gguf_free(ctx)
    size = os.path.getsize(path)
    beyond = [t["name"] for t in tensors if data_offset + t["offset"] + t["bytes"] > size]
    if beyond:
        return {"ok": False, "reason": f"tensor data beyond the end of the file: {beyond[0]}"}
    return info


def read_in_subprocess(paths: list[str | os.PathLike]) -> list[dict]:
    """read() of each file in child processes; a crash (llama.cpp abort) is {"ok": False, "reason": ...} for the
    file it happened on, and the rest continue in a new child."""
    results: list[dict] = []
    while len(results) < len(paths):
        rest = [os.fspath(p) for p in paths[len(results):]]
        proc = subprocess.run([sys.executable, __file__, *rest], capture_output=True, text=True,
                              errors="replace", timeout=300, check=False)
        results += [json.loads(line) for line in proc.stdout.splitlines()]
        if proc.returncode != 0 and len(results) < len(paths):
            results.append({"ok": False, "reason": f"llama.cpp crashed (exit {proc.returncode})"})
    return results


if __name__ == "__main__":
    for file in sys.argv[1:]:
        print(json.dumps(read(file)), flush=True)
