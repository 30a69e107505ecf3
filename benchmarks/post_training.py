"""Pruning after training with no fine-tuning, on Fashion-MNIST (Debian's dataset-fashion-mnist).

Trains (once, cached in benchmarks/cache/) a ResNet-20-style and a MobileNetV2-style model, prunes each
to 2x and 3x fewer MACs and reports test accuracy with no fine-tuning for: group L1, group L2, OBSPA
data-free (BN-matched synthetic inputs, random inputs), OBSPA with 128/512/2048 calibration samples,
the two-phase reconstruction with the same counts, OBSPA followed by the reconstruction's phase 2
(``algorithm_options={"start": "obspa"}``), and group L2 plus one epoch of fine-tuning for reference, with the seconds each took. Writes benchmarks/results/post_training.json.

    python benchmarks/post_training.py                 # everything (an hour on 2 CPU cores)
    python benchmarks/post_training.py --train-only    # just train and cache the two models
    python benchmarks/post_training.py --models resnet20 --targets 0.5 --methods l2,obspa_bn
    python benchmarks/post_training.py --calibration-choice   # chosen vs random calibration samples
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers as L  # noqa: E402

import spa_keras as spa  # noqa: E402
from spa_keras.io import atomic_write, save_model  # noqa: E402
from spa_keras.metrics import count_macs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, "cache")
RESULTS = os.path.join(HERE, "results", "post_training.json")
MEAN, STD = 0.2860, 0.3530
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# ---- the two architectures -------------------------------------------------------------------------


def resnet20(name="resnet20"):
    """The CIFAR ResNet-20 (3 stages of 3 basic blocks, 16/32/64 channels, projection shortcuts)."""
    inp = keras.Input((28, 28, 1))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inp)))
    for stage, width in enumerate((16, 32, 64)):
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            p = f"s{stage}b{block}"
            y = L.Conv2D(width, 3, stride, padding="same", use_bias=False, name=p + "_conv1")(x)
            y = L.ReLU()(L.BatchNormalization(name=p + "_bn1")(y))
            y = L.Conv2D(width, 3, padding="same", use_bias=False, name=p + "_conv2")(y)
            y = L.BatchNormalization(name=p + "_bn2")(y)
            if stride > 1 or x.shape[-1] != width:
                x = L.BatchNormalization(name=p + "_sbn")(L.Conv2D(width, 1, stride, use_bias=False, name=p + "_short")(x))
            x = L.ReLU()(L.Add()([x, y]))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name=name)


def mobilenetv2(name="mobilenetv2"):
    """A MobileNetV2-style net: inverted residual blocks (expansion 6, depthwise 3x3, linear bottleneck)."""
    inp = keras.Input((28, 28, 1))
    x = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(32, 3, padding="same", use_bias=False, name="stem")(inp)))
    cfg = [(16, 1, 1, 1), (24, 6, 2, 2), (32, 6, 2, 2), (64, 6, 2, 1), (96, 6, 1, 1)]  # out, expand, repeats, stride
    for i, (out, t, n, s) in enumerate(cfg):
        for j in range(n):
            stride = s if j == 0 else 1
            p = f"b{i}_{j}"
            y = x
            if t != 1:
                y = L.ReLU(6.0)(L.BatchNormalization(name=p + "_ebn")(
                    L.Conv2D(x.shape[-1] * t, 1, use_bias=False, name=p + "_expand")(y)))
            y = L.DepthwiseConv2D(3, stride, padding="same", use_bias=False, name=p + "_dw")(y)
            y = L.ReLU(6.0)(L.BatchNormalization(name=p + "_dbn")(y))
            y = L.BatchNormalization(name=p + "_pbn")(L.Conv2D(out, 1, use_bias=False, name=p + "_project")(y))
            x = L.Add()([x, y]) if stride == 1 and x.shape[-1] == out else y
    x = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(256, 1, use_bias=False, name="head")(x)))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name=name)


MODELS = {"resnet20": resnet20, "mobilenetv2": mobilenetv2}


# ---- data, training, evaluation ----------------------------------------------------------------------


def load_data():
    (xtr, ytr), (xte, yte) = spa.datasets.load_fashion_mnist()
    return ((xtr - MEAN) / STD, ytr), ((xte - MEAN) / STD, yte)


def accuracy(model, x, y):
    pred = model.predict(x, batch_size=500, verbose=0)
    return float((pred.argmax(-1) == y).mean())


def trained(name, data, epochs):
    """The cached trained model (trained here the first time)."""
    path = os.path.join(CACHE, f"{name}.keras")
    if os.path.exists(path):
        return keras.saving.load_model(path)
    (xtr, ytr), (xte, yte) = data
    keras.utils.set_random_seed(0)
    model = MODELS[name]()
    steps = epochs * int(np.ceil(len(xtr) / 128))
    lr = keras.optimizers.schedules.CosineDecay(2e-3, steps)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=LOSS, metrics=["accuracy"])
    t0 = time.perf_counter()
    model.fit(xtr, ytr, batch_size=128, epochs=epochs, verbose=2, validation_data=(xte, yte))
    print(f"{name}: trained in {time.perf_counter() - t0:.0f} s, test accuracy {accuracy(model, xte, yte):.4f}")
    os.makedirs(CACHE, exist_ok=True)
    save_model(model, path, overwrite=True)
    return model


# ---- the methods ------------------------------------------------------------------------------------


def method_table(xcal):
    """``{name: (keyword arguments of spa.prune, fine-tune epochs)}``."""
    table = {
        "l1": (dict(criterion="l1"), 0),
        "l2": (dict(criterion="l2"), 0),
        "obspa_bn": (dict(algorithm="obspa", data_free="bn"), 0),
        "obspa_random": (dict(algorithm="obspa", data_free="random"), 0),
    }
    for n in (128, 512, 2048):  # OBSPA's defaults; rows_per_dim is 64 by default since 2026-11-30, and the
        # obspa_{n} rows of results/post_training.json and results/obspa_rows.json were taken with every row
        table[f"obspa_{n}"] = (dict(algorithm="obspa", calibration_data=xcal[:n], calibration_samples=n), 0)
    for n, r in ((512, 256), (512, 64), (2048, 64)):  # Hessians from a random subset of the rows
        table[f"obspa_{n}_rows{r}"] = (dict(algorithm="obspa", calibration_data=xcal[:n], calibration_samples=n,
                                            algorithm_options={"rows_per_dim": r}), 0)
    table["obspa_512_round8"] = (dict(algorithm="obspa", calibration_data=xcal[:512], calibration_samples=512,
                                      round_to=8), 0)  # kept widths a multiple of the vector width
    for n in (128, 512, 2048):
        table[f"reconstruct_{n}"] = (dict(algorithm="reconstruct", calibration_data=xcal[:n], calibration_samples=n), 0)
    for n in (128, 512, 2048):
        table[f"obspa_reconstruct_{n}"] = (dict(algorithm="reconstruct", calibration_data=xcal[:n], calibration_samples=n,
                                                algorithm_options={"start": "obspa"}), 0)
    table["l2_finetune_1epoch"] = (dict(criterion="l2"), 1)
    return table


def run(model, name, target, method, kwargs, ft_epochs, data):
    (xtr, ytr), (xte, yte) = data
    base = count_macs(spa.inspect(model).graph)
    t0 = time.perf_counter()
    slim = spa.prune(model, target_macs=target, verbose=False, **kwargs)
    if ft_epochs:
        slim.compile(optimizer=keras.optimizers.Adam(1e-4), loss=LOSS, metrics=["accuracy"])
        slim.fit(xtr, ytr, batch_size=128, epochs=ft_epochs, verbose=0)
    seconds = time.perf_counter() - t0
    acc = accuracy(slim, xte, yte)
    macs = count_macs(spa.inspect(slim).graph)
    row = dict(model=name, target=target, method=method, accuracy=round(acc, 4), macs=macs,
               macs_fraction=round(macs / base, 4), params=int(slim.count_params()), seconds=round(seconds, 1))
    print(json.dumps(row), flush=True)
    return row


def calibration_choice(data, targets, output, epochs, n=128, pool=10000, seeds=3):
    """OBSPA on the ResNet-20 with ``n`` calibration samples chosen by ``dp.calibration_subset`` (k-means and
    k-center over the penultimate features, stratified by the model's predicted class: the samples are
    unlabeled) against random draws, from the same pool of ``pool`` training images; ``seeds`` draws of
    the random and k-means choices. Adds ``calibration_choice`` to the JSON."""
    from spa_keras import data_pruning as dp

    (xtr, _), (xte, yte) = data
    model = trained("resnet20", data, epochs)
    xpool = xtr[np.random.default_rng(1).permutation(len(xtr))[:pool]]
    rows = []
    for target in targets:
        for method in ("random", "kmeans", "kcenter"):
            for seed in range(1 if method == "kcenter" else seeds):
                t0 = time.perf_counter()
                if method == "random":
                    idx = np.random.default_rng(seed).permutation(pool)[:n]
                else:
                    idx = dp.calibration_subset(model, xpool, n=n, method=method, seed=seed)
                choose_s = time.perf_counter() - t0
                slim = spa.prune(model, target_macs=target, verbose=False, algorithm="obspa",
                                 calibration_data=xpool[idx], calibration_samples=n)
                rows.append(dict(model="resnet20", target=target, method=method, seed=seed, samples=n,
                                 accuracy=round(accuracy(slim, xte, yte), 4), choose_seconds=round(choose_s, 1),
                                 seconds=round(time.perf_counter() - t0, 1)))
                print(json.dumps(rows[-1]), flush=True)
    results = {"rows": [], "unpruned": {}}
    if os.path.exists(output):
        with open(output) as f:
            results = json.load(f)
    results["calibration_choice"] = dict(model="resnet20", model_epochs=epochs, samples=n, pool=pool,
                                         unpruned_accuracy=round(accuracy(model, xte, yte), 4), rows=rows)
    write_json(results, output)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet20,mobilenetv2")
    ap.add_argument("--targets", default="0.5,0.3333")
    ap.add_argument("--methods", default=None, help="comma-separated subset of the methods")
    ap.add_argument("--epochs", type=int, default=5, help="training epochs of the cached models")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--output", default=RESULTS)
    ap.add_argument("--calibration-choice", action="store_true",
                    help="only compare calibration samples chosen by dp.calibration_subset with random ones "
                         "(OBSPA, 128 samples, ResNet-20)")
    args = ap.parse_args(argv)
    data = load_data()
    if args.calibration_choice:
        return calibration_choice(data, [float(t) for t in args.targets.split(",")], args.output, args.epochs) or 0
    (xtr, ytr), (xte, yte) = data
    rng = np.random.default_rng(0)
    xcal = xtr[rng.permutation(len(xtr))[:2048]]  # unlabeled calibration samples from the training set
    results = {"rows": [], "unpruned": {}}
    if os.path.exists(args.output):
        with open(args.output) as f:
            results = json.load(f)
    done = {(r["model"], r["target"], r["method"]) for r in results["rows"]}
    for name in args.models.split(","):
        model = trained(name, data, args.epochs)
        results["unpruned"][name] = dict(accuracy=round(accuracy(model, xte, yte), 4),
                                         macs=count_macs(spa.inspect(model).graph), params=int(model.count_params()))
        if args.train_only:
            continue
        table = method_table(xcal)
        methods = args.methods.split(",") if args.methods else list(table)
        for target in (float(t) for t in args.targets.split(",")):
            for method in methods:
                if (name, target, method) in done:
                    continue
                kwargs, ft = table[method]
                results["rows"].append(run(model, name, target, method, kwargs, ft, data))
                write_json(results, args.output)
    write_json(results, args.output)
    return 0


def write_json(results, path):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)

    atomic_write(path, write, overwrite=True)


if __name__ == "__main__":
    sys.exit(main())
