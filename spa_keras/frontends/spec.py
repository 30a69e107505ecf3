"""What a frontend says about one call of an operation, and the pieces both frontends share
(framework-free: no Keras, no ONNX here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import NonFiniteWeightsError


@dataclass
class Spec:
    """How one call of a layer acts on channels.

    ``params`` maps a weight to ``(axes, role)`` where ``axes`` maps axis -> :class:`AxisRef`; a weight
    is named by its short name (``kernel``), the end of its path (``query/kernel``) or ``id(variable)``.
    ``resize(target, width)`` edits what a backend writes for new widths (a Keras layer config, an
    ONNX node), where ``width(ref)`` gives the new width of the tensor an :class:`AxisRef` names. ``hidden`` lists ``(name, width)`` of channel axes internal
    to the layer (attention heads, recurrent units): they become extra outputs of the node, after the
    real ones, for the params' AxisRefs to name. ``transform(name, value, width)`` may edit a sliced
    weight (attention rescales its queries when ``key_dim`` shrinks).
    """

    kind: str
    params: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    macs: list = field(default_factory=list)
    resize: Callable | None = None
    hidden: list = field(default_factory=list)
    transform: Callable | None = None


def fixed(reason: str, macs: float = 0.0) -> Spec:
    """An op held fixed (its channels are kept), with the reason the reports give and its MACs."""
    return Spec("fixed", attrs={"reason": reason}, macs=[(float(macs), [])] if macs else [])


#: element-wise functions of one tensor, by the name both Keras (``keras.ops`` classes) and ONNX use
ELEMENTWISE = frozenset({
    "Relu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "LeakyRelu", "HardSigmoid", "HardSwish", "Softplus",
    "Softsign", "Mish", "Gelu", "Erf", "Sqrt", "Exp", "Log", "Abs", "Identity", "Cast", "Floor", "Ceil",
    "Round", "Sign", "Sin", "Cos", "Reciprocal",
})  # fmt: skip


def reshape_rule(src, dst, axis: int):
    """How a reshape from ``src`` to ``dst`` (shapes without the batch axis, every size known) treats the
    channel axis ``axis`` of ``src``: ``("identity", new_axis)`` when every channel stays one slice of
    ``dst`` (the sizes before the axis multiply to the same number on both sides); ``("flatten",
    "tile")`` or ``("flatten", "repeat")`` for a reshape to one axis from a channels-last or a
    channels-first tensor; ``None`` when the channels are cut up or mixed."""
    src, dst = [int(d) for d in src], [int(d) for d in dst]
    c = src[axis]
    before = int(np.prod(src[:axis]))
    for j, d in enumerate(dst):
        if d == c and int(np.prod(dst[:j])) == before:
            return "identity", j
    if len(dst) == 1 and dst[0] == int(np.prod(src)):
        if axis == len(src) - 1:
            return "flatten", "tile"
        if before == 1:
            return "flatten", "repeat"
    return None


def _cumprod(dims):
    out = [1]
    for d in dims:
        out.append(out[-1] * int(d))
    return out


def reshape_move(src, a, dst):
    """How a row-major reshape from ``src`` to ``dst`` (full shapes, known dims) moves axis ``a``.

    ``("keep", k, outer, inner)``: the channels land on output axis ``k``, merged with ``outer``
    elements of the axes before them and ``inner`` after them (``outer == inner == 1``: the axis is
    kept as it is). ``("split", ks, parts)``: the channel axis is split into output axes ``ks`` of sizes
    ``parts``. ``None``: the channels are mixed with other axes in another way.
    """
    cs, cd = _cumprod(src), _cumprod(dst)
    if cs[-1] != cd[-1]:
        return None
    lo, hi = cs[a], cs[a + 1]
    common = set(cs) & set(cd)
    b0 = max(x for x in common if x <= lo)
    b1 = min(x for x in common if x >= hi)
    seg_src = [i for i in range(len(src)) if src[i] != 1 and cs[i] >= b0 and cs[i + 1] <= b1]
    seg_dst = [j for j in range(len(dst)) if dst[j] != 1 and cd[j] >= b0 and cd[j + 1] <= b1]
    if len(seg_dst) == 1:
        return ("keep", seg_dst[0], lo // b0, b1 // hi)
    if seg_src == [a] and len(seg_dst) > 1 and seg_dst == list(range(seg_dst[0], seg_dst[-1] + 1)):
        return ("split", seg_dst, [int(dst[j]) for j in seg_dst])
    return None


def check_finite(value, where: str, weight: str, fix: str) -> None:
    """Raise :class:`NonFiniteWeightsError` when a float ``value`` holds NaN or Inf, naming ``where``
    (the layer or node) and ``weight``; ``fix`` says what to do."""
    value = np.asarray(value)
    if (value.dtype.kind != "f" and "float" not in value.dtype.name) or np.isfinite(value).all():  # bfloat16: "V"
        return
    nan, inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
    raise NonFiniteWeightsError(
        f"{where}: {weight} holds {nan} NaN and {inf} Inf values; no criterion can rank its channels. {fix}"
    )
