"""The channel graph without Keras: rules, groups, selection and metrics on hand-made graphs."""

import ast
import pathlib

import numpy as np

from spa_keras.graph import IN, OUT, AxisRef, Graph, Node, Param, analyse
from spa_keras.graph.groups import connected_labels
from spa_keras.metrics import count_macs, count_params
from spa_keras.plan import select


def test_graph_package_imports_no_framework():
    for path in pathlib.Path("spa_keras/graph").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            assert not any(n.split(".")[0] in ("keras", "tensorflow", "onnx", "torch") for n in names), path


def test_connected_labels_matches_a_reference():
    rng = np.random.default_rng(0)
    n = 300
    a, b = rng.integers(0, n, 200), rng.integers(0, n, 200)
    label = connected_labels(n, a, b)
    # reference: plain union-find
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(a, b):
        parent[find(x)] = find(y)
    for x in range(n):
        for y in range(0, n, 7):
            assert (label[x] == label[y]) == (find(x) == find(y))


def _conv(g, name, src, cout, groups=1, cin=None):
    t = g.add_tensor(name, (8, 8, cout), cout)
    cin = cin or g.tensors[src].channels
    k_in = AxisRef("in", 0, block=True) if groups > 1 else IN
    g.add_node(Node(name, "linear", [src], [t], [Param(name, name, (3, 3, cin // groups, cout), {2: k_in, 3: OUT})],
                    {"groups": groups}, [(64 * 9 / groups, [IN, OUT])], name))
    return t


def _op(g, name, kind, ins, width, **attrs):
    t = g.add_tensor(name, (8, 8, width), width)
    g.add_node(Node(name, kind, ins, [t], attrs=attrs, layer=name))
    return t


def _graph():
    g = Graph("toy")
    x = g.add_tensor("x", (8, 8, 3), 3)
    g.inputs = [x]
    return g, x


def test_residual_stream_is_one_group_and_output_is_fixed():
    g, x = _graph()
    a = _conv(g, "a", x, 8)
    b = _conv(g, "b", a, 8)
    s = _op(g, "add", "merge", [a, b], 8)
    c = _conv(g, "c", s, 4)
    g.outputs = [c]
    an = analyse(g)
    assert len(an.groups) == 1 and an.groups[0].size == 8
    assert set(an.groups[0].nodes) >= {"a", "b", "add"}
    plan = select(an, np.arange(an.n_classes, dtype=float), ratio=0.5)
    assert plan.width(a) == plan.width(b) == 4 and plan.width(c) == 4


def test_concat_flatten_depthwise_layouts():
    g, x = _graph()
    a = _conv(g, "a", x, 4)
    b = _conv(g, "b", x, 6)
    cat = _op(g, "cat", "concat", [a, b], 10)
    dw = _op(g, "dw", "depthwise", [cat], 20, multiplier=2)
    fl = g.add_tensor("fl", (20 * 4,), 80)
    g.add_node(Node("fl", "flatten", [dw], [fl], layer="fl"))
    g.outputs = [fl]
    an = analyse(g)
    lay_a, lay_b = an.layouts[a], an.layouts[b]
    np.testing.assert_array_equal(an.layouts[cat], np.concatenate([lay_a, lay_b]))
    np.testing.assert_array_equal(an.layouts[dw], np.repeat(an.layouts[cat], 2))
    np.testing.assert_array_equal(an.layouts[fl], np.tile(an.layouts[dw], 4))
    # flatten is the model's output here: everything upstream is fixed
    assert an.groups == []


def test_grouped_conv_couples_blocks():
    g, x = _graph()
    a = _conv(g, "a", x, 8)
    b = _conv(g, "b", a, 12, groups=4)
    c = _conv(g, "c", b, 2)
    g.outputs = [c]
    an = analyse(g)
    sizes = sorted(gr.size for gr in an.groups)
    assert sizes == [2, 3]  # 8 inputs in 4 groups of 2, 12 outputs in 4 groups of 3
    plan = select(an, np.random.default_rng(0).random(an.n_classes), ratio=0.5)
    assert plan.width(a) == 4 and plan.width(b) == 8


def test_never_empties_a_producer_even_at_high_ratio():
    g, x = _graph()
    a = _conv(g, "a", x, 3)
    b = _conv(g, "b", x, 5)
    cat = _op(g, "cat", "concat", [a, b], 8)
    d = _conv(g, "d", x, 8)
    s = _op(g, "add", "merge", [cat, d], 8)
    g.outputs = [_conv(g, "out", s, 2)]
    an = analyse(g)
    scores = np.zeros(an.n_classes)
    # make a's channels the least important so a naive selection would empty it
    scores[an.class_of[an.layouts[a]]] = -1
    plan = select(an, scores, ratio=0.95)
    assert plan.width(a) >= 1 and plan.width(b) >= 1


def test_shared_parameter_unites_both_uses():
    g, x = _graph()
    a = _conv(g, "a", x, 4)
    b = _conv(g, "b", x, 4)
    outs = []
    for src, name in ((a, "s1"), (b, "s2")):
        t = g.add_tensor(name, (8, 8, 6), 6)
        g.add_node(Node(name, "linear", [src], [t], [Param("shared", "shared/k", (3, 3, 4, 6), {2: IN, 3: OUT})],
                        layer="shared"))
        outs.append(t)
    g.outputs = [_conv(g, "out", _op(g, "cat", "concat", outs, 12), 2)]
    an = analyse(g)
    np.testing.assert_array_equal(an.class_of[an.layouts[a]], an.class_of[an.layouts[b]])
    np.testing.assert_array_equal(an.class_of[an.layouts[outs[0]]], an.class_of[an.layouts[outs[1]]])


def test_metrics_follow_the_plan():
    g, x = _graph()
    a = _conv(g, "a", x, 8)
    g.outputs = [_conv(g, "b", a, 4)]
    an = analyse(g)
    assert count_macs(g) == 64 * 9 * 3 * 8 + 64 * 9 * 8 * 4
    assert count_params(g) == 9 * 3 * 8 + 9 * 8 * 4
    plan = select(an, np.arange(an.n_classes, dtype=float), ratio=0.5)
    assert count_macs(g, plan) == 64 * 9 * 3 * 4 + 64 * 9 * 4 * 4
    assert count_params(g, plan) == 9 * 3 * 4 + 9 * 4 * 4
