"""One architecture pruned to half its MACs at three times in its life, on Fashion-MNIST:

- before training: SNIP scores at initialisation, prune, then train;
- during training: PruningCallback (soft masks on a polynomial schedule), then strip;
- after training: train, prune by group L2, fine-tune with distillation from the original;

against the unpruned model trained as long. Writes benchmarks/results/any_time.json.

    python examples/fashion_mnist_any_time.py              # needs dataset-fashion-mnist (Debian)
    python examples/fashion_mnist_any_time.py --smoke      # seconds, synthetic data if the dataset is absent
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers as L  # noqa: E402

import spa_keras as spa  # noqa: E402
from spa_keras.metrics import count_macs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def build(seed=0):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((28, 28, 1))
    x = inp
    for i, width in enumerate((32, 64, 96)):
        x = L.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}a")(x)
        x = L.ReLU()(L.BatchNormalization(momentum=0.9)(x))
        y = L.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}b")(x)
        y = L.BatchNormalization(momentum=0.9)(y)
        x = L.ReLU()(L.Add()([x, y]))
        if i < 2:
            x = L.MaxPooling2D()(x)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(128, activation="relu", name="fc")(x)
    return keras.Model(inp, L.Dense(10, name="logits")(x), name="fmnist_cnn")


def compile_(model):
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=LOSS, metrics=["accuracy"])
    return model


def accuracy(model, x, y):
    pred = np.concatenate([np.asarray(model(x[i : i + 1000], training=False)) for i in range(0, len(x), 1000)])
    return float((pred.argmax(-1) == y).mean())


def macs_fraction(model, base):
    return count_macs(spa.inspect(model).graph) / base


def load(smoke):
    try:
        (xtr, ytr), (xte, yte) = spa.datasets.load_fashion_mnist()
    except spa.PruningError:
        if not smoke:
            raise
        rng = np.random.default_rng(0)
        xtr, ytr = rng.random((2000, 28, 28, 1), "float32"), rng.integers(0, 10, 2000).astype("int32")
        xte, yte = xtr[:500], ytr[:500]
    if smoke:
        xtr, ytr, xte, yte = xtr[:2000], ytr[:2000], xte[:500], yte[:500]
    return xtr, ytr, xte, yte


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--target-macs", type=float, default=0.5)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "benchmarks", "results", "any_time.json"))
    args = ap.parse_args(argv)
    epochs = 1 if args.smoke else args.epochs
    xtr, ytr, xte, yte = load(args.smoke)
    fit = dict(epochs=epochs, batch_size=128, verbose=0)
    base = count_macs(spa.inspect(build()).graph)
    results = {}

    t0 = time.perf_counter()
    dense = compile_(build())
    dense.fit(xtr, ytr, **fit)
    results["unpruned"] = dict(accuracy=accuracy(dense, xte, yte), seconds=time.perf_counter() - t0, macs=1.0)

    t0 = time.perf_counter()
    init = build()
    slim = spa.prune(init, target_macs=args.target_macs, criterion="snip", data=(xtr[:512], ytr[:512]))
    compile_(slim).fit(xtr, ytr, **fit)
    results["before_training"] = dict(accuracy=accuracy(slim, xte, yte), seconds=time.perf_counter() - t0,
                                      macs=macs_fraction(slim, base))

    t0 = time.perf_counter()
    during = compile_(build())
    during.fit(xtr, ytr, callbacks=[spa.PruningCallback(target_macs=args.target_macs, frequency=50)], **fit)
    slim = spa.strip(during)
    results["during_training"] = dict(accuracy=accuracy(slim, xte, yte), seconds=time.perf_counter() - t0,
                                      macs=macs_fraction(slim, base))

    t0 = time.perf_counter()
    after = compile_(build())
    after.fit(xtr, ytr, **fit)
    slim = spa.prune(after, target_macs=args.target_macs)
    pruned_acc = accuracy(slim, xte, yte)
    slim, _ = spa.finetune(slim, (xtr, ytr), epochs=1, teacher=after, batch_size=128, verbose=0)
    results["after_training_finetuned"] = dict(accuracy=accuracy(slim, xte, yte), seconds=time.perf_counter() - t0,
                                               macs=macs_fraction(slim, base), accuracy_before_finetune=pruned_acc)

    for k, v in results.items():
        print(f"{k:<26} accuracy {v['accuracy']:.4f}  MACs {v['macs']:.3f}  {v['seconds']:.1f} s")
    if not args.smoke:
        out = dict(epochs=epochs, target_macs=args.target_macs, base_macs=base, results=results)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
