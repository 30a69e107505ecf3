"""Reports: the table, JSON and the PNG plot, written after a prune."""

import json
import os

import keras
import pytest
from keras import layers as L

import spa_keras as spa


def cnn():
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inp)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="c2")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(4, name="head")(x), name="tiny")


def test_json_and_png(tmp_path):
    report = spa.Report.from_plan(spa.plan(cnn(), ratio=0.5))
    data = json.loads(report.to_json(str(tmp_path / "r.json")))
    assert data == json.loads((tmp_path / "r.json").read_text())
    assert [r["layer"] for r in data["layers"]][:2] == ["c1", "c2"] and data["layers"][0]["width_after"] == 4
    report.plot(str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(spa.InvalidArgumentError, match="exists"):
        report.plot(str(tmp_path / "r.png"))


def test_prune_writes_table_json_and_png(tmp_path):
    folder = str(tmp_path / "reports") + "/"
    spa.prune(cnn(), ratio=0.5, report=folder)
    names = sorted(os.listdir(folder))
    assert names == ["report.json", "report.png", "report.txt"]
    assert "c1" in open(folder + "report.txt").read() and "fewer" in open(folder + "report.txt").read()
    with pytest.raises(spa.InvalidArgumentError, match="exists"):
        spa.prune(cnn(), ratio=0.5, report=folder)
    spa.prune(cnn(), ratio=0.25, report=str(tmp_path / "slim.report"))
    assert os.path.exists(tmp_path / "slim.report.png") and os.path.exists(tmp_path / "slim.report.json")
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".spa-")]


def test_from_graphs_matches_from_plan():
    model = cnn()
    plan = spa.plan(model, ratio=0.5)
    slim = spa.apply(plan)
    a = spa.Report.from_plan(plan).to_dict()
    b = spa.Report.from_graphs(spa.inspect(model).graph, spa.inspect(slim).graph).to_dict()
    assert a.pop("settings")["ratio"] == 0.5 and b.pop("settings") == {}  # only a plan knows how it was made
    assert a == b
