"""The compiled parts of diffmix, each a loop the build runs over every row: git's xdiff
(vendor/xdiff) behind diffmix._xdiff, with the build's fused diff -> openelm document -> round
trip loop, the strict apply's fast path (diffmix._strict_apply; csrc/strict_apply.h serves both)
and the file line statistics (diffmix._line_stats).

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
            depends=["csrc/buffer.h", "csrc/pyviews.h", "csrc/strict_apply.h"],
            # xdiff is not warning-free (libgit2 builds it with the same two switched off).
            extra_compile_args=["-O2", "-Wno-sign-compare", "-Wno-unused-parameter"],
        ),
        Extension("diffmix._strict_apply", sources=["csrc/_strict_apply.c"], depends=["csrc/buffer.h", "csrc/strict_apply.h"], extra_compile_args=["-O2"]),
        Extension("diffmix._line_stats", sources=["csrc/_line_stats.c"], depends=["csrc/buffer.h", "csrc/pyviews.h"], extra_compile_args=["-O3"]),
    ]
)
