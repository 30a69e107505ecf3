"""A PyTorch model to TF Serving through ONNX, pruned on the way.

A small ResNet written in PyTorch (no torchvision) is exported to ONNX, pruned as ONNX by spa_keras
(the ONNX backend slices the initializers), turned into a Keras model with spa.from_onnx, exported as
a SavedModel in the TF Serving layout, loaded back with tf.saved_model.load and called through its
serving_default signature; its outputs are checked against the pruned ONNX model in onnxruntime.

    python examples/torch_onnx_to_serving.py --out models/tiny_resnet --ratio 0.5
    python examples/torch_onnx_to_serving.py --smoke        # seconds, in a temporary folder
"""

import argparse
import os
import tempfile
import warnings

import torch  # before TensorFlow: CUDA builds of torch bring triton, which segfaults if imported after it
from torch import nn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import spa_keras as spa  # noqa: E402
from spa_keras.backends.onnx import run_onnx  # noqa: E402


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


class TinyResNet(nn.Module):
    def __init__(self, widths=(16, 32, 64), classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [Block(cin, w, 1 if i == 0 else 2), Block(w, w, 1)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", help="TF Serving base directory (default: a temporary folder)")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--smoke", action="store_true", help="a small, quick run")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    net = TinyResNet((8, 16, 32) if args.smoke else (16, 32, 64)).eval()
    x = torch.randn(1, 3, args.size, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = os.path.join(tmp, "tiny_resnet.onnx")
        # the TorchScript exporter (dynamo=False) needs no onnxscript; BatchNorm is folded into the convs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based exporter"
            torch.onnx.export(net, x, onnx_path, input_names=["image"], output_names=["logits"], dynamo=False,
                              opset_version=17)
        print(spa.inspect(onnx_path).__str__().splitlines()[0])

        slim_onnx = spa.prune(onnx_path, ratio=args.ratio, verbose=True, report=os.path.join(tmp, "report"))
        keras_model = spa.from_onnx(slim_onnx)                 # NCHW input, like the ONNX model
        base = args.out or os.path.join(tmp, "serving", "tiny_resnet")
        version_dir = spa.export_for_serving(keras_model, base)
        print("exported to", version_dir)

        sig = tf.saved_model.load(version_dir).signatures["serving_default"]
        name = list(sig.structured_input_signature[1])[0]
        batch = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype("float32")
        served = list(sig(**{name: tf.constant(batch)}).values())[0].numpy()
        expected = run_onnx(slim_onnx, batch)[0]
        err = float(np.abs(served - expected).max())
        print(f"signature input {name!r}; served output {served.shape}, max difference from onnxruntime {err:.2e}")
        assert err < 1e-3, err
        with torch.no_grad():
            full = net(torch.from_numpy(batch)).numpy()
        print(f"original torch output {full.shape}; the slim model keeps the shape: {served.shape == full.shape}")
        print("served through TF Serving signature: ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
