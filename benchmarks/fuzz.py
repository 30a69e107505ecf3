"""Fuzz the pruner: thousands of random architectures (spa_keras.fuzz), each pruned with a random
criterion, ratio and round_to, and checked (shapes, parameter counts, the zero-channel oracle, the input
model unchanged).

Writes benchmarks/results/fuzz.json: per frontend, the examples tried, how many removed channels, how
many were checked with the oracle (the others, with an op that is not zero-preserving, for shapes
only), the seconds taken, and every failure, shrunk by Hypothesis to a minimal recipe (rebuild it with
``spa_keras.fuzz.build_keras(recipe)``).

    python benchmarks/fuzz.py --examples 2000 --onnx-examples 2000
    python benchmarks/fuzz.py --examples 200 --onnx-examples 0 --mixed-examples 100 --seed 7
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from hypothesis import HealthCheck, Phase, given, seed as hseed, settings  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from spa_keras import fuzz  # noqa: E402


class _Failed(AssertionError):
    pass


def run(kind: str, n: int, first_seed: int, time_limit: float) -> dict:
    """Run about ``n`` examples of ``kind`` ("keras" or "onnx"), restarting Hypothesis with a new seed
    after each (shrunk) failure, so that one bug does not stop the search."""
    cases, check = (fuzz.onnx_cases(), fuzz.check_onnx) if kind == "onnx" else (fuzz.keras_cases(), fuzz.check_keras)
    if kind == "keras_mixed_float16":
        check = functools.partial(fuzz.check_keras, policy="mixed_float16")
    stats = {"examples": 0, "removed_channels": 0, "oracle_checked": 0, "shape_only": 0, "failures": []}
    t0 = time.perf_counter()
    s = first_seed
    while stats["examples"] < n and time.perf_counter() - t0 < time_limit:
        last = {}

        @hseed(s)
        @settings(max_examples=n - stats["examples"], deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink])
        @given(cases)
        def one(case):
            if time.perf_counter() - t0 > time_limit:
                return
            stats["examples"] += 1
            try:
                r = check(*case, seed=stats["examples"])
            except Exception as e:  # noqa: BLE001 - any exception is a finding
                last.update(case=case, error=f"{type(e).__name__}: {e}"[:2000])
                raise _Failed(last["error"]) from e
            if not r["passed"]:
                last.update(case=case, error=r["error"])
                raise _Failed(r["error"])
            stats["removed_channels"] += int(r.get("removed", 0) > 0)
            stats["oracle_checked" if r["oracle"] else "shape_only"] += 1

        try:
            one()
        except _Failed:
            recipe, settings_ = last["case"]
            stats["failures"].append({"seed": s, "recipe": recipe, "settings": settings_, "error": last["error"]})
            print(f"[{kind}] failure (shrunk): {last['error'][:200]}\n  {json.dumps(last['case'])}", flush=True)
        s += 1
        print(f"[{kind}] {stats['examples']} examples, {len(stats['failures'])} failures, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    stats["seconds"] = round(time.perf_counter() - t0, 1)
    return stats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=1000, help="random Keras architectures (default 1000)")
    p.add_argument("--onnx-examples", type=int, default=1000,
                   help="random PyTorch modules through ONNX (default 1000; skipped without torch)")
    p.add_argument("--mixed-examples", type=int, default=0,
                   help="random Keras architectures built under the mixed_float16 policy (default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=3600.0, help="seconds per frontend (default 3600)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "fuzz.json"))
    args = p.parse_args(argv)
    result = {"seed": args.seed}
    if args.onnx_examples:
        try:
            import torch  # noqa: F401 - before TensorFlow is used

            result["onnx"] = run("onnx", args.onnx_examples, args.seed, args.time_limit)
        except ImportError:
            result["onnx"] = {"skipped": "torch is not installed"}
    if args.examples:
        result["keras"] = run("keras", args.examples, args.seed, args.time_limit)
    if args.mixed_examples:
        result["keras_mixed_float16"] = run("keras_mixed_float16", args.mixed_examples, args.seed, args.time_limit)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "failures"} | {"failures": len(v.get("failures", []))}
                      if isinstance(v, dict) else v for k, v in result.items()}, indent=1))
    return 1 if any(isinstance(v, dict) and v.get("failures") for v in result.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
