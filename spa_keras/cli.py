"""The ``spa-keras`` command: ``inspect``, ``prune``, ``export``, ``bench`` and ``demo``.

Exit codes: 0 success, 2 bad input (a message, no traceback), 1 internal error (a bug: the traceback
is printed so that it can be reported). Progress bars go to stderr (``--quiet`` hides them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow
from spa_keras.data_pruning import cli as data_pruning_cli  # noqa: E402 - no TensorFlow at import time

MODEL_HELP = "a .keras, .h5 or .onnx file"


# ---- arguments: every pruning option comes from spa_keras.config.OPTIONS ------------------------------

def _add_pruning_options(q):
    """A flag for every option of ``spa.prune`` (the option's name in kebab case)."""
    from .config import DATA, RECIPE, add_arguments

    add_arguments(q.add_argument_group("pruning (the options of spa.prune; see docs/options.md)"), (RECIPE, DATA))
    q.add_argument("--image-scale", type=float, default=1.0,
                   help="multiply image pixels (0-255) of --data/--calibration-data folders by this, e.g. 0.00392 "
                        "for 0-1 (default 1)")


def _add_run_options(q, output_required: bool):
    from .config import BY_NAME

    o = BY_NAME["output"]
    q.add_argument("-o", o.flag, dest="output", required=output_required, metavar="PATH",
                   help="the slim model: .keras or .h5 (Keras input), .onnx (ONNX input)")
    _add_overwrite(q, "replace the output and the report files if they exist")
    q.add_argument(BY_NAME["report"].flag, dest="report", metavar="PATH",
                   help="report prefix or folder (default: OUTPUT without extension + .report -> .txt, .json, .png)")


def _add_overwrite(q, help_text):
    from .config import BY_NAME

    o = BY_NAME["overwrite"]
    q.add_argument(o.flag, *o.aliases, dest="overwrite", action="store_true", help=help_text)


def _parser():
    p = argparse.ArgumentParser(prog="spa-keras", description="Structured pruning for Keras 3 models (and ONNX).")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars (verbose=False)")
    sub = p.add_subparsers(dest="command", required=True)

    i = sub.add_parser("inspect", help="groups, widths, MACs, parameters and what is held fixed")
    i.add_argument("model", help=MODEL_HELP)
    i.add_argument("--json", action="store_true", help="print JSON instead of text")

    pr = sub.add_parser("prune", help="prune a model, save the slim one and its report")
    pr.add_argument("model", help=MODEL_HELP)
    _add_run_options(pr, output_required=True)
    pr.add_argument("--no-report", action="store_true", help="write no report files (the table is still printed)")
    _add_pruning_options(pr)

    e = sub.add_parser("export", help="export for TF Serving (versioned SavedModel) and/or to ONNX")
    e.add_argument("model", help=MODEL_HELP + ", or a SavedModel directory (with --serving)")
    e.add_argument("--serving", metavar="DIR", help="TF Serving base directory: writes DIR/<version>/")
    e.add_argument("--version", type=int, help="the version number (default: one more than the largest in DIR)")
    e.add_argument("--onnx", metavar="PATH", help="write an ONNX file (tf2onnx)")
    e.add_argument("--keep-batchnorm", action="store_true",
                   help="export BatchNorm layers as they are (default: folded into the convolution or dense layer "
                        "before them, same outputs, faster serving)")
    _add_overwrite(e, "replace the ONNX file if it exists")

    b = sub.add_parser("bench", help="latency and throughput of the original and the slim model on this machine")
    b.add_argument("model", help=MODEL_HELP + ", or a SavedModel directory (timed as it is, not pruned)")
    b.add_argument("--batch-size", type=int, default=8, help="samples per batch (default 8)")
    b.add_argument("--repeats", type=int, default=20, help="timed runs per model (default 20)")
    b.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    b.add_argument("--no-eager", action="store_true", help="time the serving path only (not also eager calls)")
    b.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_pruning_options(b)

    d = sub.add_parser("demo", help="prune a keras.applications model built with weights=None")
    d.add_argument("--model", default="ResNet50", help="a keras.applications constructor (default ResNet50)")
    d.add_argument("--size", type=int, default=224, help="input size (default 224)")
    d.add_argument("--report", metavar="PATH", help="also write the report (.txt, .json, .png) here")
    _add_overwrite(d, "replace report files")
    _add_pruning_options(d)
    data_pruning_cli.add_parser(sub)
    return p


def _config(args):
    """The validated :class:`PruningConfig` of the command line (data files are loaded later)."""
    from .config import RECIPE, PruningConfig, from_arguments

    return PruningConfig(**from_arguments(args, (RECIPE,)))


# ---- models -------------------------------------------------------------------------------------

def _saved_model_dir(path):
    """The SavedModel inside ``path`` (itself, or a TF Serving base directory's newest version), or None."""
    if not os.path.isdir(path):
        return None
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    versions = sorted((int(v) for v in os.listdir(path) if v.isdigit()), reverse=True)
    for v in versions:
        if os.path.exists(os.path.join(path, str(v), "saved_model.pb")):
            return os.path.join(path, str(v))
    return None


def _load(path, command):
    """A ``keras.Model`` or ``onnx.ModelProto`` from a file, with a clear error for what cannot be read."""
    from spa_keras.errors import InvalidArgumentError

    if os.path.isdir(path):
        if _saved_model_dir(path):
            raise InvalidArgumentError(
                f"{path!r} is a SavedModel directory: Keras 3 cannot read it back as a Keras model (only as an "
                f"opaque keras.layers.TFSMLayer), so '{command}' needs the .keras, .h5 or .onnx file it was made "
                "from; SavedModel directories are accepted by 'spa-keras export --serving' and 'spa-keras bench'"
            )
        raise InvalidArgumentError(f"{path!r} is a directory, not a model file ({MODEL_HELP})")
    if path.endswith(".onnx"):
        from spa_keras.frontends.onnx import load_onnx

        return load_onnx(path)
    from spa_keras.io import load_model

    return load_model(path)


def _input_shape(model):
    """The model's single input shape without the batch axis (``None`` for unknown sizes)."""
    from spa_keras.errors import InvalidArgumentError
    from spa_keras.metrics import is_onnx

    if is_onnx(model):
        inits = {i.name for i in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in inits]
        shapes = [tuple(d.dim_value or None for d in i.type.tensor_type.shape.dim)[1:] for i in inputs]
    else:
        shapes = [tuple(x.shape[1:]) for x in model.inputs]
    if len(shapes) != 1:
        raise InvalidArgumentError(f"--data/--calibration-data files work with single-input models; this one has "
                                   f"{len(shapes)} inputs (use the Python API: spa.prune(..., calibration_data=...))")
    return shapes[0]


def _with_data(config, model, args):
    """The config with ``--data``/``--calibration`` loaded for this model's input."""
    from spa_keras.data import load_arrays, load_calibration

    changes = {}
    if args.data:
        x, y = load_arrays(args.data, _input_shape(model), scale=args.image_scale)
        changes["data"] = x if y is None else (x, y)
    if args.calibration_data:
        changes["calibration_data"] = load_calibration(args.calibration_data, _input_shape(model),
                                                       max_samples=config.calibration_samples, scale=args.image_scale)
    return config.replace(**changes) if changes else config


class _Progress:
    """One progress bar over named stages: ``stage("loading")`` finishes the previous stage."""

    def __init__(self, stages, quiet, desc="spa-keras"):
        from tqdm import tqdm

        self.desc = desc
        self.bar = tqdm(total=stages, desc=desc, disable=quiet, file=sys.stderr, leave=False, mininterval=0,
                        bar_format="{desc} |{bar:20}| {n_fmt}/{total_fmt} [{elapsed}]")
        self.started = False

    def __call__(self, name):
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_description_str(f"{self.desc}: {name}")

    def close(self):
        if self.started:
            self.bar.update(1)
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- commands -----------------------------------------------------------------------------------

def cmd_inspect(args) -> int:
    import spa_keras as spa

    with _Progress(2, args.quiet) as stage:
        stage("loading model")
        model = _load(args.model, "inspect")
        stage("reading the channel graph")
        result = spa.inspect(model)
    print(json.dumps(result.to_dict(), indent=1) if args.json else result)
    return 0


def _check_outputs(args):
    """Refuse, before any work, outputs that exist (without --overwrite) or are of the wrong kind."""
    from spa_keras.errors import InvalidArgumentError, OutputExistsError
    from spa_keras.report import Report

    if os.path.exists(args.output) and not args.overwrite:
        raise OutputExistsError(f"{args.output!r} exists; pass --overwrite to replace it")
    if args.output.endswith(".onnx") != args.model.endswith(".onnx"):
        raise InvalidArgumentError("the output must be of the input's kind (.onnx -> .onnx, Keras -> .keras/.h5); "
                                   "convert with spa.from_onnx / spa.to_onnx or 'spa-keras export --onnx'")
    if not args.output.endswith((".keras", ".h5", ".onnx")):
        raise InvalidArgumentError(f"{args.output!r}: the output must end in .keras, .h5 or .onnx")
    if args.no_report:
        return None
    report = args.report or os.path.splitext(args.output)[0] + ".report"
    Report.check_paths(report, args.overwrite)
    return report


def _prune_staged(model, config, stage, quiet=False):
    """``(slim, plan)`` with a stage per step of the work (the algorithms show their own bars); the plan
    is None for iterative pruning (several plans)."""
    from spa_keras.api import _plan, _prune, write

    verbose = False if quiet else None
    if config.steps > 1:
        stage(f"pruning in {config.steps} steps")
        return _prune(model, config, None, False, None, verbose)[0], None
    stage("scoring channels and planning")
    plan, post = _plan(model, config, verbose)
    stage("writing the slim model")
    return write(plan, post, config), plan


def cmd_prune(args) -> int:
    from spa_keras.api import _report_of, _save
    from spa_keras.report import Report

    config = _config(args)
    report_path = _check_outputs(args)
    with _Progress(5, args.quiet) as stage:
        stage("loading model")
        model = _load(args.model, "prune")
        config = _with_data(config, model, args)
        slim, plan = _prune_staged(model, config, stage, args.quiet)
        stage("comparing the models")
        report = Report.from_plan(plan) if plan is not None else _report_of(model, slim, config)
        stage(f"saving {args.output}")
        _save(slim, args.output, args.overwrite)
        if report_path is not None:
            paths = report.save(report_path, overwrite=args.overwrite)
    print(report.table())
    print(f"saved {args.output}")
    if report_path is not None:
        print("report: " + ", ".join(paths.values()))
    return 0


def cmd_export(args) -> int:
    import spa_keras as spa
    from spa_keras.errors import InvalidArgumentError, OutputExistsError
    from spa_keras.metrics import is_onnx

    if not args.serving and not args.onnx:
        raise InvalidArgumentError("nothing to do: give --serving DIR and/or --onnx PATH")
    if args.version is not None and not args.serving:
        raise InvalidArgumentError("--version goes with --serving")
    if args.onnx:
        if not args.onnx.endswith(".onnx"):
            raise InvalidArgumentError(f"{args.onnx!r}: the ONNX output must end in .onnx")
        if os.path.exists(args.onnx) and not args.overwrite:
            raise OutputExistsError(f"{args.onnx!r} exists; pass --overwrite to replace it")
    saved = _saved_model_dir(args.model)
    if saved is not None:
        if args.onnx:
            raise InvalidArgumentError(f"{args.model!r} is a SavedModel: --onnx needs the .keras or .h5 file")
        with _Progress(1, args.quiet) as stage:
            stage("copying the SavedModel")
            target = spa.export_for_serving(saved, args.serving, version=args.version)
        print(f"serving: {target}")
        return 0
    with _Progress(1 + bool(args.serving) + bool(args.onnx), args.quiet) as stage:
        stage("loading model")
        model = _load(args.model, "export")
        if is_onnx(model):
            if args.onnx:
                raise InvalidArgumentError(f"{args.model!r} is already ONNX; --onnx converts Keras models")
            model = spa.from_onnx(model)
        if args.serving:
            stage("writing the SavedModel")
            target = spa.export_for_serving(model, args.serving, version=args.version,
                                            fold_batchnorm=not args.keep_batchnorm)
        if args.onnx:
            stage("converting to ONNX (tf2onnx)")
            spa.to_onnx(model, args.onnx, overwrite=args.overwrite, fold_batchnorm=not args.keep_batchnorm)
    if args.serving:
        print(f"serving: {target}")
    if args.onnx:
        print(f"onnx: {args.onnx}")
    return 0


def cmd_bench(args) -> int:
    import spa_keras as spa
    from spa_keras.errors import InvalidArgumentError
    from spa_keras.metrics import count_macs, count_params

    for name in ("batch_size", "repeats"):
        if getattr(args, name) < 1:
            raise InvalidArgumentError(f"--{name.replace('_', '-')} must be a positive integer")
    if args.warmup < 0:
        raise InvalidArgumentError("--warmup must be 0 or more")
    config = _config(args)
    timing = dict(batch_size=args.batch_size, repeats=args.repeats, warmup=args.warmup)
    saved = _saved_model_dir(args.model)
    models = {}
    with _Progress(2 if saved else 4, args.quiet) as stage:
        if saved is not None:
            import tensorflow as tf

            stage("loading the SavedModel")
            try:
                sig = tf.saved_model.load(saved).signatures["serving_default"]
            except Exception as e:  # noqa: BLE001 - an unreadable directory is bad input
                raise InvalidArgumentError(f"could not load {saved!r} as a SavedModel with a serving_default "
                                           f"signature: {e}") from e
            stage("timing (SavedModel, not pruned)")
            models["original"] = (sig, None)
        else:
            stage("loading model")
            model = _load(args.model, "bench")
            config = _with_data(config, model, args)
            stage("pruning")
            slim = spa.prune(model, config, verbose=False if args.quiet else None)
            models["original"], models["slim"] = (model, spa.inspect(model).graph), (slim, spa.inspect(slim).graph)
            stage("timing the original and the slim model")
        results = {}
        for name, (m, graph) in models.items():
            results[name] = _timings(m, timing, not args.no_eager)  # no bar of its own: the stage bar says what runs
            if graph is not None:
                results[name].update(macs=count_macs(graph), params=count_params(graph))
    if "slim" in results:
        results["speedup"] = results["original"]["median_s"] / results["slim"]["median_s"]
        if "eager" in results["original"]:
            results["eager_speedup"] = results["original"]["eager"]["median_s"] / results["slim"]["eager"]["median_s"]
    results["model"] = args.model
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(f"{'':<9} {'batch':>5} {'median ms':>10} {'best ms':>9} {'samples/s':>10} {'MACs/sample':>14} {'params':>12}")
    for name in ("original", "slim"):
        if name in results:
            r = results[name]
            macs = f"{r['macs']:,}" if "macs" in r else "-"
            params = f"{r['params']:,}" if "params" in r else "-"
            print(f"{name:<9} {r['batch_size']:>5} {1e3 * r['median_s']:>10.2f} {1e3 * r['best_s']:>9.2f} "
                  f"{r['samples_per_s']:>10.1f} {macs:>14} {params:>12}")
    if "speedup" in results:
        o = results["original"]
        print(f"speed-up {results['speedup']:.2f}x (median latency, batch {o['batch_size']}, {o['mode']}, this "
              f"machine, load average {o['load']})")
        if "eager_speedup" in results:
            print(f"eager model(x) calls: {1e3 * o['eager']['median_s']:.2f} -> "
                  f"{1e3 * results['slim']['eager']['median_s']:.2f} ms, {results['eager_speedup']:.2f}x")
    return 0


def _timings(model, timing, eager):
    """The serving-path timing of a model (a Keras model as exported: BatchNorm folded, depthwise-grouped
    convolutions as DepthwiseConv, traced once; an ONNX model in onnxruntime; a SavedModel signature as
    it is), and eager calls of a Keras model."""
    from spa_keras.latency import serving_latency
    from spa_keras.metrics import is_keras, measure_latency

    if is_keras(model):
        r = serving_latency(model, **timing)
        if eager:
            r["eager"] = measure_latency(model, mode="eager", **timing)
        return r
    return measure_latency(model, **timing)


def cmd_demo(args) -> int:
    import keras

    import spa_keras as spa

    config = _config(args)
    fn = getattr(keras.applications, args.model, None)
    if fn is None or not callable(fn):
        raise spa.InvalidArgumentError(f"keras.applications has no model {args.model!r}")
    if args.report:
        spa.Report.check_paths(args.report, args.overwrite)
    with _Progress(3, args.quiet) as stage:
        stage(f"building {args.model} (weights=None)")
        model = fn(weights=None, input_shape=(args.size, args.size, 3))
        config = _with_data(config, model, args)
        t0 = time.perf_counter()
        slim, plan = _prune_staged(model, config, stage, args.quiet)
        t1 = time.perf_counter()
    from spa_keras.api import _report_of

    report = spa.Report.from_plan(plan) if plan is not None else _report_of(model, slim, config)
    print(report.table(max_rows=25))
    print(f"pruned in {t1 - t0:.2f} s" + (f" ({config.steps} steps)" if config.steps > 1 else ""))
    if args.report:
        print("report: " + ", ".join(report.save(args.report, overwrite=args.overwrite).values()))
    return 0


COMMANDS = {"inspect": cmd_inspect, "prune": cmd_prune, "export": cmd_export, "bench": cmd_bench, "demo": cmd_demo, "prune-data": data_pruning_cli.run}


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from spa_keras.errors import PruningError

    try:
        return COMMANDS[args.command](args)
    except PruningError as e:
        print(f"spa-keras: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spa-keras: interrupted", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - a bug: show it, so that it can be reported
        import traceback

        traceback.print_exc()
        print("spa-keras: internal error (a bug in spa_keras: please report it with the traceback above)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
