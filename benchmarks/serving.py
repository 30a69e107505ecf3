"""Where the slim model's time goes in the serving path: latency and an op-by-op profile.

For ResNet50, MobileNetV2 and EfficientNetB0 (224x224, weights=None, BatchNorm statistics randomised)
and their slim versions (group L2, ratio 0.5), at batch 1 and 8, writes benchmarks/results/serving.json:

- latency in the serving path (the model traced once in a tf.function, as a SavedModel signature runs
  it), median of --repeats runs after warm-up, with and without BatchNorm folded (`serving_model`, which
  also writes depthwise-grouped convolutions as DepthwiseConv), and eager calls;
- the same slim architecture built from scratch (keras.Model.from_config of its config, fresh
  weights): if the rebuild added anything, this would be faster;
- an op-by-op profile (tf.profiler trace of the traced graph, time per op type per run);
- widths: global pruning with round_to 1, 8 and 16 (MACs and latency), and a 1x1-convolution sweep over
  output widths 56..72, to see whether multiples of the vector width (8 floats with AVX2) run faster;
- ``--control-only``: the slim model against the same architecture built from scratch (fresh weights, and
  the slim weights copied in), timed in interleaved rounds so that no variant is always timed last.

Every figure carries the 1-minute load average when it was taken; the script waits (up to --wait
seconds) for the load to fall under --max-load before each model.

    PYTHONPATH=. nice -n 10 python benchmarks/serving.py
    PYTHONPATH=. python benchmarks/serving.py --models ResNet50 --batches 8 --no-profile
    PYTHONPATH=. python benchmarks/serving.py --models ResNet50 MobileNetV2 --batches 8 --control-only --repeats 15
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import spa_keras as spa  # noqa: E402
from spa_keras.backends.fold import serving_model  # noqa: E402
from spa_keras.metrics import count_macs, load_average, measure_latency, serving_function, wait_for_quiet  # noqa: E402
from spa_keras.testing import build_zoo_model, perturb_statistics  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from zoo import write_json  # noqa: E402


def profile_ops(model, batch: int, runs: int = 5, top: int = 12) -> dict:
    """``{"by_type": {op type: µs per run}, "top_ops": [[op name, µs per run], ...]}`` from a tf.profiler
    trace of the serving function."""
    try:
        from tsl.profiler.protobuf import xplane_pb2
    except ImportError:  # older layouts
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    x = tf.random.normal((batch,) + tuple(model.inputs[0].shape[1:]))
    fn = serving_function(model, x)
    for _ in range(3):
        fn(x)
    logdir = tempfile.mkdtemp(prefix="spa-profile-")
    try:
        tf.profiler.experimental.start(logdir)
        for _ in range(runs):
            fn(x)
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0], "rb") as f:
            space.ParseFromString(f.read())
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    by_type, by_op = {}, {}
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        meta = plane.event_metadata
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for ev in line.events:
                name = meta[ev.metadata_id].name
                if ":" not in name or "::" in name:  # executor and thread-pool events, not ops
                    continue
                op, kind = name.rsplit(":", 1)
                us = ev.duration_ps / 1e6 / runs
                by_type[kind] = by_type.get(kind, 0.0) + us
                by_op[op] = by_op.get(op, 0.0) + us
    by_type = dict(sorted(((k, round(v, 1)) for k, v in by_type.items()), key=lambda kv: -kv[1]))
    top_ops = sorted(by_op.items(), key=lambda kv: -kv[1])[:top]
    return {"by_type": by_type, "total_us": round(sum(by_type.values()), 1),
            "top_ops": [[k, round(v, 1)] for k, v in top_ops]}


def graph_ops(model) -> dict:
    """``{op type: count}`` of the traced serving graph (deterministic, unlike timings)."""
    fn = serving_function(model, tf.zeros((1,) + tuple(model.inputs[0].shape[1:])))
    counts = {}
    for node in fn.graph.as_graph_def().node:
        counts[node.op] = counts.get(node.op, 0) + 1
    return dict(sorted(counts.items()))


def timing(model, batch, repeats, eager=False) -> dict:
    r = measure_latency(model, batch_size=batch, repeats=repeats, warmup=3)
    out = {"median_s": r["median_s"], "best_s": r["best_s"], "load": r["load"]}
    if eager:
        e = measure_latency(model, batch_size=batch, repeats=repeats, warmup=3, mode="eager")
        out["eager"] = {"median_s": e["median_s"], "best_s": e["best_s"], "load": e["load"]}
    return out


def bench_model(name, size, batches, repeats, profile, max_load, wait):
    full = perturb_statistics(build_zoo_model(name, size))
    plan = spa.plan(full, ratio=0.5)
    slim = spa.apply(plan)
    scratch = keras.Model.from_config(slim.get_config())  # the slim architecture, built directly
    variants = {"full": full, "full_folded": serving_model(full), "slim": slim, "slim_folded": serving_model(slim),
                "slim_scratch": scratch}
    macs_full, macs_slim = count_macs(plan.graph), count_macs(plan.graph, plan)
    row = {"model": name, "size": size, "macs_before": macs_full, "macs_after": macs_slim,
           "macs_reduction": macs_full / macs_slim, "batches": {},
           "graph_ops": {k: graph_ops(variants[k]) for k in ("full", "slim", "slim_scratch", "slim_folded")}}
    row["rebuild_adds_ops"] = row["graph_ops"]["slim"] != row["graph_ops"]["slim_scratch"]
    for b in batches:
        row["load_waited"] = wait_for_quiet(max_load, wait)
        res = {k: timing(m, b, repeats, eager=k in ("full", "slim")) for k, m in variants.items()}
        for pair, (a, c) in {"speedup": ("full", "slim"), "speedup_folded": ("full_folded", "slim_folded")}.items():
            res[pair] = res[a]["median_s"] / res[c]["median_s"]
            res["efficiency" + pair[7:]] = res[pair] / row["macs_reduction"]
        res["eager_speedup"] = res["full"]["eager"]["median_s"] / res["slim"]["eager"]["median_s"]
        if profile:
            res["profile"] = {k: profile_ops(variants[k], b) for k in ("full", "slim", "full_folded", "slim_folded")}
        row["batches"][str(b)] = res
        print(name, b, {k: (round(v["median_s"], 4) if isinstance(v, dict) and "median_s" in v else v)
                        for k, v in res.items() if k != "profile"}, flush=True)
    return row


def scratch_control(name, size, batch, repeats, rounds, max_load, wait) -> dict:
    """The written slim model against ``keras.Model.from_config`` of its config (fresh weights, and the
    slim weights set into it), BatchNorm kept, each timed once per round in turn: medians per round."""
    full = perturb_statistics(build_zoo_model(name, size))
    slim = spa.prune(full, ratio=0.5)
    scratch = keras.Model.from_config(slim.get_config())
    same = keras.Model.from_config(slim.get_config())
    same.set_weights(slim.get_weights())
    variants = {"slim": slim, "scratch": scratch, "scratch_with_slim_weights": same}
    out = {"model": name, "batch": batch, "repeats": repeats, "rounds": {k: [] for k in variants}, "load": []}
    wait_for_quiet(max_load, wait)
    for _ in range(rounds):
        for k, m in variants.items():
            out["rounds"][k].append(measure_latency(m, batch_size=batch, repeats=repeats, warmup=3)["median_s"])
        out["load"].append(load_average())
    print("control", {k: [round(1e3 * t, 1) for t in v] for k, v in out["rounds"].items()}, flush=True)
    return out


def widths(max_load, wait, repeats) -> dict:
    """Global pruning of MobileNetV2 with round_to 1/8/16, and a 1x1 convolution sweep over widths."""
    out = {"mobilenetv2_global": [], "conv1x1": []}
    model = perturb_statistics(build_zoo_model("MobileNetV2", 224))
    for r in (1, 8, 16):
        plan = spa.plan(model, ratio=0.5, global_pruning=True, round_to=r)
        slim = serving_model(spa.apply(plan))
        w = sorted({plan.width(t) for t in plan.analysis.layouts})
        odd = sum(1 for v in w if v % 8)
        wait_for_quiet(max_load, wait)
        t1 = measure_latency(slim, batch_size=1, repeats=repeats)
        t8 = measure_latency(slim, batch_size=8, repeats=repeats)
        out["mobilenetv2_global"].append(dict(round_to=r, macs=count_macs(plan.graph, plan), widths_not_multiple_of_8=odd,
                                              latency_b1_s=t1["median_s"], latency_b8_s=t8["median_s"],
                                              load=t8["load"]))
        print("round_to", out["mobilenetv2_global"][-1], flush=True)
    for cout in range(56, 73):
        x = keras.Input((28, 28, 64))
        m = keras.Model(x, keras.layers.Conv2D(cout, 1)(x))
        t = measure_latency(m, batch_size=8, repeats=repeats)
        out["conv1x1"].append(dict(c_out=cout, median_us=1e6 * t["median_s"], best_us=1e6 * t["best_s"], load=t["load"]))
    print("conv1x1", [(r["c_out"], round(r["best_us"])) for r in out["conv1x1"]], flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["ResNet50", "MobileNetV2", "EfficientNetB0"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-widths", action="store_true")
    ap.add_argument("--control-only", action="store_true", help="only the interleaved slim / scratch control")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-load", type=float, default=1.5)
    ap.add_argument("--wait", type=float, default=600.0, help="seconds to wait for a quiet machine (default 600)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "serving.json"))
    args = ap.parse_args(argv)
    result = {"machine": f"{os.cpu_count()} CPU cores", "tensorflow": tf.__version__, "keras": keras.__version__,
              "repeats": args.repeats, "max_load": args.max_load, "load_at_start": load_average(), "models": []}
    if args.control_only:
        if os.path.exists(args.out):
            with open(args.out) as f:
                result = json.load(f)
        result["scratch_control"] = [scratch_control(name, args.size, b, args.repeats, args.rounds, args.max_load,
                                                     args.wait) for name in args.models for b in args.batches]
        write_json(args.out, result)
        return 0
    for name in args.models:
        result["models"].append(bench_model(name, args.size, args.batches, args.repeats, not args.no_profile,
                                            args.max_load, args.wait))
        write_json(args.out, result)
        keras.backend.clear_session()
    if not args.no_widths:
        result["widths"] = widths(args.max_load, args.wait, args.repeats)
    result["load_at_end"] = load_average()
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
