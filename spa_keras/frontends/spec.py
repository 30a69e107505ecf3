"""How one call of an operation acts on channels: what a frontend says about it (framework-free)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


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
