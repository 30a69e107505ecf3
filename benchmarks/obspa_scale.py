"""OBSPA at scale: seconds and peak memory with 512 calibration samples at 224x224.

For MobileNetV2, ResNet50 and DenseNet121 (weights=None, BatchNorm statistics randomised; random
calibration images), `spa.plan(model, ratio=0.5, calibration_data=x)` runs in a fresh process per model
(so that its peak resident memory is its own) and the time of each phase is recorded: the calibration
samples, Hessian accumulation, the inverses (Cholesky), the greedy group search and the compensation.
`--rows-per-dim R` draws each Hessian from about R·dim of its rows (OBSPA's `rows_per_dim`). Each row also
records the multiply-adds of the `XᵀX` products (`Σ rows × dim²`, from the layer shapes and the caps)
and, as a check of what the sampling costs, the slim model's output error on 32 other images: the
relative difference of its logits from the unpruned model's.
`--solver old` runs the greedy search as it was before the blocked solver (tests/obspa_reference.py);
its cost does not depend on the number of samples, so `--samples 32` is enough to time it.
Each row records whether TensorFlow's oneDNN kernels were on (`onednn`). TensorFlow turns them on by
default on CPUs with AVX-512 VNNI or newer, and TF_ENABLE_ONEDNN_OPTS overrides; rows before 2026-12-01
record the variable instead (None: the default, which was off on that machine, and its forward passes
10-20% slower, measured).
Writes benchmarks/results/obspa_scale.json (rows are added, keyed by model, solver, samples, rows_per_dim,
`onednn` and the commit measured, `code`).

    PYTHONPATH=. nice -n 10 python benchmarks/obspa_scale.py
    PYTHONPATH=. python benchmarks/obspa_scale.py --models ResNet50 --solver old --samples 32
    PYTHONPATH=. python benchmarks/obspa_scale.py --rows-per-dim 64
    TF_ENABLE_ONEDNN_OPTS=1 PYTHONPATH=. python benchmarks/obspa_scale.py --models ResNet50 --rows-per-dim 64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from common import code_version, onednn_on

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "results", "obspa_scale.json")
PHASES = ("inputs_for", "accumulate_hessians", "inverse", "group_scores", "compensate")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def product_macs(model, samples: int, size: int, rows_per_dim, batch_size: int = 32) -> float:
    """``Σ rows × dim²`` of the Hessian products over ``samples`` images (each call's rows counted on one
    image, then capped per batch as :func:`obspa.hessian_step` caps them: feature-map calls only)."""
    import numpy as np

    from spa_keras.algorithms import obspa
    from spa_keras.frontends.keras import from_keras
    from spa_keras.graph import analyse

    view = from_keras(model)
    consumers = obspa.find_consumers(view, analyse(view.graph), 2048)
    x = np.zeros((1, size, size, 3), "float32")
    values = view.run([x], keep={v.source for c in consumers for v in c.views})
    caps = obspa.row_caps(consumers, rows_per_dim, samples, batch_size)
    total = 0.0
    batches = -(-samples // batch_size)
    for c, cap in zip(consumers, caps):
        for v in c.views:
            rows = int(obspa.features(c, v, values[v.source]).shape[0]) * min(samples, batch_size)
            rows = rows if cap is None or v.per_token else min(rows, cap)
            total += batches * rows * c.dim ** 2
    return total


def _logits(model, x):
    """The classifier's outputs before its softmax (the softmax of an untrained network is nearly uniform,
    and would hide any difference)."""
    import keras

    last = model.layers[-1]
    features = keras.Model(model.inputs, last.input).predict(x, verbose=0)
    return features @ last.kernel.numpy() + last.bias.numpy()


def one(name: str, samples: int, size: int, solver: str, rows_per_dim=None) -> dict:
    """Time one model's OBSPA plan in this process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    import spa_keras as spa
    from spa_keras import algorithms
    from spa_keras.algorithms import obspa
    from spa_keras.metrics import load_average
    from spa_keras.testing import build_zoo_model, perturb_statistics

    model = perturb_statistics(build_zoo_model(name, size))
    x = np.random.default_rng(0).standard_normal((samples, size, size, 3)).astype("float32")
    if solver == "old":
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        import obspa_reference

        obspa.group_scores = obspa_reference.group_scores
    seconds = dict.fromkeys(PHASES, 0.0)

    def timed(module, fname):
        fn = getattr(module, fname)

        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[fname] += time.perf_counter() - t0

        setattr(module, fname, wrapper)

    for fname in PHASES[1:]:
        timed(obspa, fname)
    timed(algorithms, "inputs_for")
    base_rss = _rss_mb()
    load = load_average()
    t0, c0 = time.perf_counter(), time.process_time()
    plan = spa.plan(model, ratio=0.5, calibration_data=x, verbose=False,
                    algorithm_options={"rows_per_dim": rows_per_dim})
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _rss_mb()
    x_test = np.random.default_rng(1).standard_normal((32, size, size, 3)).astype("float32")
    ref, out = _logits(model, x_test), _logits(spa.apply(plan), x_test)
    error = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    return dict(model=name, solver=solver, samples=samples, size=size, rows_per_dim=rows_per_dim,
                product_macs=product_macs(model, samples, size, rows_per_dim), output_error=round(error, 5),
                seconds=round(total, 2),
                cpu_seconds=round(cpu, 2), phases={k: round(v, 2) for k, v in seconds.items()},
                peak_rss_mb=round(peak), rss_before_mb=round(base_rss), load_start=load, load_end=load_average(),
                removed=int(plan.n_removed), onednn=onednn_on(), blas_one_thread=_threadpoolctl())


def _threadpoolctl() -> bool:
    """Whether the greedy search could hold BLAS to one thread (threadpoolctl is importable)."""
    try:
        import threadpoolctl  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["MobileNetV2", "ResNet50", "DenseNet121"])
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--solver", choices=("new", "old"), default="new")
    ap.add_argument("--rows-per-dim", type=float, default=None)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.samples, args.size, args.solver, args.rows_per_dim)), flush=True)
        return 0
    rows = []
    if os.path.exists(args.out):
        with open(args.out) as f:
            rows = json.load(f).get("runs", [])
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cap = [] if args.rows_per_dim is None else ["--rows-per-dim", str(args.rows_per_dim)]

    code = code_version()

    def key(row):  # a run of other code is kept beside this one
        return row["model"], row["solver"], row["samples"], row.get("rows_per_dim"), row.get("onednn"), row.get("code")

    for name in args.models:
        r = subprocess.run([sys.executable, __file__, "--one", name, "--samples", str(args.samples), "--size",
                            str(args.size), "--solver", args.solver] + cap, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            row = dict(model=name, solver=args.solver, samples=args.samples, rows_per_dim=args.rows_per_dim,
                       error=r.stderr[-2000:])
        else:
            row = json.loads(r.stdout.strip().splitlines()[-1])
        row["code"] = code
        print(json.dumps(row), flush=True)
        rows = [x for x in rows if key(x) != key(row)]
        rows.append(row)
        from spa_keras.io import atomic_write

        atomic_write(args.out, lambda tmp: open(tmp, "w").write(json.dumps(
            {"machine": f"{os.cpu_count()} CPU cores", "runs": rows}, indent=1)), overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
