"""The compiled parts of diffmix: git's xdiff (vendor/xdiff) behind diffmix._xdiff, and the
strict apply's fast path (diffmix._strict_apply), which the build runs on every document.

Everything else about the package is in pyproject.toml.
"""

from glob import glob

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "diffmix._xdiff",
            sources=["csrc/_xdiff.c", *sorted(glob("vendor/xdiff/*.c"))],
            include_dirs=["vendor/xdiff"],
            # xdiff is not warning-free (libgit2 builds it with the same two switched off).
            extra_compile_args=["-O2", "-Wno-sign-compare", "-Wno-unused-parameter"],
        ),
        Extension("diffmix._strict_apply", sources=["csrc/_strict_apply.c"], extra_compile_args=["-O2"]),
    ]
)
