"""spa_keras.data_pruning: scores with known answers, extrapolation, selection, calibration choice, bad
input, and the prune-data command (in-process). Tiny models and tiny data."""

import ast
import os
import sys

import keras
import numpy as np
import pytest

from spa_keras import data_pruning as dp
from spa_keras.cli import main
from spa_keras.errors import InvalidArgumentError, MissingDependencyError, OutputExistsError, PruningError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_mlp(inputs=4, classes=2):
    def build():
        m = keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(8, activation="relu", name="features"),
                              keras.layers.Dense(classes, name="logits")])
        m.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return m

    return build


def blobs(n=120, classes=2, d=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, d)).astype("float32") + 2.0 * y[:, None]
    return x, y


# ---- the formulas -------------------------------------------------------------------------------


def test_dynamic_uncertainty_is_zero_for_a_constant_prediction_and_the_windowed_std_otherwise():
    p = np.array([[0.3, 0.1], [0.3, 0.5], [0.3, 0.9], [0.3, 0.5]])
    du = dp.dynamic_uncertainty(p, window=3)
    assert du[0] == 0.0
    want = np.mean([np.std([0.1, 0.5, 0.9], ddof=1), np.std([0.5, 0.9, 0.5], ddof=1)])
    assert du[1] == pytest.approx(want)
    # the paper's window of 10 shrinks to a 4-epoch run: one window, the std over the run
    assert dp.dynamic_uncertainty(p)[1] == pytest.approx(np.std(p[:, 1], ddof=1))


def test_tdds_follows_its_formula():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=(6, 5))  # 6 recordings, 5 samples
    kl = np.stack([dp.kl_change(probs[t], probs[t + 1]) for t in range(5)])
    want = np.zeros(5)
    J, beta, T = 4, 0.9, 6
    for k in range(T - J + 1):
        win = kl[k:k + J - 1]
        want += beta * (1 - beta) ** (T - J - k) * np.linalg.norm(win - win.mean(0), axis=0)
    np.testing.assert_allclose(dp.tdds(kl, window=J, decay=beta), want)
    assert np.all(dp.tdds(np.zeros((5, 3))) == 0)  # nothing moves: zero


def test_el2n_and_forgetting_events():
    assert dp.el2n(np.array([[0.0, 1.0]]), np.array([0]))[0] == pytest.approx(np.sqrt(2))
    correct = np.array([[1, 0, 1, 0], [0, 0, 1, 1], [1, 0, 1, 0], [0, 0, 1, 1]], bool)
    np.testing.assert_array_equal(dp.forgetting_events(correct), [2, 4, 0, 1])  # never learned: T


def test_window_checks():
    with pytest.raises(InvalidArgumentError, match="at least 2"):
        dp.dynamic_uncertainty(np.ones((1, 3)))
    with pytest.raises(InvalidArgumentError, match="window"):
        dp.dynamic_uncertainty(np.ones((4, 3)), window=5)
    with pytest.raises(InvalidArgumentError, match="decay"):
        dp.tdds(np.ones((4, 3)), decay=0)


# ---- recording during training -------------------------------------------------------------------


def test_a_sample_whose_prediction_never_changes_scores_zero_uncertainty():
    x, y = blobs(64)
    x[0] = 0.0  # no bias anywhere: the logits of this sample stay 0, p(y|x) = 1/2 at every epoch
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu", use_bias=False),
                              keras.layers.Dense(2, use_bias=False)])
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rec = dp.ScoreRecorder(x, y)
    model.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[rec])
    assert rec.recordings == 4
    np.testing.assert_allclose(rec.p_true[:, 0], 0.5)
    for score in ("dynamic_uncertainty", "tdds"):
        s = rec.scores(score)
        assert s[0] == 0.0 and s[1:].max() > 0, score


def test_recorder_every_steps_and_a_dataset_read_the_same_as_arrays():
    import tensorflow as tf

    x, y = blobs(64)
    model = build_mlp()()
    rec = dp.ScoreRecorder(x, y, every_steps=2)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[rec])  # 8 steps: 4 recordings
    assert rec.recordings == 4
    a, b = dp.ScoreRecorder(x, y), dp.ScoreRecorder(tf.data.Dataset.from_tensor_slices((x, y)).batch(10))
    for r in (a, b):
        r.set_model(model)
        r.record()
    np.testing.assert_allclose(a.p_true, b.p_true, rtol=1e-6)


def test_a_tf_data_dataset_of_batches_is_scored_and_bad_datasets_are_refused():
    import tensorflow as tf

    x, y = blobs(120)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    est = dp.extrapolated_scores(build_mlp(), ds, subset=0.5, epochs=2, batch_size=16, k=3)
    assert est.shape == (120,) and np.all(np.isfinite(est))
    with pytest.raises(InvalidArgumentError, match="labels come from"):
        dp.scores(build_mlp(), ds, y, epochs=2)
    with pytest.raises(InvalidArgumentError, match="infinite"):
        dp.scores(build_mlp(), ds.repeat(), epochs=2)
    with pytest.raises(InvalidArgumentError, match=r"\(x, y\) batches"):
        dp.scores(build_mlp(), tf.data.Dataset.from_tensor_slices(x).batch(16), epochs=2)


def test_scores_runs_under_a_distribution_strategy():
    import tensorflow as tf

    x, y = blobs(64)
    s = dp.scores(build_mlp(), x, y, ["dynamic_uncertainty", "forgetting"], epochs=3, batch_size=16,
                  strategy=tf.distribute.OneDeviceStrategy("/cpu:0"))
    assert set(s) == {"dynamic_uncertainty", "forgetting"} and s["dynamic_uncertainty"].shape == (64,)


# ---- extrapolation --------------------------------------------------------------------------------


def test_knn_with_k_1_returns_the_nearest_seeds_score():
    rng = np.random.default_rng(1)
    seeds, queries = rng.normal(size=(50, 6)), rng.normal(size=(200, 6))
    s = rng.random(50)
    nearest = np.argmin(((queries[:, None] - seeds[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(dp.knn_extrapolate(seeds, s, queries, k=1), s[nearest])


def test_knn_searches_within_the_class_and_weights_by_exp_minus_distance():
    seeds = np.array([[0.0], [1.0], [10.0]])
    est = dp.knn_extrapolate(seeds, np.array([1.0, 2.0, 3.0]), np.array([[0.0]]), k=1,
                             seed_labels=[0, 1, 1], labels=[1])
    assert est[0] == 2.0  # the nearest seed (0.0) is of another class
    w = np.exp(-np.array([0.25, 0.75]))
    est = dp.knn_extrapolate(seeds[:2], np.array([1.0, 2.0]), np.array([[0.25]]), k=2)
    assert est[0] == pytest.approx((w * [1.0, 2.0]).sum() / w.sum())


def test_duplicated_samples_get_identical_extrapolated_scores():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(80, 5)).astype("float32")
    emb[61] = emb[60]
    emb[71] = emb[70]
    labels = np.arange(80) % 2
    labels[[61, 71]] = labels[[60, 70]]
    seeds = np.arange(40)
    s = rng.random(40)
    knn = dp.knn_extrapolate(emb[seeds], s, emb[40:], k=5, seed_labels=labels[seeds], labels=labels[40:])
    assert knn[20] == knn[21] and knn[30] == knn[31]
    gnn = dp.gcn_extrapolate(emb, seeds, s, k=5, labels=labels, epochs=30)
    assert gnn[60] == gnn[61] and gnn[70] == gnn[71]
    np.testing.assert_array_equal(gnn[seeds], s)  # the seeds keep their scores


def test_extrapolated_scores_end_to_end_duplicates_outside_the_subset():
    x, y = blobs(120)
    x[101], y[101] = x[100], y[100]
    subset = np.arange(0, 120, 3)  # 100 and 101 are not in it
    for method in ("knn", "gnn"):
        est, info = dp.extrapolated_scores(build_mlp(), x, y, subset=subset, method=method, epochs=3, batch_size=16,
                                           k=3, return_details=True, gnn_options=dict(epochs=20))
        assert est.shape == (120,) and np.all(np.isfinite(est))
        assert est[100] == est[101], method
        np.testing.assert_array_equal(est[subset], info["subset_scores"])
        assert info["record_every_steps"] >= 1 and info["subset_epochs"] >= 3


def test_nearest_neighbors_without_faiss_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(MissingDependencyError, match="pip install faiss-cpu"):
        dp.nearest_neighbors(np.zeros((3, 2)), np.zeros((1, 2)), k=1)


def test_embeddings_are_the_penultimate_features_and_spatial_outputs_are_pooled():
    model = build_mlp()()
    x = np.random.default_rng(0).normal(size=(10, 4)).astype("float32")
    np.testing.assert_allclose(dp.embeddings(model, x), model.get_layer("features")(x).numpy(), rtol=1e-5)
    inp = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(3, 3, name="conv")(inp)
    cnn = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    assert dp.embeddings(cnn, np.zeros((2, 6, 6, 1)), layer="conv").shape == (2, 3)


# ---- selection ------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["top", "bottom", "random", "ccs"])
@pytest.mark.parametrize("keep", [0.1, 0.33, 0.5, 0.9, 1.0])
def test_select_keeps_exactly_the_requested_count_per_class_when_balanced(strategy, keep):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 503)
    s = rng.random(503)
    idx = dp.select(s, keep, strategy=strategy, seed=1)
    assert len(idx) == round(keep * 503) and len(set(idx.tolist())) == len(idx)
    bal = dp.select(s, keep, y=y, strategy=strategy, class_balanced=True, seed=1)
    assert len(bal) == round(keep * 503) and len(set(bal.tolist())) == len(bal)
    for c in range(4):
        n_c = int((y == c).sum())
        assert abs(int((y[bal] == c).sum()) - keep * n_c) < 1.0, (c, n_c)


def test_select_top_bottom_and_shuffled_results():
    s = np.arange(100, dtype=float)
    top = dp.select(s, 0.2)
    assert sorted(top.tolist()) == list(range(80, 100))
    assert top.tolist() != sorted(top.tolist())  # shuffled
    assert sorted(dp.select(s, 0.2, strategy="bottom").tolist()) == list(range(20))
    y = (np.arange(100) >= 50).astype(int)
    assert sorted(dp.select(s, 0.2, y=y, class_balanced=True).tolist()) == list(range(40, 50)) + list(range(90, 100))


def test_ccs_drops_the_hardest_and_covers_the_score_range():
    s = np.arange(1000, dtype=float)
    idx = dp.select(s, 0.3, strategy="ccs", beta=0.1, strata=10)
    assert idx.max() < 900  # the hardest 10% are gone
    counts = np.bincount(idx // 90, minlength=10)
    assert counts.min() >= 25  # every stratum of the rest contributes evenly (300 / 10)
    # when the budget needs them, fewer hard samples are dropped
    assert len(dp.select(s, 0.95, strategy="ccs", beta=0.1)) == 950


@pytest.mark.parametrize("keep", [0, -0.1, 1.5, float("nan"), "half", True])
def test_keep_outside_zero_one_is_refused(keep):
    with pytest.raises(InvalidArgumentError, match=r"keep must be the fraction .* in \(0, 1\]"):
        dp.select(np.ones(10), keep)


# ---- bad input ------------------------------------------------------------------------------------


def test_labels_that_do_not_match_x_are_refused():
    x, y = blobs(20)
    with pytest.raises(InvalidArgumentError, match="19 labels but x has 20 samples"):
        dp.scores(build_mlp(), x, y[:19], epochs=2)
    with pytest.raises(InvalidArgumentError, match="labels but x has"):
        dp.extrapolated_scores(build_mlp(), x, y[:-1], epochs=2)
    with pytest.raises(InvalidArgumentError, match="labels but x has"):
        dp.select(np.ones(20), 0.5, y=y[:5], class_balanced=True)
    with pytest.raises(InvalidArgumentError, match="integer class ids"):
        dp.scores(build_mlp(), x, y + 0.5, epochs=2)
    with pytest.raises(InvalidArgumentError, match="model predicts 2 classes"):
        dp.scores(build_mlp(), x, y + 2, epochs=2)
    with pytest.raises(InvalidArgumentError, match="pass y"):
        dp.scores(build_mlp(), x, None, epochs=2)


def test_a_subset_too_small_for_k_is_refused():
    x, y = blobs(100)
    with pytest.raises(InvalidArgumentError, match=r"fewer than k=10: use a larger subset or a smaller k"):
        dp.extrapolated_scores(build_mlp(), x, y, subset=0.1, k=10, epochs=2)
    with pytest.raises(InvalidArgumentError, match="fewer than k=3"):
        dp.knn_extrapolate(np.zeros((2, 2)), np.zeros(2), np.zeros((5, 2)), k=3)


def test_a_model_with_no_penultimate_layer_to_embed_is_refused():
    def single_layer():
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return m

    x, y = blobs(100)
    with pytest.raises(InvalidArgumentError, match="no penultimate layer to embed.*layer="):
        dp.extrapolated_scores(single_layer, x, y, subset=0.5, k=3, epochs=2, step_fraction=None)
    with pytest.raises(InvalidArgumentError, match="has no layer 'nope'"):
        dp.embeddings(build_mlp()(), x, layer="nope")


def test_other_bad_arguments():
    x, y = blobs(40)
    with pytest.raises(InvalidArgumentError, match="compiled"):
        dp.scores(lambda: keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), x, y, epochs=2)
    with pytest.raises(InvalidArgumentError, match="unknown score"):
        dp.scores(build_mlp(), x, y, score="loss")
    with pytest.raises(InvalidArgumentError, match="unknown method"):
        dp.extrapolated_scores(build_mlp(), x, y, method="svm")
    with pytest.raises(InvalidArgumentError, match="subset must be a fraction"):
        dp.extrapolated_scores(build_mlp(), x, y, subset=1.5)
    with pytest.raises(InvalidArgumentError, match="unknown strategy"):
        dp.select(np.ones(4), 0.5, strategy="best")
    with pytest.raises(InvalidArgumentError, match="needs the labels"):
        dp.select(np.ones(4), 0.5, class_balanced=True)
    assert all(issubclass(e, PruningError) for e in (InvalidArgumentError, MissingDependencyError))


# ---- calibration samples ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["kmeans", "kcenter", "random"])
def test_calibration_subset_is_class_balanced_and_distinct(method):
    x, y = blobs(300, classes=3)
    model = build_mlp(classes=3)()
    idx = dp.calibration_subset(model, x, n=30, y=y, method=method)
    assert len(idx) == 30 and len(set(idx.tolist())) == 30
    np.testing.assert_array_equal(np.bincount(y[idx], minlength=3), [10, 10, 10])
    assert len(dp.calibration_subset(model, x[:20], n=64)) == 20  # fewer candidates than asked: all


def test_kcenter_covers_the_feature_space():
    # a dense blob and three far points: k-center reaches the far points, a random draw rarely does
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="f", kernel_initializer="identity"),
                              keras.layers.Dense(2)])
    x = np.concatenate([np.random.default_rng(0).normal(size=(200, 2)) * 0.1,
                        [[10, 0], [0, 10], [-10, -10]]]).astype("float32")
    idx = dp.calibration_subset(model, x, n=4, y=np.zeros(203, int), method="kcenter")
    assert {200, 201, 202} <= set(idx.tolist())


# ---- the prune-data command --------------------------------------------------------------------------


@pytest.fixture
def npz(tmp_path):
    x, y = blobs(120, classes=3, d=6)
    path = str(tmp_path / "train.npz")
    np.savez(path, x=x, y=y)
    return path


def test_cli_prune_data_writes_indices_and_a_png_report(npz, tmp_path, capsys):
    out = str(tmp_path / "kept.npy")
    args = ["prune-data", npz, "-o", out, "--keep", "0.5", "--epochs", "3", "--batch-size", "16", "--subset", "0.5",
            "--k", "3", "--class-balanced", "--scores-output", str(tmp_path / "s.npy")]
    assert main(args) == 0
    kept = np.load(out)
    assert len(kept) == 60 and len(set(kept.tolist())) == 60 and kept.max() < 120
    assert np.bincount(np.load(npz)["y"][kept]).tolist() == [20, 20, 20]
    assert np.load(str(tmp_path / "s.npy")).shape == (120,)
    with open(str(tmp_path / "kept.report.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "kept 60 of 120" in capsys.readouterr().out
    assert main(args) == 2  # the outputs exist
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(args + ["--force", "--extrapolate", "none", "--strategy", "ccs", "--no-report"]) == 0


def test_cli_prune_data_bad_input(npz, tmp_path, capsys):
    out = str(tmp_path / "kept.npy")
    assert main(["prune-data", npz, "-o", out, "--keep", "1.5"]) == 2
    assert "--keep must be a fraction in (0, 1]" in capsys.readouterr().err
    assert main(["prune-data", npz, "-o", str(tmp_path / "kept.txt")]) == 2
    assert "must end in .npy" in capsys.readouterr().err
    bad = str(tmp_path / "nolabels.npz")
    np.savez(bad, x=np.zeros((10, 3)))
    assert main(["prune-data", bad, "-o", out]) == 2
    assert "x and y" in capsys.readouterr().err
    assert main(["prune-data", npz, "-o", out, "--subset", "0.05", "--k", "10", "--epochs", "2"]) == 2
    assert "fewer than k=10" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_cli_prune_data_on_an_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        os.makedirs(tmp_path / "imgs" / c)
        for i in range(30):
            pixels = (rng.random((8, 8)) * 100 + (150 if c == "dog" else 0)).astype("uint8")
            Image.fromarray(pixels, "L").save(tmp_path / "imgs" / c / f"{i}.png")
    out = str(tmp_path / "kept.npy")
    assert main(["prune-data", str(tmp_path / "imgs"), "-o", out, "--channels", "1", "--keep", "0.3", "--epochs", "3",
                 "--batch-size", "8", "--subset", "0.5", "--k", "3", "--extrapolate", "gnn"]) == 0
    assert len(np.load(out)) == 18


def test_the_cli_module_imports_nothing_heavy_at_import_time():
    with open(os.path.join(ROOT, "spa_keras", "data_pruning", "cli.py")) as f:
        tree = ast.parse(f.read())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top for a in n.names] + [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not any(m.split(".")[0] in ("tensorflow", "keras", "numpy", "matplotlib") for m in names), names
    with open(os.path.join(ROOT, "spa_keras", "data_pruning", "__init__.py")) as f:
        init = ast.parse(f.read())
    assert all(isinstance(n, (ast.Import, ast.ImportFrom)) is False or n.names[0].name in ("annotations", "importlib")
               for n in init.body)


def test_the_cli_lists_every_score():
    from spa_keras.data_pruning import cli, formulas

    assert cli.SCORES == formulas.SCORES


def test_the_room_does_not_import_the_model_pruning_code():
    forbidden = ("graph", "frontends", "criteria", "plan", "algorithms", "backends", "api")
    folder = os.path.join(ROOT, "spa_keras", "data_pruning")
    for name in os.listdir(folder):
        if name.endswith(".py"):
            with open(os.path.join(folder, name)) as f:
                for node in ast.walk(ast.parse(f.read())):
                    if isinstance(node, ast.ImportFrom) and node.level >= 2:
                        assert (node.module or "").split(".")[0] not in forbidden, (name, node.module)
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        mods = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                        assert not any(m.startswith(tuple(f"spa_keras.{r}" for r in forbidden)) for m in mods), name


def test_output_exists_error_is_a_pruning_error():
    assert issubclass(OutputExistsError, PruningError)
