"""Builds the native block-quantization core (native/) as the extension ggufkit._quants.

-ffp-contract=off: the kernels must reproduce llama.cpp's reference bytes exactly, which needs the same order of
float operations and no fused multiply-add contraction (see ../shared/DESIGN.md, "Kernels").
"""
import glob

from setuptools import Extension, setup

quants = Extension(
    "ggufkit._quants",
    sources=sorted(glob.glob("native/src/*.c")),
    include_dirs=["native/include"],
    extra_compile_args=["-O3", "-ffp-contract=off", "-std=c11", "-fno-strict-aliasing", "-Wall"],
    extra_link_args=["-lpthread"],
)

setup(ext_modules=[quants])
