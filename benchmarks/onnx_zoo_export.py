"""Export torchvision's classification models to ONNX with both PyTorch exporters.

Runs in the export environment (``benchmarks/make_export_env.sh``), never beside TensorFlow: it imports
only torch, torchvision and onnx. ``benchmarks/onnx_zoo.py`` starts it as a subprocess, one model at a
time, so that a crash loses one model only.

    python benchmarks/onnx_zoo_export.py --list                   # the model names, one a line
    python benchmarks/onnx_zoo_export.py resnet18 --out DIR [--exporters torchscript,dynamo]

For each model and exporter it writes ``DIR/<model>.<exporter>.onnx`` (skipped when it exists) and
``DIR/<model>.<exporter>.json``: ``status`` ("ok" or "failed"), ``reason``, the input
size, the export time, and the largest difference between onnxruntime-free torch outputs and the
ONNX file is left to the benchmark (``DIR/<model>.io.npz`` holds the input and torch's output).
Models are built with ``weights=None`` (nothing is downloaded) after ``torch.manual_seed(0)``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback

PROTOBUF_LIMIT = 2 * 1024**3  # one ONNX file without external data holds at most 2 GiB: beyond, a .data file


def input_size(name, model, torchvision):
    """The model's default input size: its fixed ``image_size`` (ViT), else the crop size of its
    default weights' transforms (what torchvision documents it at), else 224."""
    if getattr(model, "image_size", None):
        return int(model.image_size)
    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        crop = weights.transforms().crop_size
        return int(crop[0] if isinstance(crop, (list, tuple)) else crop)
    except Exception:  # noqa: BLE001 - no weights listed: the usual size
        return 224


def _write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def export_one(name, exporter, model, x, path, large=False):
    """Export to ``path``; a model over protobuf's 2 GiB (``large``) keeps its weights in one file beside
    it, ``<model>.<exporter>.onnx.data`` (the exporters write them to a scratch folder, file by tensor
    for TorchScript, and they are gathered there)."""
    import shutil
    import tempfile

    import onnx
    import torch

    t0 = time.perf_counter()
    scratch = tempfile.mkdtemp(prefix=f"{name}.{exporter}.", dir=os.path.dirname(path)) if large else None
    tmp = os.path.join(scratch, "model.onnx") if large else f"{path}.{os.getpid()}.tmp.onnx"
    try:
        if exporter == "torchscript":
            torch.onnx.export(model, (x,), tmp, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
        else:
            program = torch.onnx.export(model, (x,), dynamo=True, input_names=["x"], output_names=["y"],
                                        external_data=large)
            program.save(tmp, external_data=large)
        seconds = time.perf_counter() - t0
        if large:  # one data file named after the final file, written beside it
            proto = onnx.load(tmp)
            final = f"{path}.{os.getpid()}.tmp.onnx"
            onnx.save(proto, final, save_as_external_data=True, all_tensors_to_one_file=True,
                      location=os.path.basename(path) + ".data", size_threshold=1024 * 1024)
            del proto
            tmp = final
        onnx.checker.check_model(tmp)
        os.replace(tmp, path)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return seconds


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("--out", default=os.path.expanduser("~/.cache/spa_keras/onnx_zoo"))
    ap.add_argument("--exporters", default="torchscript,dynamo")
    ap.add_argument("--list", action="store_true", help="print the model names and exit")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if args.list:
        print("\n".join(names))
        return 0
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    for name in args.models:
        exporters = args.exporters.split(",")
        todo = [e for e in exporters if not os.path.exists(os.path.join(args.out, f"{name}.{e}.json"))]
        if not todo:
            continue
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        size = input_size(name, model, torchvision)
        n_params = sum(p.numel() for p in model.parameters())
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            y = model(x)
        y = y[0] if isinstance(y, (tuple, list)) else y
        io_tmp = os.path.join(args.out, f"{name}.io.{os.getpid()}.tmp.npz")
        np.savez(io_tmp, x=x.numpy(), y=y.numpy())
        os.replace(io_tmp, os.path.join(args.out, f"{name}.io.npz"))
        for exporter in todo:
            path = os.path.join(args.out, f"{name}.{exporter}.onnx")
            meta = dict(model=name, exporter=exporter, size=size, params=n_params, torch=torch.__version__,
                        torchvision=torchvision.__version__)
            large = n_params * 4 >= PROTOBUF_LIMIT
            if large:
                meta["external_data"] = os.path.basename(path) + ".data"
            try:
                meta.update(status="ok", export_s=export_one(name, exporter, model, x, path, large))
            except Exception as e:  # noqa: BLE001 - a failure is a result
                last = traceback.format_exception_only(type(e), e)[-1].strip()
                meta.update(status="failed", reason=last[:2000])
                for p in (f"{path}.{os.getpid()}.tmp.onnx", f"{path}.{os.getpid()}.tmp.onnx.data") + (f"{path}.data",) * large:
                    if os.path.exists(p):
                        os.remove(p)
            _write_json(os.path.join(args.out, f"{name}.{exporter}.json"), meta)
            print(json.dumps(meta), flush=True)
        del model
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
