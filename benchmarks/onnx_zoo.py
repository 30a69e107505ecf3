"""PyTorch classification models exported to ONNX (both exporters), pruned at ratio 0.5 as ONNX, and
converted to Keras with spa.from_onnx. Writes benchmarks/results/onnx_zoo.json.

Models: torchvision's classification models (weights=None) where torchvision imports; otherwise the
ResNet-18, ResNet-50 and MobileNetV2 defined below (torchvision cannot be imported beside the CPU
torch 2.13 build that this project tests with).

    python benchmarks/onnx_zoo.py [--size 224]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import spa_keras as spa  # noqa: E402
from spa_keras.backends.onnx import run_onnx, verify_onnx  # noqa: E402
from spa_keras.frontends.onnx import from_onnx_model  # noqa: E402
from spa_keras.metrics import count_macs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, bottleneck=False):
        super().__init__()
        mid = cout // 4 if bottleneck else cout
        layers = ([nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                   nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                   nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)] if bottleneck else
                  [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                   nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)])
        self.body = nn.Sequential(*layers)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


def resnet(blocks, bottleneck, classes=1000):
    widths = [256, 512, 1024, 2048] if bottleneck else [64, 128, 256, 512]
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, (n, w) in enumerate(zip(blocks, widths)):
        for j in range(n):
            layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1, bottleneck))
            cin = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        mid = cin * t
        layers = ([nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6()] if t != 1 else [])
        layers += [nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
                   nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v2(classes=1000):
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    layers = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
    cin = 32
    for t, c, n, s in cfg:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(), nn.AdaptiveAvgPool2d(1),
               nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, classes)]
    return nn.Sequential(*layers)


def model_list():
    try:
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
        return {n: (lambda n=n: torchvision.models.get_model(n, weights=None)) for n in names}
    except Exception:  # noqa: BLE001 - not importable beside this torch
        return {"resnet18": lambda: resnet([2, 2, 2, 2], False), "resnet50": lambda: resnet([3, 4, 6, 3], True),
                "mobilenet_v2": mobilenet_v2}


def export(module, size, dynamo):
    module.eval()
    x = torch.randn(1, 3, size, size)
    f = io.BytesIO()
    torch.onnx.export(module, (x,), f, dynamo=dynamo, input_names=["x"], output_names=["y"],
                      **({} if dynamo else {"opset_version": 17}))
    return onnx.load_from_string(f.getvalue()), x.numpy()


def bench(name, build, size, dynamo):
    torch.manual_seed(0)
    model, x = export(build(), size, dynamo)
    t0 = time.perf_counter()
    og = from_onnx_model(model)
    plan = spa.plan(og, ratio=0.5)
    plan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    slim = spa.apply(plan)
    apply_s = time.perf_counter() - t0
    row = dict(model=name, exporter="dynamo" if dynamo else "torchscript", size=size,
               macs_before=count_macs(og.graph), macs_after=count_macs(og.graph, plan),
               plan_s=plan_s, apply_s=apply_s, oracle_passed=verify_onnx(og, plan, slim, x)["passed"])
    try:
        t0 = time.perf_counter()
        k = spa.from_onnx(slim)
        row["from_onnx_s"] = time.perf_counter() - t0
        row["keras_max_abs_diff"] = float(np.abs(np.asarray(k(x)) - run_onnx(slim, x)[0]).max())
        row["keras_matches"] = row["keras_max_abs_diff"] <= 1e-3 * max(1.0, float(np.abs(run_onnx(slim, x)[0]).max()))
    except spa.PruningError as e:
        row["keras_matches"], row["keras_error"] = False, str(e)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "onnx_zoo.json"))
    args = ap.parse_args(argv)
    rows = []
    for name, build in model_list().items():
        for dynamo in (False, True):
            try:
                row = bench(name, build, args.size, dynamo)
            except Exception as e:  # noqa: BLE001 - a failure is a result
                row = dict(model=name, exporter="dynamo" if dynamo else "torchscript", error=f"{type(e).__name__}: {e}")
            print(json.dumps(row), flush=True)
            rows.append(row)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dict(models=rows), f, indent=1)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
