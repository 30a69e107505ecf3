"""The same ResNet-20 trained in PyTorch: Torch-Pruning against spa_keras on identical weights.

Trains (once, cached in benchmarks/cache/) the ResNet-20 of benchmarks/post_training.py in PyTorch on
Fashion-MNIST, then, with no fine-tuning, at 2x and 3x fewer MACs:

- Torch-Pruning's group L2 magnitude pruner (if ``torch_pruning`` is installed), the pruning ratio
  bisected to the MACs target;
- the identical weights exported to ONNX, pruned there by spa_keras (group L2, onnxruntime accuracy);
- the same ONNX file brought into Keras with ``spa.from_onnx`` and pruned by spa_keras: group L2,
  OBSPA without data, OBSPA with 512 calibration samples.

Writes benchmarks/results/post_training_torch.json.

    python benchmarks/post_training_torch.py [--epochs 4]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402  (CPU torch, imported before TensorFlow)
from torch import nn  # noqa: E402

import spa_keras as spa  # noqa: E402
from spa_keras.backends.onnx import run_onnx  # noqa: E402
from spa_keras.io import atomic_write  # noqa: E402
from spa_keras.metrics import count_macs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, "cache")
RESULTS = os.path.join(HERE, "results", "post_training_torch.json")
MEAN, STD = 0.2860, 0.3530


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride > 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu((x if self.short is None else self.short(x)) + y)


class ResNet20(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks, cin = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for b in range(3):
                blocks.append(Block(cin, width, 2 if stage > 0 and b == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def load_data():
    (xtr, ytr), (xte, yte) = spa.datasets.load_fashion_mnist()
    nchw = lambda x: np.ascontiguousarray(((x - MEAN) / STD).transpose(0, 3, 1, 2))  # noqa: E731
    return (nchw(xtr), ytr), (nchw(xte), yte)


def torch_accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        pred = np.concatenate([model(torch.from_numpy(x[i:i + 1000])).numpy() for i in range(0, len(x), 1000)])
    return float((pred.argmax(-1) == y).mean())


def trained(data, epochs):
    path = os.path.join(CACHE, "resnet20_torch.pt")
    model = ResNet20()
    if os.path.exists(path):
        model.load_state_dict(torch.load(path))
        return model
    (xtr, ytr), (xte, yte) = data
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    steps = epochs * int(np.ceil(len(xtr) / 128))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr.astype(np.int64))
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 128):
            idx = perm[i:i + 128]
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}: test accuracy {torch_accuracy(model, xte, yte):.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    os.makedirs(CACHE, exist_ok=True)
    torch.save(model.state_dict(), path + ".tmp")
    os.replace(path + ".tmp", path)
    return model


def torch_pruning_to(model, target, example):
    """Torch-Pruning's group L2 magnitude pruner, ratio bisected so the MACs land on ``target``."""
    import torch_pruning as tp

    base, _ = tp.utils.count_ops_and_params(model, example)
    lo, hi, best = 0.0, 0.95, None
    for _ in range(14):
        ratio = (lo + hi) / 2
        m = copy.deepcopy(model)
        pruner = tp.pruner.MagnitudePruner(m, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                           pruning_ratio=ratio, ignored_layers=[m.fc])
        pruner.step()
        macs, _ = tp.utils.count_ops_and_params(m, example)
        if macs > target * base:
            lo = ratio
        else:
            hi, best = ratio, (m, macs / base)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--targets", default="0.5,0.3333")
    ap.add_argument("--output", default=RESULTS)
    args = ap.parse_args(argv)
    data = load_data()
    (xtr, ytr), (xte, yte) = data
    model = trained(data, args.epochs)
    example = torch.zeros(1, 1, 28, 28)
    results = {"unpruned": {"torch": torch_accuracy(model, xte, yte)}, "rows": []}
    onnx_path = os.path.join(CACHE, "resnet20_torch.onnx")
    model.eval()
    torch.onnx.export(model, (example,), onnx_path, dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    keras_model = spa.from_onnx(onnx_path)
    ort_accuracy = lambda m: float((np.concatenate([run_onnx(m, {"x": xte[i:i + 1000]})[0]  # noqa: E731
                                                    for i in range(0, len(xte), 1000)]).argmax(-1) == yte).mean())
    keras_accuracy = lambda m: float((m.predict(xte, batch_size=500, verbose=0).argmax(-1) == yte).mean())  # noqa: E731
    results["unpruned"]["keras_from_onnx"] = keras_accuracy(keras_model)
    rng = np.random.default_rng(0)
    xcal = xtr[rng.permutation(len(xtr))[:512]]
    base = count_macs(spa.inspect(keras_model).graph)

    def row(method, target, acc, frac, seconds):
        r = dict(method=method, target=target, accuracy=round(acc, 4), macs_fraction=round(frac, 4),
                 seconds=round(seconds, 1))
        print(json.dumps(r), flush=True)
        results["rows"].append(r)

    for target in (float(t) for t in args.targets.split(",")):
        try:
            t0 = time.perf_counter()
            pruned, frac = torch_pruning_to(model, target, example)
            row("torch_pruning_l2", target, torch_accuracy(pruned, xte, yte), frac, time.perf_counter() - t0)
        except ImportError:
            print("torch_pruning is not installed: its rows are left out")
        t0 = time.perf_counter()
        slim_onnx = spa.prune(onnx_path, target_macs=target, criterion="l2")
        frac = count_macs(spa.inspect(slim_onnx).graph) / count_macs(spa.inspect(onnx_path).graph)
        row("spa_onnx_l2", target, ort_accuracy(slim_onnx), frac, time.perf_counter() - t0)
        for method, kwargs in (("spa_keras_l2", dict(criterion="l2")),
                               ("spa_keras_obspa_bn", dict(algorithm="obspa", data_free="bn")),
                               ("spa_keras_obspa_512", dict(algorithm="obspa", calibration_data=xcal))):
            t0 = time.perf_counter()
            slim = spa.prune(keras_model, target_macs=target, verbose=False, **kwargs)
            seconds = time.perf_counter() - t0
            row(method, target, keras_accuracy(slim), count_macs(spa.inspect(slim).graph) / base, seconds)

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)

    atomic_write(args.output, write, overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
