"""Builds the native extension klas._C from csrc/ (pybind11). Metadata lives in pyproject.toml.

Environment switches:
  KLAS_DEBUG=1     build with -O0 -g
  KLAS_SANITIZE=1  build with AddressSanitizer and UBSan (for fuzzing the reader)
"""
import os
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

compile_args = ["-O0", "-g"] if os.environ.get("KLAS_DEBUG") == "1" else ["-O3"]
compile_args.append("-ffp-contract=fast")  # a·b + c as one FMA where the target has it (csrc/theta_cpu.cpp)
# theta_cpu.cpp's vector helpers are always inlined into functions built for AVX2 / AVX-512, so
# the note that their out-of-line calling convention would differ does not apply.
compile_args.append("-Wno-psabi")
link_args = []
if os.environ.get("KLAS_SANITIZE") == "1":
    sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
    compile_args += sanitize
    link_args += sanitize

ext_modules = [
    Pybind11Extension(
        "klas._C",
        sorted(glob("csrc/*.cpp")),  # sorted for reproducible builds
        cxx_std=17,
        extra_compile_args=compile_args + ["-pthread"],
        extra_link_args=link_args + ["-pthread"],
    )
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
