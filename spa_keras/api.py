"""The public face: ``prune``, ``plan``, ``apply``, ``inspect``, ``Pruner``, and the opt-in ``model.prune``.

Their options are those of :data:`spa_keras.config.OPTIONS` (defaults, checks and meanings are defined
there once); this module only orders the work: read the model, score, select, let an algorithm
compensate, write.
"""

from __future__ import annotations

import fnmatch
import os

import numpy as np

from . import config as _config
from .config import DATA, RECIPE, RUN, PruningConfig, check_names, resolve
from .errors import InvalidArgumentError, OutputExistsError
from .graph import analyse
from .metrics import count_macs, count_params, is_onnx
from .plan import PruningPlan, resolve_target, search, select
from .report import Report, held_fixed


def _frontend_options(cfg: PruningConfig | None) -> dict:
    return {"residual_stream": "hold" if cfg is None else cfg.residual_stream}


def read_model(model, cfg: PruningConfig | None = None):
    """The frontend graph (a :class:`~spa_keras.frontends.base.ModelView`) of a ``keras.Model``, a
    ``.keras``/``.h5`` path, an ``onnx.ModelProto`` or a ``.onnx`` path; a graph already read passes
    through when it was read with the same options."""
    from .frontends.base import ModelView

    options = _frontend_options(cfg)
    if isinstance(model, ModelView):
        if getattr(model, "options", options) == options:
            return model
        model = model.model  # read again with other options
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if path.endswith(".onnx"):
            from .frontends.onnx import from_onnx_model

            return from_onnx_model(path)
        from .io import load_model

        model = load_model(path)
    if is_onnx(model):
        from .frontends.onnx import from_onnx_model

        return from_onnx_model(model)
    from .frontends.keras import from_keras

    return from_keras(model, **options)


def _layer_nodes(view) -> dict:
    """``{layer name: node names}``; a layer of a nested model answers to its own name too."""
    names = {}
    for node in view.graph.nodes:
        names.setdefault(node.layer, []).append(node.name)
        if "/" in node.layer:
            names.setdefault(node.layer.rsplit("/", 1)[1], []).append(node.name)
    return names


def _resolve_ignored(view, ignored_layers) -> set:
    import difflib

    if not ignored_layers:
        return set()
    names = _layer_nodes(view)
    out = set()
    for name in ignored_layers:
        if name not in names:
            close = difflib.get_close_matches(name, list(names), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise InvalidArgumentError(f"ignored_layers names {name!r}, which is not a layer of model "
                                       f"{view.graph.name!r}.{hint}")
        out.update(names[name])
    return out


def _resolve_ratio_per_layer(view, analysis, ratio_per_layer) -> dict:
    """``{group id: ratio}`` from ``{layer name or fnmatch pattern: ratio}`` (first matching key wins)."""
    if not ratio_per_layer:
        return {}
    layer_of = {n.name: n.layer for n in view.graph.nodes}
    out, used = {}, set()
    for g in analysis.groups:
        layers = [layer_of.get(name, name) for name in g.nodes]
        for key, r in ratio_per_layer.items():
            if any(fnmatch.fnmatchcase(layer, key) for layer in layers):
                out[g.id] = r
                used.add(key)
                break
    unknown = [k for k in ratio_per_layer
               if k not in used and not any(fnmatch.fnmatchcase(n.layer, k) for n in view.graph.nodes)]
    if unknown:
        raise InvalidArgumentError(f"ratio_per_layer names {unknown[0]!r}, which matches no layer of model "
                                   f"{view.graph.name!r}")
    return out


def _stream_groups(view, analysis) -> set:
    """The groups of the residual streams that normalisation layers read across (what ``hidden_ratio``
    prunes); an error when there is none."""
    groups = {analysis._group_of(node.inputs[0]) for node in view.graph.nodes if node.attrs.get("stream") == "pass"}
    groups.discard(None)
    if not groups:
        raise InvalidArgumentError(f"hidden_ratio: model {view.graph.name!r} has no residual stream that a "
                                   "normalisation layer reads across (or it is held: ignored_layers, an output)")
    return groups


def _warn_hidden(view, asked: float, removed: float, step=None):
    """A warning that the residual stream lost another fraction of its width than ``hidden_ratio`` asked."""
    import warnings

    warnings.warn(
        f"hidden_ratio={asked:g} removes {removed:.0%} of the residual stream of model {view.graph.name!r}: its "
        "width moves only in steps that keep every block whole (where the head size is derived from the "
        "hidden width, as in keras_hub's GPT-2, BERT and Llama: whole heads in every key/value group, or, "
        "with residual_stream='rotate', one dimension of every head, two for rotary heads"
        + (f"; {step} channels here" if step else "") + "). Ask for a reachable fraction", stacklevel=3)


def _scores(view, analysis, cfg: PruningConfig):
    from . import criteria

    score_fn = criteria.get(cfg.criterion)
    context = {}
    if getattr(score_fn, "needs", ()):
        if cfg.data is None:
            raise InvalidArgumentError(f"criterion {cfg.criterion!r} needs data: pass data=... to spa.plan/prune")
        context["gradient"], context["fisher"] = view.gradient_stats(cfg.data, cfg.loss)
    if cfg.normalization != "auto":
        context["normalization"] = cfg.normalization
    return score_fn(analysis, view.weight, reduction=cfg.group_reduction, **context)


def _plan(model, cfg: PruningConfig, verbose):
    """``(plan, post)``: the plan, and the post-training run that made it (None without an algorithm),
    which :func:`prune` asks to finish the written model."""
    view = read_model(model, cfg)
    fixed = _resolve_ignored(view, cfg.ignored_layers)
    analysis = analyse(view.graph, fixed_nodes=fixed)
    group_ratios, rotation = {}, None
    if cfg.residual_stream == "rotate":
        view, analysis, rotation = _rotated(view, analysis, cfg, verbose)
        analysis = analyse(view.graph, fixed_nodes=fixed)
    algorithm = cfg.algorithm or ("obspa" if cfg.calibration_data is not None and rotation is None else None)
    post = None
    if algorithm is not None:
        from .algorithms import PostTraining

        post = PostTraining(algorithm, view, cfg.calibration_data, cfg.calibration_samples, cfg.data_free,
                            cfg.algorithm_options, verbose)
    scores = _scores(view, analysis, cfg)
    if post is not None:
        scores = post.scores(analysis, scores)
    group_ratios = _resolve_ratio_per_layer(view, analysis, cfg.ratio_per_layer)
    if rotation is not None:  # the rotated stream keeps its first channels: the principal directions
        from .algorithms.rotate import head_blocks

        (g,) = _stream_groups(view, analysis)
        scores = scores.copy()
        scores[analysis.groups[g].classes] = np.nan
        lay = analysis.layouts[next(n.inputs[0] for n in view.graph.nodes if n.attrs.get("stream") == "pass")]
        width = len(lay)
        scores[analysis.class_of[lay]] = (width - np.arange(width)) / width
        group_ratios[g] = (width - rotation.keep) / width
        for node, head in zip(head_blocks(view.graph), rotation.head_scores):  # each head keeps its first dimensions
            scores[analysis.class_of[analysis.layouts[node.outputs[-2]]]] = head
    elif cfg.hidden_ratio is not None:
        streams = _stream_groups(view, analysis)
        group_ratios.update({g: cfg.hidden_ratio for g in streams})
    options = dict(global_pruning=cfg.global_pruning, max_ratio=cfg.max_ratio, round_to=cfg.round_to,
                   group_ratios=group_ratios)
    if cfg.target_latency is not None:
        from .latency import search_latency

        result = search_latency(view, analysis, scores, cfg.target_latency, cfg.latency_batch_size, options)
    elif cfg.target_macs is not None or cfg.target_params is not None:
        counter, name = (count_macs, "target_macs") if cfg.target_macs is not None else (count_params, "target_params")
        base = counter(view.graph)
        goal = resolve_target(name, getattr(cfg, name), base)
        result = search(analysis, scores, lambda p: counter(view.graph, p), goal, **options)
        result.record(target=goal, base=base, reached=counter(view.graph, result), measure=name[7:])
    else:
        result = select(analysis, scores, cfg.ratio, **options)
    if rotation is None and cfg.hidden_ratio is not None:
        removed = max(float(np.mean(result.removed_classes[analysis.groups[g].classes])) for g in streams)
        if abs(removed - cfg.hidden_ratio) > 0.05:
            _warn_hidden(view, cfg.hidden_ratio, removed)
    criterion = cfg.criterion if isinstance(cfg.criterion, str) else getattr(cfg.criterion, "__name__", "custom")
    result.attach(view).record(criterion=criterion)
    if rotation is not None:
        result.record(residual_stream="rotate", rotation_exact=rotation.exact, hidden_kept=rotation.keep)
    if post is not None:
        post.finish(result)
    return result, post


def _rotated(view, analysis, cfg: PruningConfig, verbose):
    """``(view, analysis, rotation)`` of the model with its residual stream folded, centred and rotated
    (:mod:`spa_keras.algorithms.rotate`), written at full width: a new model whose stream's first
    channels are the ones to keep."""
    import math

    from .algorithms import inputs_for
    from .algorithms.rotate import Rotation

    if any(n.attrs.get("norm") == "post_layer" for n in view.graph.nodes):
        raise InvalidArgumentError(
            f"residual_stream='rotate': model {view.graph.name!r} normalises after the residual add (post-norm, "
            "like BERT), so its stream cannot be rotated without changing what it computes; use "
            "residual_stream='slice' (approximate) or 'hold'")
    streams = _stream_groups(view, analysis)
    if len(streams) != 1:
        raise InvalidArgumentError(f"residual_stream='rotate': model {view.graph.name!r} has {len(streams)} residual "
                                   "streams read by normalisation layers; rotation handles one")
    (g,) = streams
    width = analysis.groups[g].size
    fraction = cfg.hidden_ratio if cfg.hidden_ratio is not None else cfg.ratio
    asked = width - int(math.floor(fraction * width + 1e-9))
    keep, step = asked, None
    for driver, _, factor, multiple in analysis.links:  # the hidden width moves in whole steps of the heads
        if driver == g:
            step = factor * multiple
            keep = max(step, keep // step * step)
    if keep != asked:
        _warn_hidden(view, fraction, 1 - keep / width, step)
    inputs = inputs_for(view, cfg.calibration_data, cfg.calibration_samples, cfg.data_free, 0, verbose)
    rotation = Rotation(view, analysis, g, inputs, max(1, keep))
    rotated = apply(PruningPlan.empty(analysis, view).compensate(rotation.arrays))
    return read_model(rotated, cfg), analysis, rotation


def plan(model, config=None, **options) -> PruningPlan:
    """Decide which channels to remove, without changing anything.

    ``model``: a Functional or Sequential ``keras.Model`` (nested models and shared layers included), a
    ``.keras``/``.h5`` path, an ``onnx.ModelProto`` or a ``.onnx`` path. ``config``: a
    :class:`PruningConfig` (or its ``get_config()`` dict); keyword arguments are its options (listed
    in ``docs/options.md``), overriding the config's, plus ``verbose`` (progress bars of the
    algorithms' long work unless ``False``). With ``target_macs``/``target_params`` the plan lands
    within 1% (``plan.settings["reached"]`` says where).

    >>> import keras, spa_keras as spa
    >>> m = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3))
    >>> p = spa.plan(m, target_macs=0.5)
    >>> abs(p.settings["reached"] / p.settings["base"] - 0.5) < 0.01
    True
    """
    run = _config.check_run(**{k: options.pop(k) for k in ("verbose",) if k in options})
    return _plan(model, resolve(config, "spa.plan", **options), run["verbose"])[0]


def apply(plan_: PruningPlan):
    """Write a plan out: a new, smaller ``keras.Model`` (or ``onnx.ModelProto`` for an ONNX model) with
    the plan's compensation written first; the original is not changed. (:func:`prune` also runs the
    algorithm's last step on the result: BatchNorm re-estimation, the reconstruction's second phase.)"""
    view = plan_.source
    if view is None:
        raise InvalidArgumentError("this plan was not made by spa.plan; there is no model to apply it to")
    if view.kind == "ONNX":
        from .backends.onnx import apply_onnx_plan

        return apply_onnx_plan(view, plan_)
    from .backends.keras import apply_plan

    return apply_plan(view, plan_)


def prune(model, config=None, **options):
    """Remove channels for real: a new, smaller ``keras.Model`` with the same inputs and outputs (an
    ``onnx.ModelProto`` when given an ONNX model or a ``.onnx`` path); ``model`` is not changed.

    Takes :func:`plan`'s arguments and the run options: ``output`` (also save the result there,
    atomically; an existing file is kept unless ``overwrite=True``), ``report`` (also write the
    per-layer report there: see :meth:`Report.save`) and ``verbose`` (``True`` also prints the
    before/after table, ``False`` hides the progress bars too). ``steps`` > 1 prunes iteratively: the
    MACs (or parameters, with ``target_params``) fall in equal steps to where one-shot pruning would
    land, and the channels are scored again on the slimmer model between steps.

    >>> import keras, spa_keras as spa
    >>> m = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
    >>> slim = spa.prune(m, ratio=0.5)
    >>> slim.count_params() < m.count_params()
    True
    """
    run = _config.check_run(**{k: options.pop(k) for k in list(options) if k in _config.names(RUN)})
    return _prune(model, resolve(config, "spa.prune", **options), **run)[0]


def _prune(model, cfg: PruningConfig, output, overwrite, report, verbose):
    """:func:`prune`, returning ``(slim, report, plan)``: the report only when asked for or verbose, the
    plan that was written (the first of them when pruning in steps)."""
    if output is not None and os.path.exists(output) and not overwrite:  # before any work
        raise OutputExistsError(f"{output!r} exists; pass overwrite=True (--overwrite) to replace it")
    if report is not None:
        Report.check_paths(report, overwrite)
    p, post = _plan(model, cfg, verbose)
    rep = None
    if cfg.steps > 1:
        slim = _steps(model, cfg, p, verbose)
        if report is not None or verbose:
            rep = Report.from_graphs(p.graph, read_model(slim).graph)
    else:
        slim = write(p, post, cfg)
        if report is not None or verbose:
            rep = Report.from_plan(p)
        if verbose:
            print(rep.table())
    _save(slim, output, overwrite)
    if report is not None:
        rep.save(report, overwrite=overwrite)
    return slim, rep, p


def write(plan_: PruningPlan, post, cfg: PruningConfig):
    """:func:`apply`, then the algorithm's last step on the written model (``post`` from :func:`_plan`)."""
    slim = apply(plan_)
    if post is not None:
        post.after_apply(plan_, read_model(slim, cfg))
    return slim


def _steps(model, cfg, first, verbose):
    """Iterative pruning: ``cfg.steps`` plans, each scored on the model the previous one wrote."""
    by_params = cfg.target_params is not None
    counter, key = (count_params, "target_params") if by_params else (count_macs, "target_macs")
    base, final = counter(first.graph), counter(first.graph, first)
    current = model
    for i in range(1, cfg.steps + 1):
        goal = base - (base - final) * i / cfg.steps
        step_cfg = cfg.replace(**{"target_macs": None, "target_params": None, "target_latency": None, key: goal,
                                   "steps": 1})
        step_plan, post = _plan(current, step_cfg, verbose)
        current = write(step_plan, post, cfg)
    if verbose:
        print(f"{cfg.steps} steps: {counter.__name__[6:]} {base:,} -> {counter(step_plan.graph, step_plan):,}")
    return current


plan.__signature__ = _config.signature(_config.names(RECIPE, DATA) + ["verbose"], first=["model"])
prune.__signature__ = _config.signature(_config.names(RECIPE, DATA, RUN), first=["model"])


class Pruner:
    """A stored, reusable pruning recipe: a :class:`PruningConfig` and the means to apply it.

    ``Pruner(config)`` or ``Pruner(ratio=0.3, ...)`` (the options of :class:`PruningConfig`, validated at
    once); ``pruner.plan(model)``, ``pruner.prune(model)`` (or ``pruner(model)``) with the run options
    of :func:`prune`. After a prune, ``pruner.report`` is the :class:`Report` of what was removed. It
    round-trips through ``get_config``/``from_config`` like a Keras object. ``pruner.last_plan`` is the
    plan written by the last prune (its ``settings`` say how it was made: the algorithm's samples, the
    reconstruction's losses, a target's landing point).

    >>> import keras, spa_keras as spa
    >>> pruner = spa.Pruner(ratio=0.5, round_to=4)
    >>> m = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10)
    >>> slim = pruner.prune(m)
    >>> pruner.report.macs_after < pruner.report.macs_before
    True
    >>> spa.Pruner.from_config(pruner.get_config()).config == pruner.config
    True
    """

    def __init__(self, config=None, **options):
        self.config = resolve(config, "Pruner", **options)
        self.report = None
        self.last_plan = None

    def plan(self, model, **run) -> PruningPlan:
        """The plan this recipe makes for ``model`` (nothing is changed); ``verbose`` as for :func:`plan`."""
        check_names(run, ["verbose"], "Pruner.plan")
        return _plan(model, self.config, _config.check_run(**run)["verbose"])[0]

    def prune(self, model, **run):
        """The slim model (the run options of :func:`prune`: ``output``, ``overwrite``, ``report``,
        ``verbose``)."""
        slim, rep, self.last_plan = _prune(model, self.config, **_config.check_run(**run))
        if rep is None:
            rep = Report.from_plan(self.last_plan) if self.config.steps == 1 else _report_of(model, slim, self.config)
        self.report = rep
        return slim

    __call__ = prune

    def get_config(self) -> dict:
        return self.config.get_config()

    @classmethod
    def from_config(cls, config: dict) -> "Pruner":
        return cls(PruningConfig.from_config(config))

    def __repr__(self):
        return f"Pruner({self.config!r})"


def _report_of(model, slim, cfg) -> Report:
    """The report of a prune that did not make one (compares the two models layer by layer)."""
    return Report.from_graphs(read_model(model, cfg).graph, read_model(slim).graph)


def _model_prune(self, method=None, config=None, **options):
    """``model.prune(method=None, config=None, **options)``: this model pruned, as a new ``keras.Model``.

    Shaped like Keras' ``model.quantize(mode, config=...)``: ``method`` is a criterion (``"l2"``,
    ``"taylor"``, ...) or an algorithm (``"obspa"``, ``"reconstruct"``); ``config`` a
    :class:`PruningConfig`; keyword arguments are :func:`prune`'s options and override the config's.
    Unlike ``quantize``, the model itself is not changed (pruning changes its architecture): the slim
    model is returned. Available after :func:`enable_model_prune`.
    """
    from .algorithms import ALGORITHMS

    if method is not None:
        options["algorithm" if method in ALGORITHMS else "criterion"] = method
    return prune(self, config, **options)


def enable_model_prune() -> None:
    """Opt in to ``model.prune(...)`` on every ``keras.Model`` (Functional and Sequential).

    ``model.prune(method=None, config=None, **options)`` returns the slim model, exactly as
    ``spa.prune(model, ...)`` would; the model is not changed. Keras' classes are changed only when
    this is called, and :func:`disable_model_prune` undoes it. If a ``prune`` method already exists
    on ``keras.Model`` (one Keras may add one day), it is left alone and an error says so.

    >>> import keras, spa_keras as spa
    >>> spa.enable_model_prune()
    >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(2)])
    >>> m.prune(config=spa.PruningConfig(ratio=0.5)).layers[0].units
    8
    >>> spa.disable_model_prune()
    """
    import keras

    from .errors import PruningError

    existing = getattr(keras.Model, "prune", None)
    if existing is not None and existing is not _model_prune:
        raise PruningError("keras.Model already has a 'prune' attribute that spa_keras did not add; "
                           "it is left as it is: call spa.prune(model, ...) instead")
    keras.Model.prune = _model_prune


def disable_model_prune() -> None:
    """Remove ``model.prune`` added by :func:`enable_model_prune` (nothing else is touched)."""
    import keras

    if keras.Model.__dict__.get("prune") is _model_prune:
        del keras.Model.prune


def _save(model, output, overwrite):
    """Save a Keras or ONNX model to ``output`` atomically (nothing when ``output`` is None)."""
    if output is None:
        return model
    from .io import save_model, save_onnx

    (save_onnx if is_onnx(model) else save_model)(model, os.fspath(output), overwrite)
    return model


class Inspection:
    """What spa_keras sees in a model: groups, widths, MACs, parameters, what is held fixed."""

    def __init__(self, view):
        self.graph = view.graph
        self.analysis = analyse(view.graph)
        self.macs = count_macs(view.graph)
        self.params = count_params(view.graph)
        self.held_fixed = held_fixed(view.graph)
        self.groups = self.analysis.groups

    def __str__(self):
        lines = [
            f"model {self.graph.name}: {len(self.graph.nodes)} ops, {self.macs:,} MACs, {self.params:,} parameters",
            f"{len(self.groups)} prunable groups ({sum(g.size for g in self.groups):,} channels):",
        ]
        for g in self.groups:
            lines.append(f"  {g.root:<40} {g.size:>6} channels across {len(g.nodes)} ops")
        if self.held_fixed:
            lines.append("held fixed:")
            for h in self.held_fixed:
                lines.append(f"  {h['layer']}: {h['reason']}")
        return "\n".join(lines)

    __repr__ = __str__

    def to_dict(self) -> dict:
        """The same as plain Python values (what ``spa-keras inspect --json`` prints)."""
        return dict(
            model=self.graph.name, ops=len(self.graph.nodes), macs=self.macs, params=self.params,
            groups=[dict(root=g.root, channels=int(g.size), ops=len(g.nodes)) for g in self.groups],
            held_fixed=self.held_fixed,
        )


def inspect(model) -> Inspection:
    """Groups, widths, MACs, parameters and what is held fixed (and why), without pruning.

    >>> import keras, spa_keras as spa
    >>> print(spa.inspect(keras.applications.MobileNet(weights=None, input_shape=(64, 64, 3))))  # doctest: +ELLIPSIS
    model mobilenet_1.00_64: ...
    """
    return Inspection(read_model(model))
