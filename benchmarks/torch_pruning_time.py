"""Torch-Pruning's time for a torchvision model: graph, group-L2 scores and pruning at a ratio, the
classifier ignored; best of --repeats, wall and process CPU seconds, printed as one JSON line.

It imports only torch, torchvision and torch_pruning, so that `benchmarks/zoo.py` can run it in the
export environment of `benchmarks/make_export_env.sh` (torchvision does not import beside the project's
CPU torch, and TensorFlow must not share a process with triton).

    ~/.cache/spa_keras/torchvision-venv/bin/python benchmarks/torch_pruning_time.py resnet50 224 0.5
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a torchvision.models constructor, e.g. resnet50")
    ap.add_argument("size", type=int)
    ap.add_argument("ratio", type=float)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    import torch
    import torch_pruning as tp
    import torchvision

    module = getattr(torchvision.models, args.model)(weights=None).eval()
    example = torch.randn(1, 3, args.size, args.size)
    times = []
    for _ in range(args.repeats):
        m = copy.deepcopy(module)
        t0, c0 = time.perf_counter(), time.process_time()
        head = [h for h in m.modules() if isinstance(h, torch.nn.Linear)][-1:]
        pruner = tp.pruner.MetaPruner(m, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=args.ratio, ignored_layers=head)
        pruner.step()
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    print(json.dumps(dict(torch_pruning_s=min(t[0] for t in times), torch_pruning_cpu_s=min(t[1] for t in times),
                          torch_pruning_version=getattr(tp, "__version__", "?"), torch_version=torch.__version__)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
