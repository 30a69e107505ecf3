"""``spa-keras prune-data``: score the training samples, keep a fraction, write the kept indices (``.npy``)
and a report (PNG, and a JSON summary on stdout with ``--json``).

Nothing heavy is imported here at import time (``spa-keras --help`` stays fast): TensorFlow, Keras and the
scoring code load inside :func:`run`.
"""

from __future__ import annotations

import os

SCORES = ("dynamic_uncertainty", "tdds", "el2n", "forgetting")
HELP = "score training samples (on a subset, extrapolated) and keep the ones that matter"


def _fraction(text):
    import argparse

    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def add_parser(subparsers):
    """Register ``prune-data`` on the ``spa-keras`` subparsers."""
    p = subparsers.add_parser("prune-data", help=HELP, description=HELP + ". Exit codes: 0 success, 2 bad input.")
    p.add_argument("data", help="a .npz with x and y, or a folder of images with one subfolder per class")
    p.add_argument("-o", "--output", required=True, help="where the kept indices go (.npy)")
    p.add_argument("--keep", type=_fraction, default=0.5, help="fraction of samples to keep, in (0, 1] (default 0.5)")
    p.add_argument("--score", choices=SCORES, default="dynamic_uncertainty", help="the importance score")
    p.add_argument("--strategy", choices=("top", "bottom", "random", "ccs"), default="ccs",
                   help="ccs (default): coverage-centric, across the score range (the one to use with extrapolated "
                        "scores); top: the highest scores; bottom; random")
    p.add_argument("--class-balanced", action="store_true", help="keep the same fraction of every class")
    p.add_argument("--extrapolate", choices=("knn", "gnn", "none"), default="knn",
                   help="score a subset and extrapolate by kNN (default) or a graph network; none: score every sample")
    p.add_argument("--subset", type=_fraction, default=0.1, help="the fraction scored by training (default 0.1)")
    p.add_argument("--k", type=int, default=10, help="neighbours of the extrapolation (default 10)")
    p.add_argument("--model", default="auto",
                   help="a compiled .keras model to train (its architecture and optimizer), or auto: a small CNN for "
                        "images, an MLP otherwise (default)")
    p.add_argument("--epochs", type=int, default=10, help="epochs of the scoring run (default 10)")
    p.add_argument("--batch-size", type=int, default=256, help="training batch size (default 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--channels", type=int, choices=(1, 3, 4), default=3, help="image channels to read (default 3)")
    p.add_argument("--image-scale", type=float, default=1 / 255,
                   help="multiply image pixels (0-255) by this (default 1/255)")
    p.add_argument("--scores-output", metavar="PATH", help="also write every sample's score (.npy)")
    p.add_argument("--report", metavar="PATH",
                   help="the report PNG (default: the output's name with .report.png)")
    p.add_argument("--no-report", action="store_true", help="write no report PNG")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--force", action="store_true", help="overwrite the outputs")
    return p


def _outputs(args):
    """Refuse, before any work, outputs that exist (without --force) or have the wrong suffix."""
    from spa_keras.errors import InvalidArgumentError, OutputExistsError

    report = None if args.no_report else (args.report or os.path.splitext(args.output)[0] + ".report.png")
    for path, suffix in ((args.output, ".npy"), (args.scores_output, ".npy"), (report, ".png")):
        if path is None:
            continue
        if not path.endswith(suffix):
            raise InvalidArgumentError(f"{path!r}: this output must end in {suffix}")
        if os.path.exists(path) and not args.force:
            raise OutputExistsError(f"{path!r} exists; pass --force to overwrite it")
    return report


def _load(args):
    """``(x, y)`` from a .npz (arrays x and y) or a folder of images (labels: the first-level subfolders)."""
    import numpy as np

    from spa_keras.data import image_files, load_arrays
    from spa_keras.errors import InvalidArgumentError

    path = args.data
    if os.path.isdir(path):
        x, _ = load_arrays(path, (None, None, args.channels), scale=args.image_scale)
        names = [os.path.relpath(f, path).split(os.sep)[0] for f in image_files(path)]
        if any(os.sep not in os.path.relpath(f, path) for f in image_files(path)):
            raise InvalidArgumentError(f"{path!r}: put the images in one subfolder per class (the labels)")
        classes = sorted(set(names))
        return x, np.array([classes.index(c) for c in names]), classes
    if not path.endswith(".npz"):
        raise InvalidArgumentError(f"{path!r}: expected a .npz file (arrays x and y) or a folder of images")
    if not os.path.exists(path):
        raise InvalidArgumentError(f"data {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise InvalidArgumentError(f"{path!r} must hold arrays named x and y (it has {', '.join(f.keys())})")
            shape = f["x"].shape[1:]
    except InvalidArgumentError:
        raise
    except Exception as e:  # noqa: BLE001 - an unreadable file is bad input
        raise InvalidArgumentError(f"could not read {path!r} as a .npz file: {e}") from e
    x, y = load_arrays(path, shape)
    if y is None:
        raise InvalidArgumentError(f"{path!r} holds no labels y")
    return x, y, None


def _builder(args, input_shape, classes):
    """``build_model()`` for the scoring runs: the given .keras file, or a small default model."""
    import keras

    from spa_keras.errors import InvalidArgumentError
    from spa_keras.io import load_model

    if args.model != "auto":
        load_model(args.model)  # fails early, with a clear message, on a bad file

        def build():
            model = keras.saving.load_model(args.model, compile=True)
            if getattr(model, "optimizer", None) is None:
                last = getattr(model.layers[-1], "activation", None)
                logits = getattr(last, "__name__", "") != "softmax"
                model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=logits))
            return model

        return build
    if classes < 2:
        raise InvalidArgumentError(f"the labels hold {classes} class: data pruning needs at least 2")
    from spa_keras.data_pruning import default_model

    return lambda: default_model(input_shape, classes)


def run(args) -> int:
    """Run ``spa-keras prune-data``: returns the exit code (errors are raised as ``PruningError``)."""
    import json

    import numpy as np

    from spa_keras import data_pruning as dp
    from spa_keras.data_pruning.report import save_png, summary
    from spa_keras.errors import InvalidArgumentError
    from spa_keras.io import atomic_write

    if not 0 < args.keep <= 1:
        raise InvalidArgumentError(f"--keep must be a fraction in (0, 1], got {args.keep}")
    if args.extrapolate != "none" and not 0 < args.subset < 1:
        raise InvalidArgumentError(f"--subset must be a fraction in (0, 1), got {args.subset}")
    report = _outputs(args)
    x, y, names = _load(args)
    y = np.asarray(y).astype(np.int64)
    build = _builder(args, x.shape[1:], int(y.max()) + 1)
    common = dict(score=args.score, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    if args.extrapolate == "none":
        scores = dp.scores(build, x, y, **common)
    else:
        scores = dp.extrapolated_scores(build, x, y, subset=args.subset, method=args.extrapolate, k=args.k, **common)
    kept = dp.select(scores, args.keep, y=y, strategy=args.strategy, class_balanced=args.class_balanced,
                     seed=args.seed)
    atomic_write(args.output, lambda tmp: np.save(tmp, kept), overwrite=args.force)
    if args.scores_output:
        atomic_write(args.scores_output, lambda tmp: np.save(tmp, scores), overwrite=args.force)
    if report is not None:
        save_png(report, scores, kept, y, title=f"{args.score} ({'full' if args.extrapolate == 'none' else args.extrapolate})",
                 overwrite=args.force)
    info = summary(scores, kept, y)
    if names is not None:
        info["classes"] = names
    info.update(output=args.output, report=report, score=args.score, strategy=args.strategy)
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print(f"kept {info['kept']} of {info['samples']} samples ({info['kept_fraction']:.3f}) by {args.score}, "
              f"{args.strategy}{', class-balanced' if args.class_balanced else ''}")
        print("kept per class: " + ", ".join(f"{c}: {f:.3f}" for c, f in info["kept_per_class"].items()))
        print(f"saved {args.output}" + (f"; report: {report}" if report else ""))
    return 0
