"""OBSPA on a GPU: Hessian accumulation and the inverse-Hessian solves against the device's matmul peak.

Runs only where TensorFlow sees a GPU (it prints so and exits 0 elsewhere, writing nothing). For each
model (keras.applications, weights=None, 224x224, random calibration images) it times

- the matmul peak: a large float32 and float64 ``tf.matmul`` (TFLOP/s);
- Hessian accumulation: OBSPA's traced step (the model run to its consumers' inputs, then ``XᵀX`` per
  consumer) over ``--samples`` images in batches of ``--batch-size``, with the FLOPs of the ``XᵀX``
  products, so the achieved rate reads against the peak;
- the solves: each consumer's damped Cholesky inverse in float64 on the device, and OBSPA's own
  (LAPACK on the host) beside it.

Writes benchmarks/results/gpu.json.

    PYTHONPATH=. python benchmarks/gpu.py --models ResNet50 MobileNetV2 DenseNet121
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "gpu.json")


def _timed(fn, repeats=3):
    """Median seconds of ``fn()`` (its result fetched to the host) after one warm-up."""
    import numpy as np

    np.asarray(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.asarray(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def matmul_peak(n: int = 8192) -> dict:
    import tensorflow as tf

    out = {}
    for dtype in (tf.float32, tf.float64):
        a = tf.random.normal((n, n), dtype=dtype)
        s = _timed(lambda a=a: tf.reduce_sum(tf.matmul(a, a)))
        out[dtype.name] = {"n": n, "seconds": round(s, 5), "tflops": round(2 * n ** 3 / s / 1e12, 2)}
    return out


def one_model(name: str, samples: int, batch_size: int, peak: dict) -> dict:
    import numpy as np
    import tensorflow as tf

    from spa_keras.algorithms import obspa
    from spa_keras.frontends.keras import from_keras
    from spa_keras.graph import analyse
    from spa_keras.testing import build_zoo_model

    model = build_zoo_model(name, 224)
    view = from_keras(model)
    analysis = analyse(view.graph)
    consumers = obspa.find_consumers(view, analysis, 2048)
    x = np.random.default_rng(0).standard_normal((samples, 224, 224, 3)).astype("float32")
    step = tf.function(obspa.hessian_step(view, consumers), reduce_retracing=True)
    batch = [tf.constant(x[:batch_size])]
    per_batch = _timed(lambda: step(batch)[0])
    rows = {}
    values = view.run(batch, keep={v.source for c in consumers for v in c.views})
    for c in consumers:  # the XᵀX FLOPs of one batch: 2 · rows · dim²
        n_rows = sum(int(obspa.features(c, v, values[v.source]).shape[0]) for v in c.views)
        rows[c.key] = (n_rows, c.dim)
    flops = sum(2 * r * d * d for r, d in rows.values())
    t0 = time.perf_counter()
    hessians = obspa.accumulate_hessians(view, consumers, [x], batch_size)
    accumulate = time.perf_counter() - t0
    t0 = time.perf_counter()
    for h in hessians.values():  # OBSPA inverts on the host (LAPACK); here, the same Cholesky inverse on the device
        h = tf.constant(h, tf.float64)
        eye = tf.eye(h.shape[0], dtype=tf.float64)
        tf.linalg.cholesky_solve(tf.linalg.cholesky(h + 1e-2 * tf.reduce_mean(tf.linalg.diag_part(h)) * eye),
                                 eye).numpy()
    solves = time.perf_counter() - t0
    t0 = time.perf_counter()
    for h in hessians.values():
        obspa.inverse(h, 1e-2)
    solves_host = time.perf_counter() - t0
    rate = flops / per_batch / 1e12
    return {"model": name, "samples": samples, "batch_size": batch_size, "consumers": len(consumers),
            "largest_dim": max(c.dim for c in consumers), "hessian_batch_seconds": round(per_batch, 4),
            "hessian_xtx_tflops_per_batch": round(flops / 1e12, 3), "hessian_tflops": round(rate, 2),
            "fraction_of_fp32_peak": round(rate / peak["float32"]["tflops"], 3),
            "accumulate_seconds": round(accumulate, 2), "solve_seconds_float64": round(solves, 2),
            "solve_seconds_host_lapack": round(solves_host, 2)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["ResNet50", "MobileNetV2", "DenseNet121"])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        print("no GPU visible to TensorFlow: nothing to time (this benchmark runs where there is one)")
        return 0
    details = tf.config.experimental.get_device_details(gpus[0])
    peak = matmul_peak()
    print(json.dumps({"device": details, "matmul": peak}), flush=True)
    runs = []
    for name in args.models:
        runs.append(one_model(name, args.samples, args.batch_size, peak))
        print(json.dumps(runs[-1]), flush=True)
    from spa_keras.io import atomic_write

    result = {"device": details, "tensorflow": tf.__version__, "matmul_peak": peak, "runs": runs}
    atomic_write(args.out, lambda tmp: open(tmp, "w").write(json.dumps(result, indent=1)), overwrite=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
