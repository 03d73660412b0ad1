"""Build fastbci and its C++/CUDA extension fastbci._C.

* The C++ CPU implementation is always built (torch's CppExtension).
* The CUDA implementation is added when torch was built with CUDA (torch.version.cuda) and
  nvcc is found (CUDA_HOME); a visible GPU is not needed to build.
* FASTBCI_SKIP_CUDA_BUILD=1 skips CUDA; FASTBCI_FORCE_CUDA_BUILD=1 makes a missing CUDA
  toolchain an error instead of a silent CPU-only build.
* FASTBCI_CUDA_ARCH_LIST (default "8.0;9.0") chooses the GPU architectures.

Install with torch already present:  pip install -e . --no-build-isolation
"""
import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _extensions():
    cpp = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not cpp:
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as e:  # pragma: no cover - build-time message
        raise RuntimeError(
            "fastbci's C++ extension needs torch at build time: install torch first "
            "(pip install torch==2.13.0 on a CPU machine), then "
            "pip install -e . --no-build-isolation") from e

    cu = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    # the thin torch bindings of the CUDA kernels (compiled only in the CUDA build)
    cu_bind = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
    want_cuda = bool(cu) and not _flag("FASTBCI_SKIP_CUDA_BUILD")
    have_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if _flag("FASTBCI_FORCE_CUDA_BUILD") and not have_cuda:
        raise RuntimeError(
            "FASTBCI_FORCE_CUDA_BUILD=1 but no CUDA toolchain: torch.version.cuda="
            f"{torch.version.cuda!r}, CUDA_HOME={cpp_extension.CUDA_HOME!r}")
    cxx = ["-O3", "-std=c++17"]
    if want_cuda and have_cuda:
        # FASTBCI_CUDA_ARCH_LIST wins over a TORCH_CUDA_ARCH_LIST preset by the environment (some
        # images list architectures below sm_80, which the kernels do not support)
        if os.environ.get("FASTBCI_CUDA_ARCH_LIST"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = os.environ["FASTBCI_CUDA_ARCH_LIST"]
        else:
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        ext = cpp_extension.CUDAExtension(
            "fastbci._C", cpp + cu_bind + cu,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=[("FASTBCI_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx + ["-fopenmp"],
                                "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]},
            extra_link_args=["-fopenmp"])
    else:
        ext = cpp_extension.CppExtension(
            "fastbci._C", cpp, include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx + ["-fopenmp"]}, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    packages=["fastbci", "fastbci.data", "fastbci.ops", "fastbci.reference", "fastbci.compat",
              "fastbci.training", "fastbci.lm", "fastbci.synth",
              "fastbci.kernels", "fastbci.configs"],
    package_dir={"fastbci": "fastbci"},
    package_data={"fastbci.configs": ["*.yaml"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
