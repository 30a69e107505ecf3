"""The stall at the end of a tf.data pass, against NumPy slices and tf.data with its tuning off.

Each pass feeds 512 images at 224×224 in batches of 32 to a traced step of seven 3×3 convolutions (both
cores busy), read three ways, each kind in a fresh process that imports only TensorFlow and NumPy:
`tf.data.Dataset.from_tensor_slices(x).batch(32)` as it is (*default*), the same with autotuning and
injected prefetch off (*steady*, as `spa_keras.data.steady` sets them), and NumPy slices (*numpy*, as
`spa_keras.data.array_batches` gives them: what OBSPA's pass and the BatchNorm re-estimation now read).
It records, per pass, the seconds from the last step's end to the end of the iteration (*end_s*) and
the whole pass. Writes benchmarks/results/tfdata_stall.json.

    python benchmarks/tfdata_stall.py --passes 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def passes(kind: str, count: int, samples: int) -> list:
    """``count`` passes of one kind, in this process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    x = np.random.default_rng(0).standard_normal((samples, 224, 224, 3)).astype("float32")
    w = tf.Variable(tf.random.normal((3, 3, 3, 64), seed=0))

    @tf.function(reduce_retracing=True)  # as OBSPA's step was: traced by the first batch
    def step(a):
        y = tf.nn.conv2d(a, w, 1, "SAME")
        for _ in range(6):
            y = tf.nn.conv2d(y, tf.ones((3, 3, 64, 64)) * 1e-3, 1, "SAME")
        return tf.reduce_sum(y)

    rows = []
    for k in range(count):
        if kind == "numpy":
            data = ((x[i:i + 32],) for i in range(0, len(x), 32))
        else:
            data = tf.data.Dataset.from_tensor_slices((x,)).batch(32)
            if kind == "steady":
                options = tf.data.Options()
                options.autotune.enabled = False
                options.experimental_optimization.inject_prefetch = False
                data = data.with_options(options)
        t0 = last = time.perf_counter()
        for (a,) in data:
            float(step(a))
            last = time.perf_counter()
        end = time.perf_counter()
        rows.append(dict(kind=kind, run=k, end_s=round(end - last, 3), pass_s=round(end - t0, 2),
                         load=round(os.getloadavg()[0], 2)))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=4)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--kinds", nargs="*", default=["default", "steady", "numpy"])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "tfdata_stall.json"))
    args = ap.parse_args(argv)
    if args.one:
        passes(args.one, args.passes, args.samples)
        return
    rows = []
    for kind in args.kinds:
        out = subprocess.run([sys.executable, __file__, "--one", kind, "--passes", str(args.passes), "--samples",
                              str(args.samples)], capture_output=True, text=True, check=True).stdout
        rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        for row in rows[-args.passes:]:
            print(json.dumps(row), flush=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dict(machine=f"{os.cpu_count()} CPU cores", passes=rows), f, indent=1)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
