"""Builds kacfast._C: C++ CPU kernels always; CUDA kernels too when torch has CUDA and CUDA_HOME
exists (KACFAST_FORCE_CUDA=1 / KACFAST_NO_CUDA=1 override). Install with
`pip install --no-build-isolation .` so the extension builds against the torch you already have."""
import glob
import os

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def build_cuda() -> bool:
    if os.environ.get("KACFAST_NO_CUDA") == "1":
        return False
    if os.environ.get("KACFAST_FORCE_CUDA") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def extension():
    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # No FMA contraction: CPU and CUDA must round identically (see csrc/kac_math.h). No trapping
    # math: lets the vectorizer evaluate both sides of a lane select (values are unchanged; without
    # it the AVX2 build runs the continued fraction scalar, 2.3x slower).
    cxx = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]
    if not build_cuda():
        return CppExtension("kacfast._C", sources, extra_compile_args={"cxx": cxx},
                            extra_link_args=["-fopenmp"])
    sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*_glue.cpp"))
    nvcc = ["-O3", "--fmad=false", "-DKACFAST_WITH_CUDA"]
    return CUDAExtension("kacfast._C", sources,
                         define_macros=[("KACFAST_WITH_CUDA", None)],
                         extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                         extra_link_args=["-fopenmp"])


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
