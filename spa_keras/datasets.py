"""Local datasets for examples and benchmarks (nothing is downloaded)."""

from __future__ import annotations

import gzip
import os

import numpy as np

from .errors import InvalidArgumentError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def _idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(path: str | None = None):
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package:
    ``((x_train, y_train), (x_test, y_test))`` with images as float32 in [0, 1], shape (n, 28, 28, 1).
    """
    path = path or os.environ.get("FASHION_MNIST_DIR", FASHION_MNIST_DIR)
    files = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz"]
    if not all(os.path.exists(os.path.join(path, f)) for f in files):
        raise InvalidArgumentError(
            f"Fashion-MNIST not found in {path!r}: install Debian's package (apt-get install dataset-fashion-mnist) "
            "or set FASHION_MNIST_DIR"
        )
    xtr, ytr, xte, yte = (_idx(os.path.join(path, f)) for f in files)
    prep = lambda x: (x.astype("float32") / 255.0)[..., None]  # noqa: E731
    return (prep(xtr), ytr.astype("int32")), (prep(xte), yte.astype("int32"))
