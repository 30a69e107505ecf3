"""A depthwise convolution written as a grouped `Conv2D` against the `DepthwiseConv2D` it is, served.

Keras' TensorFlow backend has no grouped-convolution kernel for the CPU and compiles grouped
convolutions with XLA; `spa_keras.backends.fold.serving_model` (what `spa.export_for_serving`,
`spa.to_onnx`, `spa-keras bench` and `target_latency` use) writes the depthwise ones as
`DepthwiseConv2D`. This times one layer of each ConvNeXt stage shape (7×7, one input channel per group)
both ways, traced once in a `tf.function` (`spa_keras.metrics.measure_latency`), median of --repeats
runs after warm-up, and checks that the outputs agree. Writes benchmarks/results/grouped_conv.json.

    python benchmarks/grouped_conv.py --batches 1 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from spa_keras.backends.fold import serving_model  # noqa: E402
from spa_keras.metrics import load_average, measure_latency  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
STAGES = [(56, 96), (28, 192), (14, 384), (7, 768)]  # ConvNeXtTiny at 224x224: (size, channels)


def layer_row(size: int, channels: int, batch: int, repeats: int) -> dict:
    keras.utils.set_random_seed(0)
    x = keras.Input((size, size, channels))
    grouped = keras.Model(x, keras.layers.Conv2D(channels, 7, padding="same", groups=channels)(x))
    served = serving_model(grouped)
    data = np.random.default_rng(0).standard_normal((batch, size, size, channels)).astype("float32")
    diff = float(np.abs(np.asarray(grouped(data)) - np.asarray(served(data))).max())
    g = measure_latency(grouped, batch_size=batch, repeats=repeats, input_data=data)
    d = measure_latency(served, batch_size=batch, repeats=repeats, input_data=data)
    return dict(size=size, channels=channels, batch=batch, served_as=type(served.layers[-1]).__name__,
                grouped_s=g["median_s"], depthwise_s=d["median_s"], speedup=g["median_s"] / d["median_s"],
                max_abs_diff=diff, load=load_average())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "grouped_conv.json"))
    args = ap.parse_args(argv)
    rows = []
    for batch in args.batches:
        for size, channels in STAGES:
            rows.append(layer_row(size, channels, batch, args.repeats))
            print(json.dumps(rows[-1]), flush=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dict(machine=f"{os.cpu_count()} CPU cores", keras=keras.__version__, layers=rows), f, indent=1)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
