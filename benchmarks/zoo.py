"""Prune every keras.applications model at ratio 0.5 and measure what it costs and what it gains.

Writes benchmarks/results/zoo.json: for each model, MACs and parameters before and after, seconds to
plan (graph, groups, scores, selection) and to rebuild, the same model's `keras.models.clone_model`
and Keras' own build of the slim model from its config (for scale), whether the zero-channel oracle
passed, and CPU latency of the original and the slim model at batch 1 and 8 in the serving path (each
model as `spa.export_for_serving` writes it: BatchNorm folded, traced once in a tf.function; median of
--repeats runs after warm-up), with the eager `model(x)` figure beside it and the 1-minute load average
when each was taken (the script first waits, up to --wait seconds, for the load to fall under --max-load).

    python benchmarks/zoo.py                       # all models at 224x224
    python benchmarks/zoo.py --models ResNet50 MobileNetV2 --size 160
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import spa_keras as spa  # noqa: E402
from spa_keras.backends.keras import verify  # noqa: E402
from spa_keras.frontends.keras import from_keras  # noqa: E402
from spa_keras.backends.fold import fold_batchnorm  # noqa: E402
from spa_keras.metrics import measure_latency, wait_for_quiet  # noqa: E402
from spa_keras.testing import build_zoo_model, perturb_statistics, random_inputs, zoo_names  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _timed(fn, repeats=3):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def latency_row(model, slim, batches, repeats, max_load, wait) -> dict:
    """Serving-path (BatchNorm folded, traced) and eager latency of both models, per batch size."""
    out = {}
    served = {"before": fold_batchnorm(model), "after": fold_batchnorm(slim)}
    for b in batches:
        waited = wait_for_quiet(max_load, wait)
        r = {k: measure_latency(m, batch_size=b, repeats=repeats) for k, m in served.items()}
        e = {k: measure_latency(m, batch_size=b, repeats=repeats, mode="eager") for k, m in
             (("before", model), ("after", slim))}
        out[f"b{b}"] = dict(
            serving_before_s=r["before"]["median_s"], serving_after_s=r["after"]["median_s"],
            speedup=r["before"]["median_s"] / r["after"]["median_s"],
            eager_before_s=e["before"]["median_s"], eager_after_s=e["after"]["median_s"],
            eager_speedup=e["before"]["median_s"] / e["after"]["median_s"],
            load=max(x for x in (waited, r["before"]["load"], r["after"]["load"]) if x is not None),
        )
    return out


def bench(name: str, size: int, ratio: float, latency: bool, batches=(1, 8), repeats=20, max_load=1.5,
          wait=600.0) -> dict:
    model = perturb_statistics(build_zoo_model(name, size))
    plan_s, plan = _timed(lambda: spa.plan(model, ratio=ratio))
    graph_s, _ = _timed(lambda: from_keras(model))
    rebuild_s, slim = _timed(lambda: spa.apply(plan), repeats=2)
    clone_s, _ = _timed(lambda: keras.models.clone_model(model), repeats=2)
    build_slim_s, _ = _timed(lambda: keras.Model.from_config(slim.get_config()), repeats=2)
    report = spa.Report.from_plan(plan)
    check = verify(plan.source, plan, slim, random_inputs(model))
    row = dict(
        model=name,
        input_size=int(model.inputs[0].shape[1]),
        ratio=ratio,
        macs_before=report.macs_before,
        macs_after=report.macs_after,
        params_before=model.count_params(),
        params_after=slim.count_params(),
        macs_reduction=report.macs_before / max(report.macs_after, 1),
        plan_s=plan_s,
        graph_s=graph_s,
        rebuild_s=rebuild_s,
        clone_model_s=clone_s,
        keras_build_slim_s=build_slim_s,
        oracle_passed=check["passed"],
        oracle_max_abs_diff=check["max_abs_diff"],
        oracle_output_scale=check["scale"],
        held_fixed=len(report.held_fixed),
    )
    if latency:
        row["latency"] = latency_row(model, slim, batches, repeats, max_load, wait)
        row["efficiency"] = {b: r["speedup"] / row["macs_reduction"] for b, r in row["latency"].items()}
    return row


def write_json(path: str, data) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--max-load", type=float, default=1.5)
    ap.add_argument("--wait", type=float, default=600.0, help="seconds to wait for a quiet machine per model")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "zoo.json"))
    args = ap.parse_args(argv)
    names = args.models or zoo_names()
    results = []
    if os.path.exists(args.out) and args.models:
        with open(args.out) as f:
            results = [r for r in json.load(f).get("models", []) if r["model"] not in names]
    for name in names:
        try:
            row = bench(name, args.size, args.ratio, not args.no_latency, args.batches, args.repeats, args.max_load,
                        args.wait)
        except Exception as e:  # noqa: BLE001 - a failure is a result
            row = dict(model=name, error=f"{type(e).__name__}: {e}")
        results.append(row)
        print(json.dumps(row), flush=True)
        keras.backend.clear_session()
        write_json(args.out, dict(machine=f"{os.cpu_count()} CPU cores", keras=keras.__version__,
                                  size=args.size, models=results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
