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
    # the lanes headers are included by several .c files: an edit of one must rebuild the extension
    depends=sorted(glob.glob("native/src/*.h") + glob.glob("native/include/*.h")),
    extra_compile_args=["-O3", "-ffp-contract=off", "-std=c11", "-fno-strict-aliasing", "-Wall"],
    extra_link_args=["-lpthread"],
)

setup(ext_modules=[quants])
