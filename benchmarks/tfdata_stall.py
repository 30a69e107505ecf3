"""The stall at the end of a tf.data pass, against NumPy slices and tf.data with its tuning off.

Each pass feeds 512 images at 224×224 in batches of 32 to a traced step of seven 3×3 convolutions (both
cores busy), read three ways: `tf.data.Dataset.from_tensor_slices(x).batch(32)` as it is (*default*),
the same with autotuning and injected prefetch off (*steady*: `spa_keras.data.steady`), and NumPy
slices (*numpy*: `spa_keras.data.array_batches`, what OBSPA's pass and the BatchNorm re-estimation now
read). It records, per pass, the seconds from the last step's end to the end of the iteration (*end*)
and the whole pass. Writes benchmarks/results/tfdata_stall.json.

    python benchmarks/tfdata_stall.py --passes 4
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from spa_keras.data import array_batches, steady  # noqa: E402
from spa_keras.metrics import load_average  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def batches(kind: str, x: np.ndarray, batch_size: int):
    if kind == "numpy":
        return array_batches([x], batch_size)
    data = tf.data.Dataset.from_tensor_slices((x,)).batch(batch_size)
    return steady(data) if kind == "steady" else data


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=4)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--kinds", nargs="*", default=["default", "steady", "numpy"])
    ap.add_argument("--out", default=os.path.join(HERE, "results", "tfdata_stall.json"))
    args = ap.parse_args(argv)
    x = np.random.default_rng(0).standard_normal((args.samples, 224, 224, 3)).astype("float32")
    first = tf.Variable(tf.random.normal((3, 3, 3, 64), seed=0))
    rest = tf.constant(np.full((3, 3, 64, 64), 1e-3, "float32"))
    signature = [tf.TensorSpec((None, 224, 224, 3), tf.float32)]

    @tf.function(input_signature=signature)
    def step(a):
        y = tf.nn.conv2d(a, first, 1, "SAME")
        for _ in range(6):
            y = tf.nn.conv2d(y, rest, 1, "SAME")
        return tf.reduce_sum(y)

    float(step(x[:32]))  # traced before the passes
    rows = []
    for kind in args.kinds:
        for k in range(args.passes):
            t0 = time.perf_counter()
            last = t0
            for (a,) in batches(kind, x, 32):
                float(step(a))
                last = time.perf_counter()
            end = time.perf_counter()
            rows.append(dict(kind=kind, run=k, end_s=round(end - last, 3), pass_s=round(end - t0, 2),
                             load=load_average()))
            print(json.dumps(rows[-1]), flush=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dict(machine=f"{os.cpu_count()} CPU cores", tensorflow=tf.__version__, passes=rows), f, indent=1)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
