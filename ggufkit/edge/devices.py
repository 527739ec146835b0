"""Edge device profiles as data: RAM, cores, instruction-set features, threads to use, and how to build
llama-cpp-python for that CPU.

    from ggufkit.edge.devices import get_device, DEVICES
    dev = get_device("rpi5-8gb")
    dev.usable_mib          # RAM left for the model process after the OS's own share
    dev.cmake_args          # CMAKE_ARGS for `pip install llama-cpp-python` on the board

Adding a board is adding one row to _TABLE. The features use llama.cpp's names (its `system_info` line and
GGML_CPU_ARM_ARCH extensions): "neon", "dotprod", "i8mm", "fp16", "sve" on AArch64; "avx2", "fma", "f16c" on
x86-64. They decide which weight types llama.cpp repacks into interleaved copies at load time
(ggufkit.edge.memory.repacked_types), which changes the memory a model needs on that board.

os_reserve_mib is our estimate of what the OS and its services keep for themselves on a typical install (a
headless Raspberry Pi OS Lite / Armbian server image uses a few hundred MiB; JetPack's Ubuntu desktop about
1.5 GiB; a laptop runs a desktop and a browser beside the model). It is a judgement, not a measurement: pass
--reserve to `ggufkit fit` to use your own.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEVICES", "Device", "get_device"]

GIB = 1024  # MiB
DEFAULT_HEADROOM = 0.15  # fraction of the RAM after the OS kept free: the memory model's stated accuracy


@dataclass(frozen=True)
class Device:
    name: str                     # the --device value
    title: str                    # human name of the board
    ram_mib: int                  # installed RAM (the GPU's share on a Jetson is part of it: unified memory)
    os_reserve_mib: int           # what the OS keeps for itself (estimate, see module docstring)
    cores: int                    # CPU cores
    threads: int                  # llama.cpp threads to use (big cores only on big.LITTLE chips)
    cpu: str                      # the cores, e.g. "4x Cortex-A76 @ 2.4 GHz"
    isa: str                      # "aarch64" or "x86_64"
    features: frozenset[str]      # llama.cpp feature names, see module docstring
    cmake_args: str               # CMAKE_ARGS for building llama-cpp-python on (or for) this CPU
    notes: str = ""               # one line for the bundle README

    @property
    def usable_mib(self) -> int:
        return self.ram_mib - self.os_reserve_mib

    def budget_mib(self, headroom: float = DEFAULT_HEADROOM, reserve_mib: int | None = None) -> float:
        """RAM a model may need on this board: (RAM - the OS's share) x (1 - headroom). `ggufkit fit` and
        `ggufkit deploy` both judge a fit by this one figure."""
        reserve = self.os_reserve_mib if reserve_mib is None else reserve_mib
        return (self.ram_mib - reserve) * (1 - headroom)

    @property
    def triple(self) -> str:
        return "aarch64-linux-gnu" if self.isa == "aarch64" else "x86_64-linux-gnu"


# GGML_NATIVE=OFF with an explicit -march makes the build the same whichever machine compiles it and avoids
# GCC's -mcpu=native probing, which misses features on some Debian/Ubuntu compilers for these cores.
_A72 = "-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8-a+crc"
_A76 = "-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16"
# Laptops: the install script runs on the laptop itself, so the native build picks exactly its features.
_X86 = "-DGGML_NATIVE=ON"

_ARMV80 = frozenset({"neon"})
_ARMV82 = frozenset({"neon", "fp16", "dotprod"})
_X86_AVX2 = frozenset({"avx2", "fma", "f16c"})

_TABLE: tuple[Device, ...] = (
    Device("rpi4-4gb", "Raspberry Pi 4 Model B (4 GB)", 4 * GIB, 400, 4, 4, "4x Cortex-A72 @ 1.8 GHz",
           "aarch64", _ARMV80, _A72, "Needs a 64-bit OS (Raspberry Pi OS Lite 64-bit). No dot-product instructions."),
    Device("rpi4-8gb", "Raspberry Pi 4 Model B (8 GB)", 8 * GIB, 400, 4, 4, "4x Cortex-A72 @ 1.8 GHz",
           "aarch64", _ARMV80, _A72, "Needs a 64-bit OS (Raspberry Pi OS Lite 64-bit). No dot-product instructions."),
    Device("rpi5-4gb", "Raspberry Pi 5 (4 GB)", 4 * GIB, 400, 4, 4, "4x Cortex-A76 @ 2.4 GHz",
           "aarch64", _ARMV82, _A76, "Use the active cooler: sustained inference throttles without it."),
    Device("rpi5-8gb", "Raspberry Pi 5 (8 GB)", 8 * GIB, 400, 4, 4, "4x Cortex-A76 @ 2.4 GHz",
           "aarch64", _ARMV82, _A76, "Use the active cooler: sustained inference throttles without it."),
    Device("rpi5-16gb", "Raspberry Pi 5 (16 GB)", 16 * GIB, 400, 4, 4, "4x Cortex-A76 @ 2.4 GHz",
           "aarch64", _ARMV82, _A76, "Use the active cooler: sustained inference throttles without it."),
    Device("orangepi5-8gb", "Orange Pi 5 (RK3588S, 8 GB)", 8 * GIB, 500, 8, 4,
           "4x Cortex-A76 @ 2.4 GHz + 4x Cortex-A55 @ 1.8 GHz", "aarch64", _ARMV82, _A76,
           "4 threads: llama.cpp splits work evenly, so the slower A55 cores would hold the A76 cores back."),
    Device("orangepi5-16gb", "Orange Pi 5 (RK3588S, 16 GB)", 16 * GIB, 500, 8, 4,
           "4x Cortex-A76 @ 2.4 GHz + 4x Cortex-A55 @ 1.8 GHz", "aarch64", _ARMV82, _A76,
           "4 threads: llama.cpp splits work evenly, so the slower A55 cores would hold the A76 cores back."),
    Device("jetson-orin-nano-8gb", "NVIDIA Jetson Orin Nano 8 GB (CPU only)", 8 * GIB, 1536, 6, 6,
           "6x Cortex-A78AE @ 1.5 GHz", "aarch64", _ARMV82, _A76,
           "CPU only: the 8 GB are shared with the GPU; JetPack's desktop takes its share."),
    Device("laptop-8gb", "x86-64 laptop, 8 GB", 8 * GIB, 3 * GIB, 4, 4, "4 cores with AVX2/FMA",
           "x86_64", _X86_AVX2, _X86, "A desktop session and a browser keep about 3 GB."),
    Device("laptop-16gb", "x86-64 laptop, 16 GB", 16 * GIB, 4 * GIB, 8, 4, "8 threads with AVX2/FMA",
           "x86_64", _X86_AVX2, _X86, "A desktop session and a browser keep about 4 GB."),
)

DEVICES: dict[str, Device] = {d.name: d for d in _TABLE}


def get_device(name: str) -> Device:
    """Device by name, case-insensitive; ValueError listing the known names otherwise."""
    try:
        return DEVICES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown device {name!r}; known: {', '.join(DEVICES)}") from None
