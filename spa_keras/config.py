"""Every option of spa_keras, defined once: ``OPTIONS``, and ``PruningConfig`` built from it.

An :class:`Option` gives an option's name, default, help, validation, choices and how the command line
spells it. Everything else is derived from this table: :class:`PruningConfig`'s arguments, checks and
``get_config``; the keyword arguments of :func:`spa_keras.plan` and :func:`spa_keras.prune`, of
:class:`spa_keras.Pruner` and ``model.prune``, and of :class:`spa_keras.callbacks.PruningCallback`;
and the flags of the ``spa-keras`` command (the option's name in kebab case, plus the old aliases).
Adding an option is one entry here, and its use.

The module is pure validation and serialisation: it imports no TensorFlow, so that the command line
checks its arguments before loading a model. Choices come from the registries of criteria, algorithms
and data-free sources.
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import InvalidArgumentError

RECIPE, DATA, RUN = "recipe", "data", "run"
RESIDUAL_STREAM = ("hold", "slice", "rotate")


@dataclass(frozen=True)
class Option:
    """One option. ``kind``: ``recipe`` (part of a stored :class:`PruningConfig`), ``data`` (held for a
    call but never serialised: arrays, datasets, callables) or ``run`` (how one call writes its result:
    ``output``, ``overwrite``, ``report``, ``verbose``). ``check(name, value) -> value`` validates and
    normalises. ``choices()`` lists the allowed values. ``cli``: ``argparse`` keyword arguments for its
    flag (``None``: not on the command line), with ``aliases`` (other flags) and ``parse`` (the flag's
    value to the option's)."""

    name: str
    default: Any
    help: str
    check: Callable
    kind: str = RECIPE
    choices: Callable | None = None
    cli: dict | None = field(default_factory=dict)
    aliases: tuple = ()
    parse: Callable | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


# ---- validators ---------------------------------------------------------------------------------


def _number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be a number, got {value!r}")
    return value


def fraction(name, value, closed=False):
    """A number in [0, 1) (``closed``: [0, 1])."""
    v = float(_number(name, value))
    if v < 0 or (v > 1 if closed else v >= 1):
        raise InvalidArgumentError(f"{name} must be in [0, {'1]' if closed else '1)'}, got {value!r}")
    return v


def positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or int(value) != value or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def boolean(name, value):
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be True or False, got {value!r}")
    return value


def optional(check):
    return lambda name, value: None if value is None else check(name, value)


def choice(name, value, choices):
    if value not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise InvalidArgumentError(f"{name} must be one of {shown}; got {value!r}")
    return value


def target(name, value):
    """A positive number: a fraction of the model (``0.5``) or an absolute count."""
    v = _number(name, value)
    if v <= 0:
        raise InvalidArgumentError(f"{name} must be a positive number (a fraction like 0.5 or an absolute count), "
                                   f"got {value!r}")
    return float(v) if v <= 1 else v


def _latency_fraction(name, value):
    v = float(_number(name, value))
    if not 0 < v <= 1:
        raise InvalidArgumentError(f"{name} is a fraction of the original's measured latency, in (0, 1]: got {value!r}")
    return v


def _criteria():
    from .criteria import CRITERIA

    return tuple(sorted(CRITERIA))


def _criterion(name, value):
    if isinstance(value, dict):  # a serialised callable (get_config)
        import keras

        value = keras.saving.deserialize_keras_object(value)
    if callable(value):
        return value
    if not isinstance(value, str) or value.lower() not in _criteria():
        raise InvalidArgumentError(f"{name} must be one of {list(_criteria())} or a callable, got {value!r}")
    return value.lower()


def _normalizations():
    from .criteria.base import NORMALIZATIONS

    return ("auto",) + tuple(n for n in NORMALIZATIONS if n is not None) + (None,)


def _layer_names(name, value):
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        raise InvalidArgumentError(f"{name} must be a list of layer names, got {value!r}")
    names = []
    for item in value:
        n = item if isinstance(item, str) else getattr(item, "name", None)
        if not isinstance(n, str) or not n:
            raise InvalidArgumentError(f"{name}: {item!r} is neither a layer name nor a layer")
        names.append(n)
    return names or None


def _ratio_per_layer(name, value):
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{name} must be a dict {{layer name or pattern: ratio}}, got {value!r}")
    for k in value:
        if not isinstance(k, str):
            raise InvalidArgumentError(f"{name} keys must be layer names or patterns, got {k!r}")
    return {k: fraction(f"{name}[{k!r}]", v) for k, v in value.items()} or None


def _algorithms():
    from . import algorithms

    return (None,) + algorithms.ALGORITHMS


def _sources():
    from . import algorithms

    return algorithms.SOURCES


def _samples(name, value):
    if isinstance(value, (str, bytes, numbers.Number)):
        raise InvalidArgumentError(
            f"{name} must be a tf.data.Dataset, a NumPy array or a generator of input batches, got "
            f"{type(value).__name__} (load a file with spa_keras.data.load_calibration)"
        )
    return value


def _dict(name, value):
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{name} must be a dict, got {value!r}")
    return dict(value) or None


def _path(name, value):
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise InvalidArgumentError(f"{name} must be a path, got {value!r}")
    return os.fspath(value)


def _verbose(name, value):
    if value is not None and not isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be None, True or False, got {value!r}")
    return value


# ---- the command line's parsers ------------------------------------------------------------------


def _key_value(text):
    """``NAME=VALUE`` from the command line: ``(name, value)`` with VALUE read as JSON when it can be."""
    import argparse
    import json

    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def _none_word(text):
    return None if str(text).lower() in ("none", "null") else text


# ---- the table ----------------------------------------------------------------------------------

OPTIONS: tuple[Option, ...] = (
    Option("ratio", 0.5, "fraction of each group's channels to remove (0 <= ratio < 1); with global_pruning, "
           "the fraction of all prunable channels, ranked across groups", fraction, cli={"type": float}),
    Option("criterion", "l2", "how channels are ranked: l2, l1, lamp, bn_scale, fpgm, random, and with data: "
           "taylor, hessian, snip (or, in Python, a callable)", _criterion, choices=_criteria,
           cli={"type": str}),
    Option("global_pruning", False, "rank channels across groups instead of removing the same fraction of each",
           boolean, cli={"action": "store_true"}),
    Option("ignored_layers", None, "layers (names or layer objects) whose output channels are all kept",
           optional(_layer_names), cli={"action": "append", "metavar": "LAYER"}, aliases=("--ignore",)),
    Option("round_to", 1, "kept widths are rounded up to a multiple of this", positive_int, cli={"type": int}),
    Option("max_ratio", 1.0, "the largest fraction any group may lose", lambda n, v: fraction(n, v, closed=True),
           cli={"type": float}),
    Option("group_reduction", "mean", "how the scores of a channel's slices combine: mean, sum or max",
           lambda n, v: choice(n, v, _reductions()), choices=lambda: _reductions(), cli={"type": str}),
    Option("normalization", "auto", "per-group normalisation of scores before a global ranking: auto (the "
           "criterion's own: lamp for lamp, mean otherwise), mean, max, sum, standardization, lamp or none",
           lambda n, v: choice(n, v, _normalizations()), choices=_normalizations,
           cli={"type": _none_word}),
    Option("ratio_per_layer", None, "{layer name or fnmatch pattern: ratio} for the groups those layers produce",
           optional(_ratio_per_layer), cli={"action": "append", "type": _key_value, "metavar": "NAME=RATIO"},
           parse=lambda pairs: dict(pairs) if pairs else None),
    Option("target_macs", None, "reach this many MACs instead of a ratio: a fraction of the model's (0.5) or "
           "an absolute count, met within 1%", optional(target), cli={"type": float}),
    Option("target_params", None, "reach this many parameters instead of a ratio: a fraction (0.5) or a count, "
           "met within 1%", optional(target), cli={"type": float}),
    Option("target_latency", None, "reach this fraction of the original's latency on this machine instead of a "
           "ratio (0.5: half), measured in the serving path (traced, BatchNorm folded) at latency_batch_size, "
           "within 5%; per-layer timings are cached in ~/.cache/spa_keras", optional(_latency_fraction),
           cli={"type": float}),
    Option("latency_batch_size", 8, "the batch size at which target_latency is measured", positive_int,
           cli={"type": int}),
    Option("residual_stream", "hold", "the channels of a stream that normalisation layers read across (a "
           "transformer's residual stream): hold (kept, exact), slice (pruned like any channel; approximate where "
           "a norm's statistics change) or rotate (rotated onto the principal directions of calibration "
           "activations, after folding the norms' scales into their readers, and the weakest directions dropped)",
           lambda n, v: choice(n, v, RESIDUAL_STREAM), choices=lambda: RESIDUAL_STREAM, cli={"type": str}),
    Option("hidden_ratio", None, "with residual_stream slice or rotate: the fraction of the stream's width to "
           "remove (default: the stream is pruned like the other groups, by ratio or the target)",
           optional(fraction), cli={"type": float}),
    Option("steps", 1, "prune iteratively in this many steps, scoring the channels again between them",
           positive_int, cli={"type": int}),
    Option("data", None, "samples for the gradient criteria: an array, (x, y), a tf.data.Dataset or a generator "
           "(on the command line: a .npy, .npz or image folder)", optional(_samples), kind=DATA,
           cli={"metavar": "PATH"}),
    Option("loss", None, "a Keras loss (name or callable) for the gradient criteria; without targets, the "
           "output's energy", lambda n, v: v, kind=DATA, cli={"type": str}),
    Option("algorithm", None, "compensate the weights that stay: obspa (structured Optimal Brain Surgeon) or "
           "reconstruct (two-phase reconstruction); calibration_data alone means obspa",
           lambda n, v: choice(n, v, _algorithms()), choices=_algorithms,
           cli={"type": str}),
    Option("calibration_data", None, "unlabeled samples for the algorithms: an array, a tf.data.Dataset or a "
           "generator of batches (on the command line: .npy, .npz or an image folder)", optional(_samples),
           kind=DATA, cli={"metavar": "PATH"}, aliases=("--calibration",)),
    Option("calibration_samples", None, "how many samples the algorithms use (default 512 of the calibration "
           "data, 256 synthetic ones)", optional(positive_int), cli={"type": int}),
    Option("data_free", "bn", "without calibration data, where OBSPA's samples come from: bn (inputs matched to "
           "the BatchNorm statistics) or random", lambda n, v: choice(n, v, _sources()), choices=_sources,
           cli={"type": str}),
    Option("algorithm_options", None, "tuning of the algorithm (spa_keras.algorithms.OPTIONS lists them with "
           "their defaults)", optional(_dict),
           cli={"action": "append", "type": _key_value, "metavar": "NAME=VALUE"},
           parse=lambda pairs: dict(pairs) if pairs else None),
    Option("verbose", None, "None: progress bars on long work; True: also print the before/after table; "
           "False: nothing", _verbose, kind=RUN, cli=None),
    Option("output", None, "also save the slim model there (.keras, .h5 or .onnx), atomically",
           optional(_path), kind=RUN, cli={"metavar": "PATH"}),
    Option("overwrite", False, "replace an existing output or report", boolean, kind=RUN,
           cli={"action": "store_true"}, aliases=("--force",)),
    Option("report", None, "also write the per-layer report (report.txt, .json and .png in a folder, or "
           "PREFIX.txt/.json/.png)", optional(_path), kind=RUN, cli={"metavar": "PATH"}),
)


def _reductions():
    from .criteria.base import REDUCTIONS

    return REDUCTIONS


BY_NAME = {o.name: o for o in OPTIONS}


def names(*kinds) -> list:
    """The names of the options of these kinds, in table order."""
    return [o.name for o in OPTIONS if o.kind in kinds]


def defaults(*kinds) -> dict:
    return {o.name: o.default for o in OPTIONS if o.kind in kinds}


def check_names(given, allowed, where: str) -> None:
    """An error naming the first unknown keyword (with the closest known ones)."""
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise InvalidArgumentError(f"{where} has no option {key!r}.{hint} The options are listed by "
                                       "spa_keras.config.OPTIONS")


def check_run(**values) -> dict:
    """The run options (``output``, ``overwrite``, ``report``, ``verbose``) validated, defaults filled in."""
    check_names(values, names(RUN), "this call")
    return {o.name: o.check(o.name, values.get(o.name, o.default)) for o in OPTIONS if o.kind == RUN}


def signature(option_names, first=()) -> inspect.Signature:
    """An ``inspect.Signature``: the parameters ``first`` (names), then the named options as keyword
    arguments with their defaults (what ``help()`` and the docs show for the derived functions)."""
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in first]
    params.append(inspect.Parameter("config", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None))
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=BY_NAME[n].default)
               for n in option_names]
    return inspect.Signature(params)


class PruningConfig:
    """The settings of one pruning recipe, checked up front: every option of :data:`OPTIONS` whose kind
    is ``recipe`` or ``data`` (``ratio`` and ``criterion`` may be given by position).

    Every argument is validated here, with a message naming it; ``get_config()`` is a JSON-able dict
    (data left out, as ``None``) and ``from_config`` rebuilds an equal config. The options, their
    defaults and meanings are listed in ``docs/options.md`` (made from :data:`OPTIONS`).

    >>> import spa_keras as spa
    >>> cfg = spa.PruningConfig(ratio=0.3, criterion="l1", round_to=8)
    >>> spa.PruningConfig.from_config(cfg.get_config()) == cfg
    True
    >>> spa.PruningConfig(ratio=1.5)
    Traceback (most recent call last):
    ...
    spa_keras.errors.InvalidArgumentError: ratio must be in [0, 1), got 1.5
    """

    def __init__(self, *args, **kwargs):
        if len(args) > 2:
            raise InvalidArgumentError("PruningConfig takes ratio and criterion by position, the rest by keyword")
        for name, value in zip(("ratio", "criterion"), args):
            if name in kwargs:
                raise InvalidArgumentError(f"PruningConfig got {name} twice")
            kwargs[name] = value
        check_names(kwargs, _fields(), "PruningConfig")
        for name in _fields():
            o = BY_NAME[name]
            setattr(self, name, o.check(name, kwargs.get(name, o.default)))
        if sum(t is not None for t in (self.target_macs, self.target_params, self.target_latency)) > 1:
            raise InvalidArgumentError("give only one of target_macs, target_params and target_latency (not both)")
        if self.hidden_ratio is not None and self.residual_stream == "hold":
            raise InvalidArgumentError("hidden_ratio removes width from the residual stream: set residual_stream="
                                       "'slice' or 'rotate' (with residual_stream='hold' the stream keeps its width)")
        if self.residual_stream == "rotate" and self.calibration_data is None:
            raise InvalidArgumentError("residual_stream='rotate' finds the stream's principal directions in "
                                       "calibration activations: pass calibration_data=... (a few hundred samples)")
        if self.algorithm_options:
            if self.algorithm is None and self.calibration_data is None:
                raise InvalidArgumentError("algorithm_options are given but no algorithm: set algorithm='obspa' "
                                           "or 'reconstruct'")
            from . import algorithms

            algorithms.check(self.algorithm or "obspa", self.algorithm_options)

    def get_config(self) -> dict:
        """A JSON-able dict of the settings; data (``data``, ``loss``, ``calibration_data``) is only
        needed for one call and is stored as ``None``. A callable criterion is stored with
        ``keras.saving.serialize_keras_object`` (register it to load it elsewhere)."""
        config = {k: getattr(self, k) for k in _fields()}
        if callable(self.criterion):
            import keras

            config["criterion"] = keras.saving.serialize_keras_object(self.criterion)
        for k in names(DATA):
            config[k] = None
        for k, v in config.items():
            if isinstance(v, (list, dict)):
                config[k] = type(v)(v)
        return config

    @classmethod
    def from_config(cls, config: dict) -> "PruningConfig":
        """The config that ``get_config`` described."""
        if not isinstance(config, dict):
            raise InvalidArgumentError(f"from_config needs the dict get_config returned, got {type(config).__name__}")
        return cls(**config)

    def kwargs(self) -> dict:
        """Every setting, by name (what :func:`spa_keras.prune` takes besides the run options)."""
        return {k: getattr(self, k) for k in _fields()}

    def replace(self, **changes) -> "PruningConfig":
        """A copy with some settings changed (validated again).

        >>> import spa_keras as spa
        >>> spa.PruningConfig(ratio=0.5).replace(ratio=0.25).ratio
        0.25
        """
        return type(self)(**{**self.kwargs(), **changes})

    def __eq__(self, other):
        if not isinstance(other, PruningConfig):
            return NotImplemented
        return all(_same(getattr(self, k), getattr(other, k)) for k in _fields())

    def __repr__(self):
        shown = []
        for k in _fields():
            v = getattr(self, k)
            if BY_NAME[k].kind == DATA:
                if v is not None:
                    shown.append(f"{k}=<{type(v).__name__}>")
            elif not _same(v, BY_NAME[k].default):
                shown.append(f"{k}={getattr(v, '__name__', v)!r}" if callable(v) else f"{k}={v!r}")
        return f"PruningConfig({', '.join(shown)})"


def _fields():
    return names(RECIPE, DATA)


PruningConfig.__signature__ = inspect.Signature(
    [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=BY_NAME[n].default)
     for n in ("ratio", "criterion")]
    + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=BY_NAME[n].default)
       for n in _fields() if n not in ("ratio", "criterion")])


def _same(a, b):
    if a is b:
        return True
    if type(a).__module__.startswith(("numpy", "tensorflow")) or type(b).__module__.startswith(("numpy", "tensorflow")):
        return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - uncomparable values are different
        return False


def resolve(config=None, where: str = "spa.plan", **kwargs) -> PruningConfig:
    """A :class:`PruningConfig` from an optional config and keyword overrides (validated)."""
    check_names(kwargs, _fields(), where)
    if isinstance(config, dict):
        config = PruningConfig.from_config(config)
    if config is None:
        return PruningConfig(**kwargs)
    if not isinstance(config, PruningConfig):
        raise InvalidArgumentError(f"config must be a spa.PruningConfig or its get_config() dict, got "
                                   f"{type(config).__name__}")
    return config.replace(**kwargs) if kwargs else config


# ---- derived: the command line and the options table ----------------------------------------------


def add_arguments(group, kinds=(RECIPE, DATA)) -> None:
    """Add a flag for every option of these kinds to an ``argparse`` parser or group."""
    for o in OPTIONS:
        if o.kind not in kinds or o.cli is None:
            continue
        extra = dict(o.cli)
        if o.choices is not None:
            extra["choices"] = [c for c in o.choices() if c is not None or extra.get("type") is not str]
        default = [] if extra.get("action") == "append" else o.default
        group.add_argument(o.flag, *o.aliases, dest=o.name, default=default, help=f"{o.help} (default: {o.default})",
                           **extra)


def from_arguments(args, kinds=(RECIPE,)) -> dict:
    """The option values an ``argparse`` namespace holds for these kinds (parsed, not validated)."""
    out = {}
    for o in OPTIONS:
        if o.kind in kinds and o.cli is not None and hasattr(args, o.name):
            value = getattr(args, o.name)
            out[o.name] = o.parse(value) if o.parse else (value if value != [] else None)
    return out


def options_page() -> str:
    """``docs/options.md``: a short introduction and :func:`markdown_table`."""
    return (
        "# Options\n\n"
        "Every option of `spa.prune`, `spa.plan`, `spa.PruningConfig`, `spa.Pruner`, `model.prune`,\n"
        "`spa.callbacks.PruningCallback` and the `spa-keras` command, with its default. They are defined once, in\n"
        "`spa_keras.config.OPTIONS`; this page is made from it (`python -m spa_keras.config > docs/options.md`),\n"
        "and a test keeps the two equal. Kinds: `recipe` options are part of a stored `PruningConfig`\n"
        "(`get_config()`); `data` options are held for one call and never saved; `run` options say how one call\n"
        "writes its result.\n\n" + markdown_table()
    )


def markdown_table() -> str:
    """The options as a Markdown table (``docs/options.md`` holds it; a test keeps the two equal)."""
    rows = ["| option | default | kind | command line | meaning |", "|---|---|---|---|---|"]
    for o in OPTIONS:
        flags = "" if o.cli is None else ", ".join(f"`{f}`" for f in (o.flag,) + o.aliases)
        rows.append(f"| `{o.name}` | `{o.default!r}` | {o.kind} | {flags} | {o.help} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(options_page(), end="")

__all__ = ["OPTIONS", "Option", "PruningConfig", "resolve", "add_arguments", "from_arguments", "markdown_table"]
