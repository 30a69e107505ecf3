"""Write a plan for a keras_hub model: the same class (a backbone, or a task such as ``LlamaCausalLM`` or
``BertTextClassifier`` around its backbone) built from its own configuration with the new widths, and
every weight sliced and assigned by its path. ``keras.models.clone_model`` cannot rebuild these models
(it fails inside keras_hub, or returns a plain Functional model that the task classes reject), and a
rebuild from edited layer configs would lose the class; the configuration route keeps ``generate()``,
``.keras`` saving and keras_hub's own loading.

keras_hub's configurations hold one width per kind for every block (and ``generate()``'s cache one
number of key/value heads and one head size), which is why the frontend ties the blocks' widths.
"""

from __future__ import annotations

import inspect

import numpy as np

from ..errors import RebuildError
from ..frontends.keras import param_name, snapshot
from ..frontends.keras.hub import BACKBONES, FAMILIES

HUB = "keras_hub."


def is_hub(model) -> bool:
    """A keras_hub backbone or task (checked by module: keras_hub is not imported)."""
    return type(model).__module__.startswith(HUB)


def _backbone(model):
    bb = getattr(model, "backbone", None)
    return bb if bb is not None and is_hub(bb) else model


def _width_fn(plan, node):
    return lambda ref: plan.width((node.inputs if ref.side == "in" else node.outputs)[ref.index])


def new_config(kg, plan, backbone) -> tuple[dict, float]:
    """The backbone configuration for the plan's widths, and ``D / D'`` (the stream's shrink factor)."""
    cfg = backbone.get_config()
    blocks = [n for n in kg.graph.nodes if n.kind == "transformer"]
    edits = []
    for node in blocks:
        edit = {}
        kg.specs[node.name].resize(edit, _width_fn(plan, node))
        edits.append(edit)
    if any(e != edits[0] for e in edits[1:]):
        raise RebuildError(f"the blocks of {backbone.name!r} would get different widths {edits[:2]}; keras_hub's "
                           "configuration has one width for all (a bug: the blocks are tied by count)")
    ratio = 1.0
    if blocks:
        fam = FAMILIES[blocks[0].attrs["family"]]
        old = cfg.get(fam.config["hidden"])
        cfg.update(edits[0])
        new = cfg.get(fam.config["hidden"])
        ratio = old / new if old and new else 1.0
        eps = fam.config.get("epsilon") or BACKBONES.get(_qualified(backbone), {}).get("epsilon")
        if eps and ratio != 1.0 and fam.norm in ("rms", "rms1p"):
            cfg[eps] = cfg[eps] * ratio  # mean(x^2) over D' channels is D/D' times larger: so is epsilon
        if fam.derived_head_size:
            hd = blocks[0].outputs[-2]
            heads = cfg.get(fam.config["heads"])
            if heads and new // heads != plan.width(hd):
                raise RebuildError(
                    f"{type(backbone).__name__} derives its head size from hidden_dim // heads: {new} // {heads} "
                    f"is not {plan.width(hd)}; keep the hidden width a multiple of the head size")
        if fam.rope and cfg.get(fam.rope):
            cfg[fam.rope] = _rope_base(cfg[fam.rope], *_kept_dims(plan, blocks), backbone)
    params = inspect.signature(type(backbone).__init__).parameters
    emb = getattr(backbone, "token_embedding", None)
    if "tie_word_embeddings" in params and "tie_word_embeddings" not in cfg and emb is not None:
        cfg["tie_word_embeddings"] = bool(getattr(emb, "tie_weights", False))  # get_config leaves it out
    return cfg, ratio


def _kept_dims(plan, blocks) -> tuple[np.ndarray, int]:
    """The head dimensions every block keeps (the same in all: one rotary base serves the model), and
    the head size they come from."""
    layouts = [plan.analysis.layouts[n.outputs[-2]] for n in blocks]
    kept = [np.nonzero(plan.keep_mask(lay))[0] for lay in layouts]
    if any(len(k) != len(kept[0]) or (k != kept[0]).any() for k in kept[1:]):
        raise RebuildError("the blocks would keep different head dimensions; one rotary embedding serves them all")
    return kept[0], len(layouts[0])


def _rope_base(base, kept: np.ndarray, hd: int, backbone):
    """The rotary base wavelength for heads that keep the dimensions ``kept`` of ``hd``.

    keras_hub's rotary embedding pairs dimension ``f`` with ``f + hd/2`` and turns the pair at the
    frequency ``base ** (-2f / hd)``. A head that keeps the pairs ``f = 0, s, 2s, …`` (``hd'/2`` of them)
    computes what it did with the base ``base ** (s * hd' / hd)``; no other choice can be written."""
    if len(kept) == hd:
        return base
    half = hd // 2
    low, high = kept[kept < half], kept[kept >= half] - half
    stride = int(low[1] - low[0]) if len(low) > 1 else 1
    if len(low) != len(high) or (low != high).any() or (low != stride * np.arange(len(low))).any():
        raise RebuildError(
            f"{type(backbone).__name__}: its rotary heads can only keep the frequency pairs (f, f + {half}) for "
            f"f = 0, s, 2s, ... (a base wavelength keras_hub can write), not the dimensions {kept.tolist()}")
    return float(base) ** (stride * len(kept) / hd)


def _qualified(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def apply_hub_plan(kg, plan, transform=None):
    """A new keras_hub model of the same class with the plan's channels removed (see the module
    docstring); ``transform(node, param, value)`` as for :func:`spa_keras.backends.keras.apply_plan`."""
    model = kg.model
    backbone = _backbone(model)
    transform = transform or (lambda node, p, value: plan.value(p, value))
    cfg, ratio = new_config(kg, plan, backbone)
    try:
        new_bb = type(backbone).from_config(cfg)
        if backbone is model:
            new = new_bb
        else:
            tcfg = model.get_config()
            tcfg["backbone"] = new_bb
            if "preprocessor" in tcfg:
                tcfg["preprocessor"] = getattr(model, "preprocessor", None)
            new = type(model).from_config(tcfg)
    except Exception as e:  # noqa: BLE001 - any failure here is keras_hub's own
        raise RebuildError(f"{type(model).__name__} {model.name!r} could not be built with the new widths "
                           f"({e}); its configuration was {cfg}") from e
    values = {}
    for node in kg.graph.nodes:
        spec = kg.specs[node.name]
        for p in node.params:
            var = kg.variables[p.key]
            if var.path in values:
                continue
            value = transform(node, p, snapshot(var))
            for axis, idx in plan.keep_indices(node, p).items():
                value = np.take(value, idx, axis=axis)
            if spec.transform is not None:
                value = spec.transform(param_name(spec, var), value, _width_fn(plan, node))
            values[var.path] = value
    scale = BACKBONES.get(_qualified(backbone), {}).get("embedding_scale")
    if scale and ratio != 1.0:  # Gemma multiplies its embeddings by sqrt(hidden_dim), taken from the config
        values[scale] = values[scale] * np.sqrt(ratio).astype(values[scale].dtype)
    old = {v.path: v for v in model.weights}
    for v in new.weights:
        value = values.get(v.path)
        if value is None:
            if v.path not in old:
                raise RebuildError(f"the rebuilt {type(model).__name__} has a weight {v.path!r} the original lacks")
            value = snapshot(old[v.path])
        if tuple(value.shape) != tuple(v.shape):
            raise RebuildError(f"{type(model).__name__}: weight {v.path} sliced to {value.shape} but the rebuilt "
                               f"model expects {tuple(v.shape)}")
        v.assign(value)
    return new  # keras_hub's tasks compile themselves with their defaults: compile again for your sampler
