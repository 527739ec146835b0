"""Make the installed llama-cpp-python safe to run on this CPU, once per process: `ensure()`.

1. Dynamic CPU backends. ggufkit's own build (llama_build.py) ships one libggml-cpu-<variant>.so per x86-64 level
   and lets ggml pick the best for the running CPU; llama-cpp-python does not load such backends itself
   (llama-cpp-python #2069), and llama.cpp's default search path is the executable's directory (python's bin/).
   ensure() loads them from llama_cpp/lib with ggml_backend_load_all_from_path.
2. The AMX guard, for a llama-cpp-python the user built natively: when the CPU backend offers the AMX buffer type,
   ggml moves weights into it and the first batched decode segfaults in the llama.cpp of 0.3.36 (llama.cpp
   #20824). ensure() then makes every model load with use_extra_bufts = false (llama.cpp's model parameter that
   keeps weights in the plain CPU buffer), by wrapping llama_model_default_params, which Llama.__init__ calls.
   That also turns off weight repacking (slower prompt processing); the guard says so once on stderr. Our own
   build has no AMX variant, so it never needs the guard.
"""
from __future__ import annotations

import ctypes
import functools
import json
import os
import re
import sys
import threading
from pathlib import Path

from ggufkit.errors import RuntimeFailure

_lock = threading.Lock()
_state: dict = {}
GGML_BACKEND_DEVICE_TYPE_CPU = 0


def lib_dir() -> Path:
    """Where llama-cpp-python loads its libraries from: $LLAMA_CPP_LIB_PATH (its own override), else its lib/."""
    import llama_cpp

    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    return Path(override) if override else Path(llama_cpp.__file__).resolve().parent / "lib"


def build_stamp() -> dict | None:
    """The configuration ggufkit's build recorded in the wheel (llama_build.STAMP), or None for another build."""
    import llama_cpp

    path = Path(llama_cpp.__file__).resolve().parent / "ggufkit_build.json"
    if os.environ.get("LLAMA_CPP_LIB_PATH"):
        return None  # another build's libraries are in use
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _loaded(name: str) -> str:
    """The path of the copy of lib<name>.so that libllama loaded. A wheel stores libggml.so, .so.0 and .so.0.x
    as three separate files (zip has no symlinks); libllama binds to the soname (.so.0), and a second copy would
    have a registry of its own. Linux: from /proc/self/maps; else the soname file."""
    pattern = re.compile(rf"/lib{re.escape(name)}\.so(\.\d+)*$")
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.split(None, 5)[-1] if line.count(" ") >= 5 else ""
            if pattern.search(path):
                return path
    except OSError:
        pass
    for candidate in (f"lib{name}.so.0", f"lib{name}.so"):
        if (lib_dir() / candidate).exists():
            return str(lib_dir() / candidate)
    return f"lib{name}.so"


@functools.lru_cache(maxsize=1)
def _ggml() -> ctypes.CDLL:
    import llama_cpp  # noqa: F401 - loads libllama, and with it libggml and libggml-base

    lib = ctypes.CDLL(_loaded("ggml"))
    lib.ggml_backend_reg_count.restype = ctypes.c_size_t
    lib.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
    lib.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    lib.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    lib.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    lib.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_name.restype = ctypes.c_char_p
    lib.ggml_backend_dev_description.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_description.restype = ctypes.c_char_p
    base = ctypes.CDLL(_loaded("ggml-base"))
    base.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
    base.ggml_backend_buft_name.restype = ctypes.c_char_p
    lib.buft_name = base.ggml_backend_buft_name
    return lib


def _cpu_device() -> int | None:
    return _ggml().ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU) or None


def extra_buffer_types() -> list[str]:
    """Names of the CPU device's extra buffer types (e.g. ["AMX", "CPU_REPACK"]); what the weights may move to."""
    lib = _ggml()
    dev = _cpu_device()
    if dev is None:
        return []
    reg = lib.ggml_backend_dev_backend_reg(dev)
    fn_addr = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
    if not fn_addr:
        return []
    fn = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(fn_addr)
    arr = fn(dev)
    names = []
    i = 0
    while arr and arr[i]:
        names.append(lib.buft_name(arr[i]).decode())
        i += 1
    return names


def cpu_backend() -> str:
    """Which CPU backend library runs the model: e.g. "libggml-cpu-zen4.so" (ggufkit's build: the variant ggml
    chose for this CPU) or "libggml-cpu.so" (a single-variant build). Linux: read from /proc/self/maps."""
    ensure()
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    found = sorted({line.rsplit("/", 1)[-1] for line in maps.splitlines() if "/libggml-cpu" in line})
    return ", ".join(found) or "unknown"


def _install_guard() -> None:
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params
    if getattr(original, "_ggufkit_guard", False):
        return

    def guarded():
        params = original()
        params.use_extra_bufts = False
        return params

    guarded._ggufkit_guard = True
    low.llama_model_default_params = guarded
    print("ggufkit: this llama-cpp-python offers ggml's AMX buffer type, which crashes on batched decode "
          "(llama.cpp #20824); weights stay in the plain CPU buffer (no repacking: slower prompts). "
          "`make setup` builds a portable llama-cpp-python without AMX.", file=sys.stderr)


def ensure() -> dict:
    """Load the CPU backends if none are registered, then install the AMX guard if the CPU backend offers AMX.

    Returns what it found: {"loaded_from": dir or None, "extra_bufts": [...], "guard": bool}. Idempotent."""
    with _lock:
        if _state:
            return _state
        lib = _ggml()
        loaded_from = None
        if _cpu_device() is None:
            from llama_cpp._utils import suppress_stdout_stderr

            with suppress_stdout_stderr(disable=False):  # ggml logs each library it loads on stderr
                lib.ggml_backend_load_all_from_path(str(lib_dir()).encode())
            loaded_from = str(lib_dir())
        if _cpu_device() is None:
            raise RuntimeFailure("llama-cpp-python has no CPU backend (no libggml-cpu*.so that runs on this CPU); "
                                 "reinstall it with `make setup`", lib_dir())
        bufts = extra_buffer_types()
        guard = "AMX" in bufts
        if guard:
            _install_guard()
        _state.update(loaded_from=loaded_from, extra_bufts=bufts, guard=guard)
        return _state
