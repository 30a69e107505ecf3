"""The ``spa-keras`` command: ``inspect``, ``prune`` and ``demo``.

Exit codes: 0 success, 2 bad input (a message, no traceback), 1 internal error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _parser():
    p = argparse.ArgumentParser(prog="spa-keras", description="Structured pruning for Keras 3 models.")
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("inspect", help="groups, widths, MACs, parameters and what is held fixed")
    i.add_argument("model", help="a .keras, .h5 or .onnx file")
    pr = sub.add_parser("prune", help="prune a model and save the slim one")
    pr.add_argument("model", help="a .keras, .h5 or .onnx file")
    pr.add_argument("-o", "--output", required=True, help="where to save the slim model (.keras, .h5 or .onnx)")
    pr.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    d = sub.add_parser("demo", help="prune a keras.applications model built with weights=None")
    d.add_argument("--model", default="ResNet50", help="a keras.applications constructor (default ResNet50)")
    d.add_argument("--size", type=int, default=224, help="input size (default 224)")
    for q in (pr, d):
        q.add_argument("--ratio", type=float, default=0.5, help="fraction of channels to remove per group")
        q.add_argument("--criterion", default="l2", help="l2, l1, lamp, bn_scale, fpgm or random")
        q.add_argument("--global-pruning", action="store_true", help="rank channels across groups")
        q.add_argument("--round-to", type=int, default=1, help="round kept widths to a multiple of this")
        q.add_argument("--max-ratio", type=float, default=1.0, help="the most any group may lose")
        q.add_argument("--ignore", action="append", default=[], help="a layer whose outputs are kept (repeatable)")
    return p


def _options(args) -> dict:
    return dict(
        ratio=args.ratio,
        criterion=args.criterion,
        global_pruning=args.global_pruning,
        round_to=args.round_to,
        max_ratio=args.max_ratio,
        ignored_layers=args.ignore or None,
    )


def _run(args) -> int:
    import spa_keras as spa
    from spa_keras.api import _save, read_model

    if args.command == "inspect":
        print(spa.inspect(read_model(args.model)))
        return 0
    if args.command == "prune":
        if os.path.exists(args.output) and not args.force:
            raise spa.OutputExistsError(f"{args.output!r} exists; pass --force to overwrite it")
        if args.output.endswith(".onnx") != args.model.endswith(".onnx"):
            raise spa.InvalidArgumentError("the output must be of the input's kind (.onnx -> .onnx, Keras -> .keras/.h5); "
                                           "convert with spa.from_onnx / spa.to_onnx")
        plan = spa.plan(read_model(args.model), **_options(args))
        slim = spa.apply(plan)
        print(spa.Report.from_plan(plan).table())
        _save(slim, args.output, args.force)
        print(f"saved {args.output}")
        return 0
    if args.command == "demo":
        import keras

        fn = getattr(keras.applications, args.model, None)
        if fn is None:
            raise spa.InvalidArgumentError(f"keras.applications has no model {args.model!r}")
        model = fn(weights=None, input_shape=(args.size, args.size, 3))
        t0 = time.perf_counter()
        plan = spa.plan(model, **_options(args))
        t1 = time.perf_counter()
        spa.apply(plan)
        t2 = time.perf_counter()
        print(spa.Report.from_plan(plan).table(max_rows=25))
        print(f"planned in {t1 - t0:.2f} s, rebuilt in {t2 - t1:.2f} s")
        return 0
    return 2


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from spa_keras.errors import PruningError

    try:
        return _run(args)
    except PruningError as e:
        print(f"spa-keras: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spa-keras: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
