"""`spa.prune(model, target_latency=0.5)` on keras.applications models: is the target met when measured
again, afresh?

For each model (`weights=None`, BatchNorm statistics randomised), one `spa.prune(..., target_latency=t)`
at `--batch` in the serving path (traced once, as `spa.export_for_serving` writes it: BatchNorm folded,
depthwise-grouped convolutions as DepthwiseConv).
Recorded: what the search measured (its rounds, the latency before and after), a new measurement of the
original and the slim model taken after the search (`spa_keras.latency.paired_ratio`: the two timed in
alternation, --repeats/4 pairs of 8-run medians, the median of the pairs' ratios), the ratio between them,
whether it lies within 5% of the target, the MACs ratio beside it (a latency target is not a MACs
target), the seconds the whole call took and how many layer timings the latency table had to take
(0 when the cache at ~/.cache/spa_keras/latency.json already had them). The script waits for a quiet
machine (load average under --max-load) before each model, and records the load beside each figure.

    python benchmarks/latency_target.py
    python benchmarks/latency_target.py --models MobileNetV2 --size 160 --targets 0.5 0.7
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import spa_keras as spa  # noqa: E402
from spa_keras.backends.fold import serving_model  # noqa: E402
from spa_keras.io import atomic_write  # noqa: E402
from spa_keras.latency import paired_ratio  # noqa: E402
from spa_keras.metrics import load_average, wait_for_quiet  # noqa: E402
from spa_keras.testing import build_zoo_model, perturb_statistics  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "latency_target.json")


def one(name: str, size: int, target: float, batch: int, repeats: int) -> dict:
    model = build_zoo_model(name, size)
    perturb_statistics(model)
    t0 = time.perf_counter()
    pruner = spa.Pruner(target_latency=target, latency_batch_size=batch)
    slim = pruner.prune(model)
    seconds = time.perf_counter() - t0
    s = pruner.last_plan.settings
    report = spa.Report.from_plan(pruner.last_plan)
    load = load_average()
    again = paired_ratio(serving_model(slim), serving_model(model), batch, rounds=repeats // 4)  # afresh
    ratio = again["ratio"]
    return dict(
        model=name, size=size, batch=batch, target=target, seconds=round(seconds, 1),
        search=dict(before_s=s.get("latency_before_s"), after_s=s.get("latency_after_s"),
                    reached=s.get("latency_reached"), rounds=s.get("latency_rounds"),
                    table_timings_taken=(s.get("latency_table") or {}).get("measured_now")),
        measured_again=dict(original_s=round(again["reference_s"], 5), slim_s=round(again["model_s"], 5),
                            ratio=round(ratio, 4), pair_ratios=again["ratios"], load=[load, load_average()]),
        within_5pct=bool(abs(ratio - target) <= 0.05 * target),
        macs_ratio=round(report.macs_after / report.macs_before, 4),
    )


def _dump(data, path):
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["MobileNetV2", "ResNet50", "EfficientNetB0"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--targets", nargs="*", type=float, default=[0.5])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--max-load", type=float, default=1.5)
    ap.add_argument("--wait", type=float, default=600.0, help="seconds to wait for a quiet machine per model")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    rows = []
    for name in args.models:
        for target in args.targets:
            wait_for_quiet(args.max_load, args.wait)
            load = load_average()
            row = one(name, args.size, target, args.batch, args.repeats)
            row["load_at_start"] = load
            rows.append(row)
            m = row["measured_again"]
            print(f"{name} target {target}: measured {m['ratio']:.3f} ({m['original_s'] * 1e3:.1f} -> "
                  f"{m['slim_s'] * 1e3:.1f} ms), within 5%: {row['within_5pct']}, MACs x{row['macs_ratio']:.3f}, "
                  f"{row['seconds']} s", flush=True)
            data = dict(benchmark="benchmarks/latency_target.py", cpu_count=os.cpu_count(), rows=rows)
            atomic_write(args.out, lambda tmp: _dump(data, tmp), overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
