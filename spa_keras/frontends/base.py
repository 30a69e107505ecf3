"""The frontend interface: what the algorithms may know of a model, whatever framework it came from.

A frontend reads a model into the standard channel graph and answers, for that graph, the questions
the post-training algorithms ask: the model's inputs, a consumer written as a matrix
(:class:`LinearView`), a BatchNorm's statistics (:class:`BatchNormView`), the values of any tensors for
a batch of inputs (:meth:`ModelView.run`), parameters by key. The algorithms never see a layer object,
an ONNX node or a weight's name: this is what lets OBSPA run on a Keras model and on an ONNX file alike.
Nothing here imports a framework.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgumentError
from ..graph import Graph, Node, Param


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, its shape without the batch axis (None for unknown sizes), dtype."""

    name: str
    shape: tuple
    dtype: str


@dataclass
class LinearView:
    """A layer that reads channels through a kernel, as a matrix.

    ``kind`` is ``"dense"`` (``y = x W + b`` over the last axis of any rank) or ``"conv"`` (a
    convolution with ``groups == 1``). The kernel in its *canonical* layout is
    ``np.transpose(native, kernel_perm)``: ``(*kernel_size, c_in, c_out)`` (``(c_in, c_out)`` for dense);
    ``kernel_perm=None`` means the native layout is canonical. ``channels_first`` says that the input
    activations hold their channels on axis 1 (NCHW); canonical activations are channels-last.
    ``padding`` is ``"same"``, ``"valid"`` or explicit ``((before, after), ...)`` per spatial axis.
    ``source`` is what :meth:`ModelView.run` is asked for to get the layer's input: a graph tensor id,
    or a *probe* ``("probe", node name, name)`` for an activation inside a node (a transformer block's
    attention context or MLP units). ``row_axes``: a dense kernel whose leading axes together read the
    input (an attention output projection ``(heads, head size, D)`` reads ``heads × head size``
    features); its canonical matrix is the kernel with those axes flattened. ``per_token``: the rows of
    the input are a sequence's positions, which a ``padding_mask`` input weights.
    """

    node: Node
    kernel: Param
    bias: Param | None
    kind: str
    source: int
    kernel_size: tuple = ()
    strides: tuple = ()
    dilation: tuple = ()
    padding: object = "valid"
    kernel_perm: tuple | None = None
    channels_first: bool = False
    row_axes: tuple | None = None
    per_token: bool = False

    def _row_perm(self):
        rows = tuple(self.row_axes)
        return rows + tuple(a for a in range(len(self.kernel.shape)) if a not in rows)

    def canonical(self, kernel: np.ndarray) -> np.ndarray:
        """The kernel in the canonical layout (with ``row_axes``: those axes flattened into rows, the
        others into columns)."""
        if self.row_axes is not None:
            perm = self._row_perm()
            n = int(np.prod([kernel.shape[a] for a in self.row_axes]))
            return np.transpose(kernel, perm).reshape(n, -1)
        return kernel if self.kernel_perm is None else np.transpose(kernel, self.kernel_perm)

    def native(self, kernel: np.ndarray) -> np.ndarray:
        """A canonical kernel back in the layer's own layout."""
        if self.row_axes is not None:
            perm = self._row_perm()
            return np.transpose(kernel.reshape([self.kernel.shape[a] for a in perm]), np.argsort(perm))
        return kernel if self.kernel_perm is None else np.transpose(kernel, np.argsort(self.kernel_perm))


@dataclass
class BatchNormView:
    """A batch normalisation over the channels of ``source``: ``(x - mean) / sqrt(var + epsilon) * gamma
    + beta``, with its statistics' parameters (``mean`` may absorb a constant shift of its input)."""

    node: Node
    source: int
    mean: Param
    var: Param
    epsilon: float
    channels_first: bool = False


class ModelView:
    """The interface every frontend's graph object implements for the algorithms.

    ``traceable``: :meth:`run` may be called inside ``tf.function`` and ``tf.GradientTape`` (a Keras
    model); an ONNX model runs in onnxruntime and returns NumPy arrays. ``trainable``: the frontend can
    hand out variables to train (:meth:`variable`).
    """

    graph: Graph
    traceable: bool = False
    trainable: bool = False
    kind: str = "model"

    def input_specs(self) -> list:
        """One :class:`InputSpec` per model input, in order."""
        raise NotImplementedError

    def weight(self, key) -> np.ndarray:
        """A parameter's value (by its graph key) as a NumPy array."""
        raise NotImplementedError

    def linear(self, node: Node) -> LinearView | None:
        """``node`` as a :class:`LinearView`, or None when it is not a layer the algorithms can re-fit."""
        return None

    def linears(self, node: Node) -> list:
        """Every :class:`LinearView` of ``node``: the node itself, or the layers inside it (a transformer
        block's attention output and MLP down projections, read through probes)."""
        view = self.linear(node)
        return [] if view is None else [view]

    def batchnorm(self, node: Node) -> BatchNormView | None:
        """``node`` as a :class:`BatchNormView`, or None when it is not a batch normalisation."""
        return None

    def run(self, inputs, keep=None, training: bool = False) -> dict:
        """``{graph tensor id: value}`` of the tensors in ``keep`` (all when None) for a batch of
        ``inputs`` (one array per model input); a probe in ``keep`` (see :class:`LinearView`) gets the
        activation it names. ``training`` runs batch normalisations on the batch's statistics."""
        raise NotImplementedError

    def variable(self, key):
        """The trainable variable behind a parameter key (frontends with ``trainable``)."""
        raise InvalidArgumentError(f"{self.kind} models cannot be trained by spa_keras: convert them to Keras "
                                   "with spa.from_onnx first")

    def is_trainable(self, key) -> bool:
        return False

    def assign(self, key, value) -> None:
        """Overwrite a parameter of this model (its shape stays)."""
        raise InvalidArgumentError(f"{self.kind} models cannot be changed in place")

    def copy(self) -> "ModelView":
        """A view of an independent full-width copy of the model (same node names, same parameter order)."""
        raise InvalidArgumentError(f"{self.kind} models cannot be copied for training: convert them to Keras "
                                   "with spa.from_onnx first")

    def gradient_stats(self, data, loss=None):
        """``(gradient(key), fisher(key))``: the mean gradient and the mean squared gradient of the loss
        over ``data`` per parameter key (frontends that can differentiate)."""
        raise InvalidArgumentError(f"gradient criteria need a differentiable model; {self.kind} models are not: "
                                   "convert with spa.from_onnx first")
