"""Prune every keras.applications model at ratio 0.5 and measure what it costs and what it gains.

Writes benchmarks/results/zoo.json: for each model, MACs and parameters before and after, seconds to
plan (graph, groups, scores, selection) and to rebuild, the same model's `keras.models.clone_model`
and Keras' own build of the slim model from its config (for scale), whether the zero-channel oracle
passed, and CPU latency of the original and the slim model at batch 1 and 8 in the serving path (each
model as `spa.export_for_serving` writes it: BatchNorm folded, depthwise-grouped convolutions as
DepthwiseConv layers, traced once in a tf.function; median of
--repeats runs after warm-up), with the eager `model(x)` figure beside it and the 1-minute load average
when each was taken (the script first waits, up to --wait seconds, for the load to fall under --max-load).
With --rounds N the original and the slim model are timed in N alternating rounds, and the speed-up is
the median of the rounds' ratios. Each row records whether TensorFlow's oneDNN kernels were on (`onednn`:
TensorFlow turns them on by default on CPUs with AVX-512 VNNI or newer; TF_ENABLE_ONEDNN_OPTS overrides).

    python benchmarks/zoo.py                       # all models at 224x224
    python benchmarks/zoo.py --models ResNet50 MobileNetV2 --size 160
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import spa_keras as spa  # noqa: E402
from spa_keras.backends.keras import verify  # noqa: E402
from spa_keras.frontends.keras import from_keras  # noqa: E402
from spa_keras.backends.fold import serving_model  # noqa: E402
from spa_keras.metrics import load_average, measure_latency, wait_for_quiet  # noqa: E402
from spa_keras.testing import build_zoo_model, perturb_statistics, random_inputs, zoo_names  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import onednn_on  # noqa: E402


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


TORCH_TWINS = {"ResNet50": "resnet50", "MobileNetV2": "mobilenet_v2", "EfficientNetB0": "efficientnet_b0"}


def torch_pruning_time(name: str, size: int, ratio: float, repeats: int = 3) -> dict | None:
    """Torch-Pruning's time for the PyTorch twin of a zoo model (``benchmarks/torch_pruning_time.py``),
    run in the export environment of ``benchmarks/make_export_env.sh`` (torch, torchvision and
    torch-pruning; torchvision does not import beside the project's CPU torch). None where that
    environment or the twin is missing."""
    venv = os.environ.get("SPA_EXPORT_VENV", os.path.expanduser("~/.cache/spa_keras/torchvision-venv"))
    python = os.path.join(venv, "bin", "python")
    if name not in TORCH_TWINS or not os.path.exists(python):
        return None
    out = subprocess.run([python, os.path.join(HERE, "torch_pruning_time.py"), TORCH_TWINS[name], str(size),
                          str(ratio), "--repeats", str(repeats)], capture_output=True, text=True)
    if out.returncode != 0:
        return dict(torch_pruning_error=out.stderr.strip().splitlines()[-1:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def latency_row(model, slim, batches, repeats, max_load, wait, rounds=1, eager_repeats=None) -> dict:
    """Serving-path (as exported: `serving_model`, traced) and eager latency of both models, per batch size. With
    ``rounds`` > 1 the two served models are timed in alternation, ``repeats`` runs each per round: the
    speed-up is the median of the rounds' ratios (drift slower than a round cancels), the seconds the
    median of the rounds' medians, and ``speedup_rounds`` lists every round's ratio. ``eager_repeats``:
    fewer eager calls (after one warm-up) for models whose eager call takes seconds."""
    out = {}
    served = {"before": serving_model(model), "after": serving_model(slim)}
    for b in batches:
        waited = wait_for_quiet(max_load, wait)
        timed = [{k: measure_latency(m, batch_size=b, repeats=repeats, warmup=3 if i == 0 else 1)
                  for k, m in served.items()} for i in range(rounds)]
        ratios = [r["before"]["median_s"] / r["after"]["median_s"] for r in timed]
        eager = dict(repeats=repeats) if eager_repeats is None else dict(repeats=eager_repeats, warmup=1)
        e = {k: measure_latency(m, batch_size=b, mode="eager", **eager) for k, m in (("before", model), ("after", slim))}
        out[f"b{b}"] = dict(
            serving_before_s=float(np.median([r["before"]["median_s"] for r in timed])),
            serving_after_s=float(np.median([r["after"]["median_s"] for r in timed])),
            speedup=float(np.median(ratios)),
            eager_before_s=e["before"]["median_s"], eager_after_s=e["after"]["median_s"],
            eager_speedup=e["before"]["median_s"] / e["after"]["median_s"], eager_repeats=e["before"]["repeats"],
            load=max(x for x in [waited] + [r[k]["load"] for r in timed for k in r] if x is not None),
            **({"speedup_rounds": [round(x, 4) for x in ratios]} if rounds > 1 else {}),
        )
    return out


def bench(name: str, size: int, ratio: float, latency: bool, batches=(1, 8), repeats=20, max_load=1.5,
          wait=600.0, rounds=1, eager_repeats=None) -> dict:
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
        onednn=onednn_on(),
        **cpu,
    )
    peer = torch_pruning_time(name, row["input_size"], ratio)
    if peer:
        row.update(peer)
    if latency:
        row["latency"] = latency_row(model, slim, batches, repeats, max_load, wait, rounds, eager_repeats)
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
    ap.add_argument("--rounds", type=int, default=1, help="time the served models in this many alternating rounds")
    ap.add_argument("--eager-repeats", type=int, default=None, help="eager calls per model (default: --repeats)")
    ap.add_argument("--max-load", type=float, default=1.5)
    ap.add_argument("--wait", type=float, default=600.0, help="seconds to wait for a quiet machine per model")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "zoo.json"))
    args = ap.parse_args(argv)
    names = args.models or zoo_names()
    results = []
    if os.path.exists(args.out) and args.models:  # other models' rows stay, and each named one until it is measured
        with open(args.out) as f:
            results = json.load(f).get("models", [])
    for name in names:
        try:
            row = bench(name, args.size, args.ratio, not args.no_latency, args.batches, args.repeats, args.max_load,
                        args.wait, args.rounds, args.eager_repeats)
        except Exception as e:  # noqa: BLE001 - a failure is a result
            row = dict(model=name, error=f"{type(e).__name__}: {e}")
        results = [r for r in results if r["model"] != name] + [row]
        print(json.dumps(row), flush=True)
        keras.backend.clear_session()
        write_json(args.out, dict(machine=f"{os.cpu_count()} CPU cores", keras=keras.__version__,
                                  size=args.size, models=results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
