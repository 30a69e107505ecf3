"""The public face: ``prune``, ``plan``, ``apply``, ``inspect``, ``Pruner``, and the opt-in ``model.prune``."""

from __future__ import annotations

import difflib
import fnmatch
import math
import os
import warnings

import numpy as np

from . import criteria as _criteria
from .backends.keras import apply_plan
from .errors import InvalidArgumentError, OutputExistsError
from .frontends.keras import KerasGraph, from_keras
from .frontends.onnx import OnnxGraph, from_onnx_model
from .graph import analyse
from .metrics import count_macs, count_params
from .plan import PruningPlan, select
from .criteria import normalize
from .report import Report, held_fixed
from .config import PruningConfig


def _resolve_ignored(kg: KerasGraph, ignored_layers) -> set:
    if not ignored_layers:
        return set()
    names = {}
    for node in kg.graph.nodes:
        names.setdefault(node.layer, []).append(node.name)
        layer = node.ref[0] if isinstance(node.ref, tuple) else None
        if layer is not None:
            names.setdefault(id(layer), []).append(node.name)
    out = set()
    for item in ignored_layers:
        key = item if isinstance(item, str) else id(item)
        if key not in names:
            label = item if isinstance(item, str) else getattr(item, "name", repr(item))
            close = difflib.get_close_matches(str(label), [n for n in names if isinstance(n, str)], n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise InvalidArgumentError(
                f"ignored_layers names {label!r}, which is not a layer of model {kg.graph.name!r}.{hint}"
            )
        out.update(names[key])
    return out


def _resolve_ratio_per_layer(kg: KerasGraph, analysis, ratio_per_layer) -> dict:
    """``{group id: ratio}`` from ``{layer name or fnmatch pattern: ratio}`` (first matching key wins)."""
    if not ratio_per_layer:
        return {}
    layer_of = {n.name: n.layer for n in kg.graph.nodes}
    out, used = {}, set()
    for g in analysis.groups:
        layers = [layer_of.get(name, name) for name in g.nodes]
        for key, r in ratio_per_layer.items():
            if any(fnmatch.fnmatchcase(layer, key) for layer in layers):
                out[g.id] = r
                used.add(key)
                break
    unknown = [k for k in ratio_per_layer if k not in used and not any(fnmatch.fnmatchcase(n.layer, k) for n in kg.graph.nodes)]
    if unknown:
        raise InvalidArgumentError(
            f"ratio_per_layer names {unknown[0]!r}, which matches no layer of model {kg.graph.name!r}"
        )
    return out


def _target_value(name, value, base) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise InvalidArgumentError(f"{name} must be positive: a fraction of the model (0.5) or an absolute count")
    target = v * base if v <= 1 else v
    if target > base:
        raise InvalidArgumentError(f"{name}={value!r} is more than the model has ({base:,})")
    return target


def _search(analysis, scores, measure, target, **options) -> PruningPlan:
    """The plan that lands closest to ``target``: bisection on the ratio (the measure falls as the ratio
    grows), then, where one ratio step moves many groups at once (a DenseNet's 32-channel groups), the
    classes between the two bracketing plans are added one by one, least important first."""
    lo, hi = 0.0, 0.999
    above = below = best = None
    for _ in range(40):
        mid = (lo + hi) / 2
        p = select(analysis, scores, ratio=mid, **options)
        value = measure(p)
        if best is None or abs(value - target) < abs(best[1] - target):
            best = (p, value)
        if abs(value - target) <= 1e-4 * target:
            break
        if value > target:
            lo, above = mid, p
        else:
            hi, below = mid, p
    if abs(best[1] - target) > 1e-3 * target and above is not None and below is not None and options.get("round_to", 1) == 1:
        extra = np.nonzero(below.removed_classes & ~above.removed_classes)[0]
        extra = extra[np.argsort(normalize(scores, analysis, "mean")[extra], kind="stable")]
        k_lo, k_hi = 0, len(extra)
        while k_lo < k_hi:
            k = (k_lo + k_hi) // 2
            removed = above.removed_classes.copy()
            removed[extra[:k]] = True
            p = PruningPlan(analysis, removed, above.settings)
            value = measure(p)
            if abs(value - target) < abs(best[1] - target):
                best = (p, value)
            k_lo, k_hi = (k + 1, k_hi) if value > target else (k_lo, k)
    if abs(best[1] - target) > 0.01 * target and above is not None and options.get("round_to", 1) == 1:
        best = _fill(analysis, scores, measure, target, above, best, options.get("max_ratio", 1.0))
    p, value = best
    if abs(value - target) > 0.01 * target:
        warnings.warn(
            f"the target ({target:,.0f}) could not be reached within 1%: the closest plan has {value:,.0f} "
            "(the groups are too coarse, or max_ratio/ignored_layers hold too much)"
        )
    return p


def _fill(analysis, scores, measure, target, above, best, max_ratio, tries: int = 400):
    """Last resort when single units are coarse (an attention head): starting from the plan just above
    the target, add the least important classes one at a time while the result stays above
    ``target - 1%``, keeping every producer non-empty and every group within ``max_ratio``."""
    removed = above.removed_classes.copy()
    norm = normalize(scores, analysis, "mean")
    candidates = np.nonzero(~removed & np.isfinite(norm))[0]
    candidates = candidates[candidates != analysis.fixed_class]
    candidates = candidates[np.argsort(norm[candidates], kind="stable")][:tries]
    sizes = np.array([g.size for g in analysis.groups])
    for c in candidates:
        trial = removed.copy()
        trial[c] = True
        lost = np.bincount(analysis.space_of[trial[analysis.class_of]], minlength=len(analysis.space_sizes))
        g = analysis.group_of_class[c]
        if np.any(lost[1:] >= analysis.space_sizes[1:]) or trial[analysis.groups[g].classes].sum() > max_ratio * sizes[g]:
            continue
        p = PruningPlan(analysis, trial, above.settings)
        value = measure(p)
        if value < target * 0.99:
            continue
        removed = trial
        if abs(value - target) < abs(best[1] - target):
            best = (p, value)
        if abs(value - target) <= 0.01 * target:
            break
    return best


def plan(
    model,
    ratio: float = 0.5,
    criterion="l2",
    global_pruning: bool = False,
    ignored_layers=None,
    round_to: int = 1,
    max_ratio: float = 1.0,
    group_reduction: str = "mean",
    normalization="mean",
    ratio_per_layer: dict | None = None,
    target_macs: float | None = None,
    target_params: float | None = None,
    data=None,
    loss=None,
    prune_layer_norm: bool = False,
    algorithm: str | None = None,
    calibration_data=None,
    calibration_samples: int | None = None,
    data_free: str = "bn",
    algorithm_options: dict | None = None,
    verbose: bool | None = None,
) -> PruningPlan:
    """Decide which channels to remove, without changing anything.

    Args:
        model: a Functional or Sequential ``keras.Model`` (nested models and shared layers included).
        ratio: fraction of each group's channels to remove (``0 <= ratio < 1``); with
            ``global_pruning`` the fraction of all prunable channels, ranked across groups.
        criterion: a name from ``spa_keras.criteria.CRITERIA`` (``l2``, ``l1``, ``bn_scale``, ``lamp``,
            ``fpgm``, ``random``, and with ``data``: ``taylor``, ``hessian``, ``snip``) or a callable.
        ignored_layers: layer names or layers whose output channels are all kept.
        round_to: kept widths are rounded up to a multiple of this.
        max_ratio: no group loses more than this fraction (local and global).
        group_reduction: how the scores of a channel's slices combine: ``mean``, ``sum``, ``max``.
        normalization: per-group normalisation of scores before global ranking.
        ratio_per_layer: ``{layer name or pattern: ratio}`` for the groups those layers produce.
        target_macs / target_params: instead of ``ratio``, the MACs or parameters to reach, as a
            fraction of the model's (``0.5``) or an absolute number; the ratio is searched so that the
            result lands within 1% (``plan.settings["reached"]`` says where it landed).
        data, loss: samples (array, ``(x, y)``, ``tf.data.Dataset``, generator) and an optional Keras
            loss for the gradient criteria.
        prune_layer_norm: prune the channels of LayerNorm-coupled streams too (a ViT's residual
            stream); approximate, since LayerNorm's statistics change: fine-tune afterwards.
        algorithm: ``None`` (remove the channels the criterion ranks lowest, nothing else changes),
            ``"obspa"`` (channels chosen by their group's Optimal-Brain-Surgeon loss and the weights
            that stay compensated; with no data it uses synthetic inputs) or ``"reconstruct"``
            (channels chosen by ``criterion``, then the two-phase reconstruction on the samples).
            Given ``calibration_data`` and no algorithm, ``"obspa"``. Keras models only.
        calibration_data: unlabeled samples (NumPy array, ``tf.data.Dataset``, generator of batches;
            labels are ignored) shaped like the model's input.
        calibration_samples: how many samples to use (default 512 of the calibration data, 256
            synthetic ones).
        data_free: without calibration data, where the samples come from: ``"bn"`` (inputs optimised
            to match the BatchNorm statistics) or ``"random"`` (standard-normal inputs).
        algorithm_options: tuning of the algorithm (``spa_keras.algorithms.OPTIONS`` lists them with
            their defaults: OBSPA's ``damp``, ``batch_size``, ``strategy``; the reconstruction's
            ``epochs``, ``learning_rate``, ``decay``). Under ``strategy.scope()`` OBSPA sums its
            Hessians across the strategy's replicas.
        verbose: progress bars for the algorithms' long work (shown unless ``False``).

    >>> import keras, spa_keras as spa
    >>> m = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3))
    >>> p = spa.plan(m, target_macs=0.5)
    >>> abs(p.settings["reached"] / p.settings["base"] - 0.5) < 0.01
    True
    """
    kg = read_model(model, prune_layer_norm)
    analysis = analyse(kg.graph, fixed_nodes=_resolve_ignored(kg, ignored_layers))
    if algorithm is None and calibration_data is not None:
        algorithm = "obspa"
    post = None
    if algorithm is not None:
        from .algorithms import PostTraining

        post = PostTraining(algorithm, kg, calibration_data, calibration_samples, data_free, algorithm_options,
                            verbose)
    score_fn = _criteria.get(criterion)
    context = {}
    need = set(getattr(score_fn, "needs", ()))
    if need:
        if data is None:
            raise InvalidArgumentError(f"criterion {criterion!r} needs data: pass data=... to spa.plan/prune")
        if not isinstance(kg, KerasGraph):
            raise InvalidArgumentError(f"criterion {criterion!r} needs gradients: it works on Keras models "
                                       "(convert with spa.from_onnx first)")
        context["gradient"], context["fisher"] = kg.gradient_stats(data, loss)
    scores = score_fn(analysis, kg.weight, reduction=group_reduction, normalization=normalization, **context)
    if post is not None:
        scores = post.scores(analysis, scores)
    options = dict(
        global_pruning=global_pruning,
        max_ratio=max_ratio,
        round_to=round_to,
        group_ratios=_resolve_ratio_per_layer(kg, analysis, ratio_per_layer),
    )
    if target_macs is not None and target_params is not None:
        raise InvalidArgumentError("give target_macs or target_params, not both")
    if target_macs is not None or target_params is not None:
        counter, name, value = (
            (count_macs, "target_macs", target_macs) if target_macs is not None else (count_params, "target_params", target_params)
        )
        base = counter(kg.graph)
        target = _target_value(name, value, base)
        result = _search(analysis, scores, lambda p: counter(kg.graph, p), target, **options)
        result.settings.update(target=target, base=base, reached=counter(kg.graph, result), measure=name[7:])
    else:
        result = select(analysis, scores, ratio, **options)
    result.source = kg
    result.settings["criterion"] = criterion if isinstance(criterion, str) else getattr(criterion, "__name__", "custom")
    if post is not None:
        post.finish(result)
    return result


def _is_onnx(model) -> bool:
    """An ``onnx.ModelProto`` (checked by module, so that ONNX is not imported for Keras models)."""
    return type(model).__module__.startswith("onnx")


def read_model(model, prune_layer_norm: bool = False):
    """The standard channel graph of a ``keras.Model``, a ``.keras``/``.h5`` path, an ``onnx.ModelProto``
    or a ``.onnx`` path (a graph already read passes through)."""
    if isinstance(model, KerasGraph):
        if model.options.get("prune_layer_norm", False) == prune_layer_norm:
            return model
        model = model.model  # read again with the other option
    if isinstance(model, OnnxGraph):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if path.endswith(".onnx"):
            return from_onnx_model(path)
        from .io import load_model

        model = load_model(path)
    if _is_onnx(model):
        return from_onnx_model(model)
    return from_keras(model, prune_layer_norm=prune_layer_norm)


def apply(plan_: PruningPlan):
    """Write a plan out: a new, smaller ``keras.Model`` (or ``onnx.ModelProto`` for an ONNX model);
    the original is not changed."""
    kg = getattr(plan_, "source", None)
    if kg is None:
        raise InvalidArgumentError("this plan was not made by spa.plan; there is no model to apply it to")
    if isinstance(kg, OnnxGraph):
        from .backends.onnx import apply_onnx_plan

        return apply_onnx_plan(kg, plan_)
    if plan_.builder is not None:
        return plan_.builder(kg, plan_)
    return apply_plan(kg, plan_, transform=plan_.compensation)


def prune(model, ratio: float = 0.5, criterion="l2", steps: int = 1, verbose: bool | None = None, output=None,
          overwrite: bool = False, report=None, **kwargs):
    """Remove channels for real: a new, smaller ``keras.Model`` with the same inputs and outputs (an
    ``onnx.ModelProto`` when given an ONNX model or a ``.onnx`` path).

    Takes every argument of :func:`plan`. ``output``: also save the result there (``.keras``, ``.h5``
    or ``.onnx``), atomically; an existing file is kept unless ``overwrite=True``. ``steps`` > 1 prunes iteratively: the MACs (or parameters,
    with ``target_params``) fall in equal steps to where one-shot pruning would land, and the
    channels are scored again on the slimmer model between steps. ``verbose``: ``True`` also prints
    the before/after table, ``False`` hides the algorithms' progress bars too (``None``: bars only). ``report``: also write the per-layer report there (see :meth:`Report.save`:
    ``report.txt``, ``report.json`` and ``report.png`` in a folder, or ``PREFIX.txt/.json/.png``).

    >>> import keras, spa_keras as spa
    >>> m = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
    >>> slim = spa.prune(m, ratio=0.5)
    >>> slim.count_params() < m.count_params()
    True
    """
    return _prune(model, ratio, criterion, steps, verbose, output, overwrite, report, **kwargs)[0]


def _prune(model, ratio=0.5, criterion="l2", steps=1, verbose=None, output=None, overwrite=False, report=None,
           **kwargs):
    """:func:`prune`, returning ``(slim, report)`` (the report only when asked for or verbose)."""
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise InvalidArgumentError(f"steps must be a positive integer, got {steps!r}")
    if output is not None and os.path.exists(os.fspath(output)) and not overwrite:  # before any work
        raise OutputExistsError(f"{os.fspath(output)!r} exists; pass overwrite=True (--force) to replace it")
    if report is not None:
        Report.check_paths(report, overwrite)
    kwargs.setdefault("verbose", None if verbose is None else bool(verbose))
    p = plan(model, ratio=ratio, criterion=criterion, **kwargs)
    rep = None
    if steps > 1:
        by_params = kwargs.get("target_params") is not None
        counter = count_params if by_params else count_macs
        key = "target_params" if by_params else "target_macs"
        base, final = counter(p.graph), counter(p.graph, p)
        options = {k: v for k, v in kwargs.items() if k not in ("target_macs", "target_params", "ignored_layers")}
        ignored = kwargs.get("ignored_layers")
        current = model
        for i in range(1, steps + 1):
            goal = base - (base - final) * i / steps
            step_plan = plan(current, criterion=criterion, ignored_layers=_names(ignored), **{key: goal}, **options)
            current = apply(step_plan)
        if verbose:
            print(f"{steps} steps: {counter.__name__[6:]} {base:,} -> {counter(step_plan.graph, step_plan):,}")
        slim = current
        if report is not None or verbose:
            rep = Report.from_graphs(p.graph, read_model(slim).graph)
    else:
        slim = apply(p)
        if report is not None or verbose:
            rep = Report.from_plan(p)
        if verbose:
            print(rep.table())
    _save(slim, output, overwrite)
    if report is not None:
        rep.save(report, overwrite=overwrite)
    return slim, rep


class Pruner:
    """A stored, reusable pruning recipe: a :class:`PruningConfig` and the means to apply it.

    ``Pruner(config)`` or ``Pruner(ratio=0.3, ...)`` (the arguments of :class:`PruningConfig`,
    validated at once); ``pruner.plan(model)``, ``pruner.prune(model)`` (or ``pruner(model)``).
    After a prune, ``pruner.report`` is the :class:`Report` of what was removed. It round-trips
    through ``get_config``/``from_config`` like a Keras object.

    >>> import keras, spa_keras as spa
    >>> pruner = spa.Pruner(ratio=0.5, round_to=4)
    >>> m = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10)
    >>> slim = pruner.prune(m)
    >>> pruner.report.macs_after < pruner.report.macs_before
    True
    >>> spa.Pruner.from_config(pruner.get_config()).config == pruner.config
    True
    """

    def __init__(self, config: "PruningConfig | dict | None" = None, **kwargs):
        if isinstance(config, dict):
            config = PruningConfig.from_config(config)
        if config is None:
            config = PruningConfig(**kwargs)
        elif not isinstance(config, PruningConfig):
            raise InvalidArgumentError(f"config must be a spa.PruningConfig or its get_config() dict, got "
                                       f"{type(config).__name__}")
        elif kwargs:
            config = config.replace(**kwargs)
        self.config = config
        self.report = None

    def plan(self, model) -> PruningPlan:
        """The plan this recipe makes for ``model`` (nothing is changed)."""
        return plan(model, **self.config.plan_kwargs())

    def prune(self, model, output=None, overwrite: bool = False, report=None, verbose: bool = False):
        """The slim model (see :func:`prune` for ``output``, ``overwrite``, ``report``, ``verbose``)."""
        kwargs = self.config.prune_kwargs()
        slim, rep = _prune(model, output=output, overwrite=overwrite, report=report, verbose=verbose, **kwargs)
        self.report = rep if rep is not None else _report_of(model, slim, kwargs)
        return slim

    __call__ = prune

    def get_config(self) -> dict:
        return self.config.get_config()

    @classmethod
    def from_config(cls, config: dict) -> "Pruner":
        return cls(PruningConfig.from_config(config))

    def __repr__(self):
        return f"Pruner({self.config!r})"


def _report_of(model, slim, kwargs) -> Report:
    """The report of a prune that did not make one (compares the two models layer by layer)."""
    before = read_model(model, kwargs.get("prune_layer_norm", False)).graph
    return Report.from_graphs(before, read_model(slim).graph)


def _model_prune(self, method=None, config=None, *, output=None, overwrite=False, report=None, verbose=False,
                 **kwargs):
    """``model.prune(method=None, config=None, **kwargs)``: this model pruned, as a new ``keras.Model``.

    Shaped like Keras' ``model.quantize(mode, config=...)``: ``method`` is a criterion (``"l2"``,
    ``"taylor"``, ...) or an algorithm (``"obspa"``, ``"reconstruct"``); ``config`` a
    :class:`PruningConfig`; keyword arguments override its settings. Unlike ``quantize``, the model
    itself is not changed (pruning changes its architecture): the slim model is returned.
    Available after :func:`enable_model_prune`.
    """
    from .config import ALGORITHMS

    if method is not None:
        kwargs["algorithm" if method in ALGORITHMS else "criterion"] = method
    return Pruner(config, **kwargs).prune(self, output=output, overwrite=overwrite, report=report, verbose=verbose)


def enable_model_prune() -> None:
    """Opt in to ``model.prune(...)`` on every ``keras.Model`` (Functional and Sequential).

    ``model.prune(method=None, config=None, **kwargs)`` returns the slim model, exactly as
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
    if _is_onnx(model):
        from .backends.onnx import save_onnx

        save_onnx(model, os.fspath(output), overwrite)
    else:
        from .io import save_model

        save_model(model, os.fspath(output), overwrite)
    return model


def _names(layers):
    """Layer objects become names (the model changes between steps; names stay)."""
    if not layers:
        return layers
    return [x if isinstance(x, str) else x.name for x in layers]


class Inspection:
    """What spa_keras sees in a model: groups, widths, MACs, parameters, what is held fixed."""

    def __init__(self, kg):
        self.graph = kg.graph
        self.analysis = analyse(kg.graph)
        self.macs = count_macs(kg.graph)
        self.params = count_params(kg.graph)
        self.held_fixed = held_fixed(kg.graph)
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
