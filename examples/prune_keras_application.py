"""Prune a keras.applications model (built with weights=None) and compare it with the original.

    python examples/prune_keras_application.py --model MobileNetV2 --ratio 0.5 --size 224
    python examples/prune_keras_application.py --smoke        # a few seconds, for the test suite
"""

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import spa_keras as spa  # noqa: E402
from spa_keras.metrics import measure_latency  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ResNet50")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--smoke", action="store_true", help="a small, quick run")
    args = ap.parse_args(argv)
    if args.smoke:
        args.model, args.size = "MobileNetV2", 64

    model = getattr(keras.applications, args.model)(weights=None, input_shape=(args.size, args.size, 3))
    plan = spa.plan(model, ratio=args.ratio, criterion="l2")
    slim = spa.apply(plan)
    print(spa.Report.from_plan(plan).table(max_rows=15))

    x = np.random.default_rng(0).standard_normal((1, args.size, args.size, 3)).astype("float32")
    print("output shape", tuple(slim(x).shape), "== original", tuple(model(x).shape))
    if not args.smoke:
        before, after = measure_latency(model), measure_latency(slim)
        print(f"latency at batch 8: {before['median_s']:.3f} s -> {after['median_s']:.3f} s "
              f"({before['median_s'] / after['median_s']:.2f}x faster)")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "slim.keras")
        slim.save(path)
        back = keras.saving.load_model(path)
        print("saved and reloaded:", back.count_params(), "parameters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
