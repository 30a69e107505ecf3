"""Registry entries for keras_hub's transformer blocks, norms and embeddings (keras_hub need not be
installed: the classes are named by their module path, and nothing here imports keras_hub).

A keras_hub backbone is a Functional model whose transformer blocks are subclassed layers with a
hand-written ``call()``. Each block class becomes one node of kind ``transformer``
(:func:`spa_keras.graph.rules.rule_transformer`) whose entry says how channels flow inside it: the
residual stream (the block's input and output, read by the projections and norms, written by the
attention output and MLP down projections), the query heads and key/value heads, the head size and
the MLP width (gate and up projections together). What a block's weights are called, how its
configuration keys follow the new widths, and which families derive the head size from the hidden
width are written here once, in :data:`FAMILIES`.

keras_hub's configurations have one width for every block (and the ``generate()`` cache one number of
key/value heads and one head size), so the blocks of a model are tied by count: they keep equal
widths, whichever channels each one loses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...graph import BIAS, IN, OUT, STAT, WEIGHT, AxisRef
from ..spec import Spec, fixed
from .layers import keep_query_scale
from .registry import Call, register

HUB = "keras_hub.src."


@dataclass(frozen=True)
class Family:
    """What one block class looks like. Weight names are relative to the block; ``q``/``k``/``v``/``o``
    the attention projections (``heads_first``: Gemma's ``(H, D, hd)`` query kernel), ``mlp_in`` the
    projections that write the MLP units (gate and up), ``mlp_out`` the down projection, ``norms`` the
    norm weights that read the stream. ``config``: backbone configuration keys for query heads, key/value
    heads, MLP width (times ``mlp_factor``: Gemma's ``intermediate_dim`` is twice its width) and hidden
    width. ``derived_head_size``: the head size is ``hidden_dim // heads`` (heads are held, since fewer
    heads at the same hidden width would change it). ``norm``: ``"rms"``, ``"rms1p"`` (``x * (1 +
    scale)``), ``"layer"`` (LayerNorm) or ``"post_layer"`` (LayerNorm after the residual add: BERT).
    ``rope``: the configuration key of the rotary embedding's base wavelength (rotary heads lose
    frequency pairs, and the base follows the head size)."""

    attention: str
    q: str = "query"
    k: str = "key"
    v: str = "value"
    o: str = "attention_output"
    heads_first: bool = False
    mlp_in: tuple = ()
    mlp_out: str = ""
    norms: tuple = ()
    biases: bool = False
    config: dict = field(default_factory=dict)
    mlp_factor: int = 1
    derived_head_size: bool = True
    explicit_head_dim: str | None = None
    norm: str = "rms"
    gated: bool = True
    rope: str | None = None


_GPT = dict(mlp_in=("feedforward_intermediate_dense",), mlp_out="feedforward_output_dense",
            norms=("self_attention_layer_norm", "feedforward_layer_norm"), biases=True, gated=False,
            config={"heads": "num_heads", "mlp": "intermediate_dim", "hidden": "hidden_dim"})
_LLAMA = dict(attention="self_attention", mlp_in=("feedforward_gate_dense", "feedforward_intermediate_dense"),
              mlp_out="feedforward_output_dense", norms=("self_attention_layernorm", "feedforward_layernorm"),
              config={"heads": "num_query_heads", "kv_heads": "num_key_value_heads", "mlp": "intermediate_dim",
                      "hidden": "hidden_dim", "epsilon": "layer_norm_epsilon"}, rope="rope_max_wavelength")

#: block class (module path) -> its family
FAMILIES = {
    HUB + "layers.modeling.transformer_decoder.TransformerDecoder": Family("self_attention", norm="layer", **_GPT),
    HUB + "layers.modeling.transformer_encoder.TransformerEncoder": Family("self_attention_layer", norm="post_layer",
                                                                          **_GPT),
    HUB + "models.llama.llama_decoder.LlamaTransformerDecoder": Family(**_LLAMA),
    HUB + "models.mistral.mistral_transformer_decoder.MistralTransformerDecoder": Family(
        **_LLAMA | {"config": _LLAMA["config"]}, derived_head_size=False, explicit_head_dim="head_dim"),
    HUB + "models.gemma.gemma_decoder_block.GemmaDecoderBlock": Family(
        "attention", heads_first=True, mlp_in=("ffw_gating", "ffw_gating_2"), mlp_out="ffw_linear",
        norms=("pre_attention_norm", "pre_ffw_norm"), norm="rms1p", mlp_factor=2, derived_head_size=False,
        explicit_head_dim="head_dim", config={"heads": "num_query_heads", "kv_heads": "num_key_value_heads",
                                              "mlp": "intermediate_dim", "hidden": "hidden_dim"}),
}

#: norm layers that keras_hub backbones apply to the whole stream (module path -> ``rms``/``rms1p``)
NORMS = {
    HUB + "models.llama.llama_layernorm.LlamaLayerNorm": "rms",
    HUB + "models.mistral.mistral_layer_norm.MistralLayerNormalization": "rms",
    HUB + "models.gemma.rms_normalization.RMSNormalization": "rms1p",
}


#: backbone class (module path) -> what its rebuild must know beyond the blocks: ``embedding_scale`` (the
#: embedding weight multiplied by sqrt(hidden_dim) in the graph, whose values make up for a narrower
#: stream), ``epsilon`` (the configuration key of the norms' epsilon, where the blocks do not name one)
BACKBONES = {
    HUB + "models.gemma.gemma_backbone.GemmaBackbone": {"embedding_scale": "token_embedding/embeddings",
                                                         "epsilon": "layer_norm_epsilon"},
}


def qualified(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def family_of(layer) -> Family | None:
    return FAMILIES.get(qualified(type(layer)))


def _weights(layer) -> dict:
    """``{path relative to the layer: variable}``."""
    prefix = layer.path + "/" if getattr(layer, "path", None) else layer.name + "/"
    return {v.path[len(prefix):] if v.path.startswith(prefix) else v.path: v for v in layer.weights}


def stream_passes(call: Call, family_norm: str) -> bool:
    """Whether the residual stream's channels may go (``residual_stream`` slice or rotate; never
    through a post-norm block's LayerNorm when rotating)."""
    mode = call.options.get("residual_stream", "hold")
    if mode == "hold":
        return False
    return not (mode == "rotate" and family_norm == "post_layer")


def _block(call: Call) -> Spec:
    layer = call.layer
    fam = family_of(layer)
    w = _weights(layer)
    a = fam.attention + "/"
    qk = w.get(a + fam.q + "/kernel")
    kk = w.get(a + fam.k + "/kernel")
    fk = w.get(fam.mlp_out + "/kernel")
    if qk is None or kk is None or fk is None:
        return fixed(f"{type(layer).__name__} {layer.name!r}: its weights are not where spa_keras expects them "
                     f"(keras_hub version?): held")
    if fam.heads_first:
        h, _, hd = qk.shape
        kv = kk.shape[0]
    else:
        _, h, hd = qk.shape
        kv = kk.shape[1]
    ff = fk.shape[0]
    n = len(call.out_shapes)
    HEADS, KV, HD, MLP = (AxisRef("out", n + i) for i in range(4))
    passes = stream_passes(call, fam.norm)
    heads = "mha" if kv == h else ("gqa" if h % kv == 0 else "hold")
    link = None  # (which hidden tensor follows the stream's width, one class per `factor` channels, in steps)
    if fam.derived_head_size and passes and heads != "hold":  # hd = hidden_dim // heads: they move together
        if call.options.get("residual_stream") == "rotate" and (heads == "mha" or fam.rope):
            link = ("head_dim", int(h), 2 if fam.rope else 1)  # every head keeps hidden_dim // h of its size
        else:
            link = ("heads", int(hd) * (int(kv) if heads == "gqa" else 1), 1)  # whole heads, hd channels each
    if fam.derived_head_size and (link is None or link[0] == "head_dim"):
        heads = "hold"
    q_axes = {0: HEADS, 1: IN, 2: HD} if fam.heads_first else {0: IN, 1: HEADS, 2: HD}
    kv_axes = {0: KV, 1: IN, 2: HD} if fam.heads_first else {0: IN, 1: KV, 2: HD}
    params = {a + fam.q + "/kernel": (q_axes, WEIGHT), a + fam.k + "/kernel": (kv_axes, WEIGHT),
              a + fam.v + "/kernel": (kv_axes, WEIGHT), a + fam.o + "/kernel": ({0: HEADS, 1: HD, 2: OUT}, WEIGHT)}
    for name in fam.mlp_in:
        params[name + "/kernel"] = ({0: IN, 1: MLP}, WEIGHT)
    params[fam.mlp_out + "/kernel"] = ({0: MLP, 1: OUT}, WEIGHT)
    if fam.biases:
        params[a + fam.q + "/bias"] = ({0: HEADS, 1: HD}, BIAS)
        params[a + fam.k + "/bias"] = ({0: KV, 1: HD}, BIAS)
        params[a + fam.v + "/bias"] = ({0: KV, 1: HD}, BIAS)
        params[a + fam.o + "/bias"] = ({0: OUT}, BIAS)
        for name in fam.mlp_in:
            params[name + "/bias"] = ({0: MLP}, BIAS)
        params[fam.mlp_out + "/bias"] = ({0: OUT}, BIAS)
    for norm in fam.norms:
        for short, role in (("scale", WEIGHT), ("gamma", WEIGHT), ("beta", STAT)):
            if f"{norm}/{short}" in w:
                params[f"{norm}/{short}"] = ({0: IN}, role, "norm_scale") if role == WEIGHT else ({0: IN}, role)
    seq = call.in_shapes[0][0] or 1
    mlp_terms = len(fam.mlp_in) + 1
    macs = [(seq, [IN, HEADS, HD]), (2 * seq, [IN, KV, HD]), (seq * seq, [HEADS, HD]), (seq * seq, [HEADS, HD]),
            (seq, [HEADS, HD, OUT])] + [(seq, [IN, MLP])] * (mlp_terms - 1) + [(seq, [MLP, OUT])]
    cfg = fam.config

    def resize(config, width):
        """Edit the *backbone's* configuration for the new widths (every block has the same)."""
        if "heads" in cfg:
            config[cfg["heads"]] = width(HEADS)
        if "kv_heads" in cfg:
            config[cfg["kv_heads"]] = width(KV)
        config[cfg["mlp"]] = width(MLP) * fam.mlp_factor
        config[cfg["hidden"]] = width(IN)
        if fam.explicit_head_dim:
            config[fam.explicit_head_dim] = int(hd)

    transform = _rescale(_norm_rescale(fam.norm, tuple(f"{n}/{s}" for n in fam.norms for s in ("scale", "gamma")),
                                       int(call.in_shapes[0][-1])), (a + fam.q + "/kernel", a + fam.q + "/bias"),
                         int(hd), HD)
    readers = [[a + fam.q + "/kernel", a + fam.k + "/kernel", a + fam.v + "/kernel"],
               [name + "/kernel" for name in fam.mlp_in]]
    attrs = {"stream": "pass" if passes else "hold", "heads": heads, "groups": h // kv if kv else 1, "mlp": True,
             "family": qualified(type(layer)), "norm": fam.norm, "link": link,
             "head_dim": bool(link and link[0] == "head_dim"),
             # the attention's projections, for the rotation that reshapes every head (heads last)
             "attention": {"q": a + fam.q, "k": a + fam.k, "v": a + fam.v, "o": a + fam.o, "rope": bool(fam.rope),
                           "biases": fam.biases} if not fam.heads_first else None,
             # which weights read the stream through which of the block's norms (rotation folds the norms into them)
             "norm_readers": {n: r for n, r in zip(fam.norms, readers) if any(k.startswith(n + "/") for k in w)},
             # the layers inside that read heads, MLP units or the (normalised) stream: (sublayer, its reading axes)
             "probes": {"heads": (a + fam.o, (0, 1)), "mlp": (fam.mlp_out, (0,)),
                        **{k[: -len("/kernel")]: (k[: -len("/kernel")], (1 if fam.heads_first and k in readers[0] else 0,))
                           for k in readers[0] + readers[1]}}}
    return Spec("transformer", params, attrs, macs, resize,
                hidden=[("heads", int(h)), ("kv_heads", int(kv)), ("head_dim", int(hd)), ("mlp", int(ff))],
                transform=transform)


def _rescale(norm, queries: tuple, hd: int, axis):
    """The block's weight edits for new widths: its norms' (``norm``), and its queries' where the head
    size shrinks (:func:`~spa_keras.frontends.keras.layers.keep_query_scale`)."""

    def transform(name, value, w):
        if norm is not None:
            value = norm(name, value, w)
        return keep_query_scale(value, hd, w(axis)) if name in queries else value

    return transform


def _norm_rescale(kind: str, names: tuple, width: int):
    """``transform(name, value, width)``: a norm over fewer channels divides by a smaller root mean
    square; its scale grows by ``sqrt(D / D')`` so that, where the removed channels were zero (and, for
    LayerNorm, the stream has zero mean), the normalised values are unchanged (``x * (1 + s)`` norms:
    ``1 + s`` grows). A LayerNorm's offset stays."""
    if kind not in ("rms", "rms1p", "layer", "post_layer"):
        return None

    def transform(name, value, w):
        if name not in names:
            return value
        factor = np.sqrt(width / max(w(IN), 1)).astype(value.dtype)
        return (1 + value) * factor - 1 if kind == "rms1p" else value * factor

    return transform


def _stream_norm(call: Call) -> Spec:
    """A norm keras_hub applies to the whole stream (the final norm of Llama, Mistral, Gemma)."""
    kind = NORMS[qualified(type(call.layer))]
    if call.options.get("residual_stream", "hold") == "hold":
        return fixed(f"{type(call.layer).__name__} normalises across channels: the residual stream is held "
                     "(residual_stream='slice' or 'rotate' prunes it)")
    spec = Spec("identity", {"scale": ({0: OUT}, WEIGHT, "norm_scale")}, {"stream": "pass", "norm": kind})
    if kind == "rms":  # Gemma's final norm is only sliced: its tied embedding's rescaling makes up for it
        spec.transform = _norm_rescale(kind, ("scale",), int(call.in_shapes[0][-1]))
    return spec


def hold_in_hub(layer, spec: Spec) -> Spec:
    """Inside a keras_hub model only the blocks' widths and the hidden width can change (its configuration
    says them); a plain Keras layer that makes new channels there (BERT's pooler, ``Dense(hidden_dim)``)
    keeps its width."""
    import keras

    if spec.kind == "linear" and type(layer).__module__.startswith("keras.") and \
            not isinstance(layer, keras.layers.Embedding):
        spec.attrs["hold_output"] = True  # it still reads the stream, which may narrow
        spec.resize = None
    return spec


def _position_embedding(call: Call) -> Spec:
    """keras_hub's PositionEmbedding: the positions' vectors, as wide as the stream they are added to."""
    return Spec("linear", {"embeddings": ({1: OUT}, WEIGHT)}, {}, [])


for _name in FAMILIES:
    register(_name)(_block)
for _name in NORMS:
    register(_name)(_stream_norm)
register(HUB + "layers.modeling.position_embedding.PositionEmbedding")(_position_embedding)
