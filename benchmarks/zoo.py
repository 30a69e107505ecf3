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
from spa_keras.metrics import load_average, measure_latency, wait_for_quiet  # noqa: E402
from spa_keras.testing import build_zoo_model, perturb_statistics, random_inputs, zoo_names  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _timed(fn, repeats=3, cpu=None):
    """``(best wall seconds, out)`` over ``repeats`` calls; with ``cpu`` (a dict and a key), also the best
    process CPU seconds there (steadier than wall time on a shared machine)."""
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    if cpu is not None:
        cpu[0][cpu[1]] = best_cpu
    return best, out


TORCH_TWINS = {"ResNet50": "resnet50", "MobileNetV2": "mobilenet_v2"}


def torch_pruning_time(name: str, size: int, ratio: float, repeats: int = 3) -> dict | None:
    """Torch-Pruning's time for the PyTorch twin of a zoo model (graph + group-L2 scores + pruning, the
    classifier ignored), best of ``repeats``; None where torch or torch-pruning is not installed."""
    if name not in TORCH_TWINS:
        return None
    try:
        import copy

        import torch
        import torch_pruning as tp
    except ImportError:
        return None
    try:
        import torchvision

        build = getattr(torchvision.models, TORCH_TWINS[name])
    except Exception:  # noqa: BLE001 - torchvision does not import beside the CPU torch build
        from onnx_zoo import model_list

        build = model_list()[TORCH_TWINS[name]]
    module = build().eval()
    example = torch.randn(1, 3, size, size)
    out = {}

    def run():
        m = copy.deepcopy(module)
        t0, c0 = time.perf_counter(), time.process_time()
        pruner = tp.pruner.MetaPruner(m, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=ratio, ignored_layers=[h for h in m.modules() if
                                                                           isinstance(h, torch.nn.Linear)][-1:])
        pruner.step()
        return time.perf_counter() - t0, time.process_time() - c0, m

    times = [run() for _ in range(repeats)]
    out["torch_pruning_s"] = min(t[0] for t in times)
    out["torch_pruning_cpu_s"] = min(t[1] for t in times)
    out["torch_pruning_version"] = getattr(tp, "__version__", "?")
    return out


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
    spa.prune(model, ratio=ratio)  # first calls (imports, tracing caches) are not what is timed
    cpu = {}
    prune_s, _ = _timed(lambda: spa.prune(model, ratio=ratio), cpu=(cpu, "prune_cpu_s"))
    plan_s, plan = _timed(lambda: spa.plan(model, ratio=ratio), cpu=(cpu, "plan_cpu_s"))
    graph_s, _ = _timed(lambda: from_keras(model))
    rebuild_s, slim = _timed(lambda: spa.apply(plan), cpu=(cpu, "rebuild_cpu_s"))
    clone_s, _ = _timed(lambda: keras.models.clone_model(model), cpu=(cpu, "clone_model_cpu_s"))
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
        prune_s=prune_s,
        plan_s=plan_s,
        graph_s=graph_s,
        rebuild_s=rebuild_s,
        clone_model_s=clone_s,
        keras_build_slim_s=build_slim_s,
        oracle_passed=check["passed"],
        oracle_max_abs_diff=check["max_abs_diff"],
        oracle_output_scale=check["scale"],
        held_fixed=len(report.held_fixed),
        prune_over_clone_model=prune_s / clone_s,
        load_timing=load_average(),
        **cpu,
    )
    peer = torch_pruning_time(name, row["input_size"], ratio)
    if peer:
        row.update(peer)
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
