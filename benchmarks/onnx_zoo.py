"""torchvision's classification models, exported to ONNX with both PyTorch exporters, pruned as ONNX at
ratio 0.5 (group L2), checked with the zero-channel oracle on onnxruntime, and converted to Keras with
``spa.from_onnx``. Writes ``benchmarks/results/onnx_zoo.json``.

Two steps, two environments:

1. **Export** (``benchmarks/onnx_zoo_export.py``) runs in a virtual environment with torch 2.14.1 and
   torchvision 0.29.1 and no TensorFlow (``benchmarks/make_export_env.sh`` makes it, under
   ``~/.cache/spa_keras/torchvision-venv``; torchvision cannot be imported beside the project's CPU
   torch, and triton imported after TensorFlow kills the process). Every model in
   ``torchvision.models.list_models(module=torchvision.models)`` is built with ``weights=None`` at its
   default input size and exported with TorchScript (``dynamo=False``, opset 17) and dynamo (opset 18)
   to ``~/.cache/spa_keras/onnx_zoo/<model>.<exporter>.onnx``; files already there are kept.
2. **Pruning** runs here, one subprocess per file (a crash or a timeout loses one file only), and
   caches each file's result in ``~/.cache/spa_keras/onnx_zoo/results/`` so that a run can stop and
   resume; the summary JSON is rewritten after every file.

    python benchmarks/onnx_zoo.py                                  # everything (export, then prune)
    python benchmarks/onnx_zoo.py --models 'resnet*,vit_b_16' --exporters dynamo
    python benchmarks/onnx_zoo.py --export-only                    # step 1 only
    python benchmarks/onnx_zoo.py --rerun failed                   # prune again what did not pass
    python benchmarks/onnx_zoo.py --one ~/.cache/spa_keras/onnx_zoo/resnet18.dynamo.onnx   # one file, printed

A row is ``ok`` when the model prunes (fewer MACs), the oracle passes and ``from_onnx`` matches
onnxruntime. Latency is onnxruntime's (CPU, default threads), medians, at batch 1 and at batch 8 (the
exported graphs fix the batch at 1; the batch-8 model is the same file with its batch rewritten,
checked against eight batch-1 runs, and left out where the graph folds the batch into other axes).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import onnx  # noqa: E402

from common import code_version  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # this checkout's spa_keras, not an installed one
CACHE = os.path.expanduser("~/.cache/spa_keras")
EXPORTERS = ("torchscript", "dynamo")
BLIND = 1e-3  # output moves less than the checks' tolerance (relative) between two inputs: they are blind


# ---- step 1: export ------------------------------------------------------------------------------


def export_env(venv):
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        subprocess.run(["bash", os.path.join(HERE, "make_export_env.sh"), venv], check=True)
    return python


def model_names(python):
    out = subprocess.run([python, os.path.join(HERE, "onnx_zoo_export.py"), "--list"], check=True,
                         capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def export(python, names, exporters, cache, timeout):
    for name in names:
        if all(os.path.exists(os.path.join(cache, f"{name}.{e}.json")) for e in exporters):
            continue
        print(f"export {name}", flush=True)
        cmd = ["nice", "-n", "10", python, os.path.join(HERE, "onnx_zoo_export.py"), name, "--out", cache,
               "--exporters", ",".join(exporters)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            reason = f"the exporter exited with {r.returncode}: {r.stderr.strip()[-500:]}" if r.returncode else None
        except subprocess.TimeoutExpired:
            reason = f"the export took longer than {timeout} s"
        for e in exporters:  # a crash or a timeout is recorded as an export failure
            meta = os.path.join(cache, f"{name}.{e}.json")
            if reason and not os.path.exists(meta):
                _write_json(meta, dict(model=name, exporter=e, status="failed", reason=reason))


# ---- step 2: prune one file (in a subprocess) ---------------------------------------------------


def _median_latency(session, feed, budget_s=5.0, repeats=5):
    session.run(None, feed)  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def rebatch(model, n):
    """The same model with its (exported, fixed) batch of 1 set to ``n``: the graph input and any
    Reshape shape constant that starts with the batch. Checked by the caller."""
    import copy

    import onnx
    from onnx import numpy_helper

    m = copy.deepcopy(model)
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].dim_value = n
    del m.graph.value_info[:]
    inits = {i.name: i for i in m.graph.initializer}
    consts = {node.output[0]: node for node in m.graph.node if node.op_type == "Constant"}
    for node in m.graph.node:
        if node.op_type not in ("Reshape", "Expand") or len(node.input) < 2:
            continue
        name = node.input[1]
        if name in inits:
            value = numpy_helper.to_array(inits[name])
        elif name in consts:
            value = numpy_helper.to_array(consts[name].attribute[0].t)
        else:
            continue
        if value.ndim == 1 and len(value) > 1 and value[0] == 1:
            new = value.copy()
            new[0] = n
            fresh = f"{name}__b{n}_{node.name}"
            m.graph.initializer.append(numpy_helper.from_array(new.astype(value.dtype), fresh))
            node.input[1] = fresh
    from spa_keras.frontends.onnx.graph import skeleton

    onnx.checker.check_model(skeleton(m))  # the structure (a model over 2 GiB cannot be checked whole)
    return m


def latency(model, x, batches=(1, 8)):
    """``{"b1": seconds, "b8": seconds or None, "b8_reason": ...}`` in onnxruntime."""
    import numpy as np

    from spa_keras.frontends.onnx.runtime import session as ort_session

    out = {}
    name = model.graph.input[0].name
    for b in batches:
        key = f"b{b}"
        try:
            m = model if b == 1 else rebatch(model, b)
            session = ort_session(m)
            xb = np.concatenate([x] * b) if b > 1 else x
            if b > 1:
                xb = xb + np.arange(b, dtype=xb.dtype).reshape(-1, 1, 1, 1) * 0.1
                got = session.run(None, {name: xb})[0][[0, b - 1]]
                one = ort_session(model)
                want = np.concatenate([one.run(None, {name: xb[i:i + 1]})[0] for i in (0, b - 1)])
                if got.shape != want.shape or not np.allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(want).max())):
                    raise ValueError("the graph folds the batch into other axes")
            out[key] = _median_latency(session, {name: xb})
        except Exception as e:  # noqa: BLE001
            out[key], out[f"{key}_reason"] = None, f"batch {b} not measured: {str(e).splitlines()[0][:200]}"
    return out


def held_summary(graph, limit=8):
    """The reasons ops were held fixed, most frequent first, with counts."""
    from collections import Counter

    from spa_keras.report import held_fixed

    counts = Counter(h["reason"] for h in held_fixed(graph))
    return [dict(reason=r, ops=c) for r, c in counts.most_common(limit)]


def input_sensitivity(model, x):
    """How much the output moves between two inputs, relative to its size: near 0, the model's output
    does not depend on its input (vanishing activations) and no check at the output can see a channel."""
    import numpy as np

    from spa_keras.backends.onnx import run_onnx

    a = run_onnx(model, x)[0]
    b = run_onnx(model, np.random.default_rng(7).standard_normal(x.shape).astype(x.dtype))[0]
    scale = float(np.abs(a).max())
    return float(np.abs(a - b).max()) / scale if scale else 0.0


def slim_path(path):
    return os.path.join(os.path.dirname(path), "slim", os.path.basename(path))


def latency_one(path, row_path):
    """Add onnxruntime latencies to a cached row from the original file and the slim one it saved."""
    import numpy as np
    import onnx

    row = _load(row_path)
    base = os.path.basename(path)[: -len(".onnx")]
    io_path = os.path.join(os.path.dirname(path), f"{base.rsplit('.', 1)[0]}.io.npz")
    x = np.load(io_path)["x"]
    row["latency"] = dict(original=latency(sensitise(onnx.load(path)), x), slim=latency(onnx.load(slim_path(path)), x))
    _write_json(row_path, row)
    return row


def sensitise(model, seed=0):
    """The model with random values in place of every float initializer whose elements are all equal.

    torchvision's ``weights=None`` models start from constants that hide channels from any check at
    the output: ViT's head is all zeros (its output does not depend on the input at all), ConvNeXt and
    MaxViT scale each residual branch by 1e-6, norms hold ones. An oracle or a Keras conversion that was
    wrong about such a channel would still match. Zero matrices become N(0, 0.02) (zero biases stay:
    random ones would swamp the 1e-14 outputs of untrained EfficientNets), other
    constants ``c`` become ``c * U(0.5, 1.5)`` (``U(0.5, 1.5)`` when ``|c| < 1e-3``); initializers of
    fewer than 8 elements (shapes, scales) are kept. Shared initializers are untied first."""
    import numpy as np
    from onnx import numpy_helper

    from spa_keras.frontends.onnx.preprocess import untie_small_initializers

    untied = untie_small_initializers(model)
    if untied is model:
        import copy

        untied = copy.deepcopy(model)
    model = untied
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) < 8:
            continue
        value = numpy_helper.to_array(init)
        c = float(value.flat[0])
        if not np.all(value == c):
            continue
        if c == 0 and value.ndim < 2:
            continue  # a zero bias: random ones would swamp outputs that are small in untrained models
        if c == 0:
            new = rng.normal(0, 0.02, value.shape)
        else:
            new = rng.uniform(0.5, 1.5, value.shape) * (1.0 if abs(c) < 1e-3 else c)
        init.CopyFrom(numpy_helper.from_array(new.astype(np.float32), init.name))
    return model


CODE_VERSION = code_version()  # when this process started: the code it imported


def prune_one(path, keras_check=True, measure=True):
    """Everything measured for one ONNX file, as a dict (exceptions are caught stage by stage)."""
    import gc

    import numpy as np

    import spa_keras as spa
    from spa_keras.backends.onnx import apply_onnx_plan, run_onnx, verify_onnx
    from spa_keras.frontends.onnx import from_onnx_model
    from spa_keras.frontends.onnx.runtime import save as save_onnx_file
    from spa_keras.metrics import count_macs, count_params

    base = os.path.basename(path)[: -len(".onnx")]
    model_name, exporter = base.rsplit(".", 1)
    row = dict(model=model_name, exporter=exporter, code=CODE_VERSION)
    io_path = os.path.join(os.path.dirname(path), f"{model_name}.io.npz")
    stage = "load"
    try:
        model = onnx.load(path)
        shape = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
        row["size"] = shape[-1]
        if os.path.exists(io_path):
            io = np.load(io_path)
            x = io["x"]
            row["export_max_abs_diff"] = float(np.abs(run_onnx(model, x)[0] - io["y"]).max())
        else:
            x = np.random.default_rng(1).standard_normal(shape).astype("float32")
        model = sensitise(model)
        row["input_sensitivity"] = input_sensitivity(model, x)
        stage = "read"
        t0 = time.perf_counter()
        og = from_onnx_model(model)
        stage = "plan"
        plan = spa.plan(og, ratio=0.5, criterion="l2")
        row["plan_s"] = time.perf_counter() - t0
        row["macs_before"], row["macs_after"] = count_macs(og.graph), count_macs(og.graph, plan)
        row["params_before"], row["params_after"] = count_params(og.graph), count_params(og.graph, plan)
        row["removed_channels"] = int(plan.n_removed)
        row["held"] = held_summary(og.graph)
        stage = "apply"
        t0 = time.perf_counter()
        slim = apply_onnx_plan(og, plan, verify=False)  # spa.apply also runs the model beside the oracle:
        row["apply_s"] = time.perf_counter() - t0  # done here once, on the exported sample
        stage = "oracle"
        t0 = time.perf_counter()
        v = verify_onnx(og, plan, slim, x)
        row["oracle_s"] = time.perf_counter() - t0
        row["oracle_passed"], row["oracle_max_abs_diff"], row["oracle_scale"] = v["passed"], v["max_abs_diff"], v["scale"]
        row["pruned"] = row["macs_after"] < row["macs_before"]
        if keras_check:
            stage = "from_onnx"
            try:
                t0 = time.perf_counter()
                k = spa.from_onnx(slim)
                row["from_onnx_s"] = time.perf_counter() - t0
                want = run_onnx(slim, x)[0]
                got = np.asarray(k(x))
                row["keras_max_abs_diff"] = float(np.abs(got - want).max())
                row["keras_scale"] = float(np.abs(want).max())
                row["keras_matches"] = bool(row["keras_max_abs_diff"] <= 1e-3 * max(row["keras_scale"], 1e-30))
                del k
            except spa.PruningError as e:
                row["keras_matches"], row["keras_error"] = False, f"{type(e).__name__}: {e}"[:500]
            import keras

            keras.backend.clear_session()
            gc.collect()
        stage = "save"
        os.makedirs(os.path.join(os.path.dirname(path), "slim"), exist_ok=True)
        save_onnx_file(slim, slim_path(path))  # for a later latency pass (--latency-only)
        if measure:
            stage = "latency"
            before, after = latency(og.model, x), latency(slim, x)
            row["latency"] = dict(original=before, slim=after)
    except Exception as e:  # noqa: BLE001 - a failure is a result
        row["error"] = f"{type(e).__name__}: {e}"[:1500]
        row["stage"] = stage
    row["ok"] = bool(row.get("pruned") and row.get("oracle_passed") and row.get("keras_matches", not keras_check)
                     and "error" not in row)
    return row


# ---- the run ---------------------------------------------------------------------------------------


def _write_json(path, data):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _load(path):
    with open(path) as f:
        return json.load(f)


def summarise(rows):
    import numpy as np

    def ratio(r, b):
        lat = r.get("latency") or {}
        o, s = (lat.get("original") or {}).get(b), (lat.get("slim") or {}).get(b)
        return s / o if o and s else None

    ok = [r for r in rows if r.get("ok")]
    out = dict(files=len(rows), ok=len(ok), ok_fraction=len(ok) / max(1, len(rows)),
               models=len({r["model"] for r in rows}), pending=sum(bool(r.get("pending")) for r in rows),
               export_failed=sum(r.get("stage") == "export" and not r.get("pending") for r in rows))
    for b in ("b1", "b8"):
        rs = [x for x in (ratio(r, b) for r in ok) if x]
        out[f"median_latency_ratio_{b}"] = float(np.median(rs)) if rs else None
        out[f"latency_measured_{b}"] = len(rs)
    out["ok_input_blind"] = sum(r.get("input_sensitivity", 1.0) < BLIND for r in ok)
    out["ok_input_unmeasured"] = sum("input_sensitivity" not in r for r in ok)
    macs = [r["macs_after"] / r["macs_before"] for r in ok if r.get("macs_before")]
    out["median_macs_ratio"] = float(np.median(macs)) if macs else None
    return out


def select(names, patterns):
    if not patterns:
        return names
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    return [n for n in names if any(fnmatch.fnmatch(n, p) for p in pats)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="", help="comma-separated names or globs (default: every model)")
    ap.add_argument("--exporters", default=",".join(EXPORTERS))
    ap.add_argument("--cache", default=os.path.join(CACHE, "onnx_zoo"), help="exported files and per-file results")
    ap.add_argument("--venv", default=os.environ.get("SPA_EXPORT_VENV", os.path.join(CACHE, "torchvision-venv")))
    ap.add_argument("--out", default=os.path.join(HERE, "results", "onnx_zoo.json"))
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--skip-export", action="store_true", help="prune the files already exported")
    ap.add_argument("--rerun", choices=("none", "failed", "all"), default="none",
                    help="prune again files with a cached result: those not ok, or all")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds for one file's export or pruning")
    ap.add_argument("--no-keras", action="store_true", help="skip the from_onnx check")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--shard", type=lambda v: tuple(int(x) for x in v.split("/")), default=None,
                    help="K/N: prune every N-th model from the K-th (to run N processes side by side)")
    ap.add_argument("--smallest-first", action="store_true", help="prune the smallest files first")
    ap.add_argument("--latency-only", action="store_true",
                    help="measure latency for cached rows that passed and have none (after a --no-latency run)")
    ap.add_argument("--one", help="prune one .onnx file and print its row (what each subprocess runs)")
    ap.add_argument("--row-out", help=argparse.SUPPRESS)
    ap.add_argument("--many", nargs="+", help="prune these .onnx files in one process (rows in --row-dir)")
    ap.add_argument("--row-dir", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help="files pruned by one process (TensorFlow imported once)")
    args = ap.parse_args(argv)

    if args.many:
        import gc

        for path in args.many:
            row = prune_one(path, keras_check=not args.no_keras, measure=not args.no_latency)
            _write_json(os.path.join(args.row_dir, os.path.basename(path)[: -len(".onnx")] + ".json"), row)
            print(json.dumps(row), flush=True)
            gc.collect()
        return 0
    if args.one and args.latency_only:
        print(json.dumps(latency_one(args.one, args.row_out)), flush=True)
        return 0
    if args.one:
        row = prune_one(args.one, keras_check=not args.no_keras, measure=not args.no_latency)
        if args.row_out:
            _write_json(args.row_out, row)
        print(json.dumps(row), flush=True)
        return 0

    exporters = [e for e in args.exporters.split(",") if e]
    os.makedirs(args.cache, exist_ok=True)
    results_dir = os.path.join(args.cache, "results")
    os.makedirs(results_dir, exist_ok=True)
    listed = os.path.join(args.cache, "models.txt")
    if args.skip_export and os.path.exists(listed):
        with open(listed) as f:
            all_names = [line.strip() for line in f if line.strip()]
    elif args.skip_export:
        all_names = sorted({f.split(".")[0] for f in os.listdir(args.cache) if f.endswith(".json")})
    else:
        python = export_env(args.venv)
        all_names = model_names(python)
        with open(listed, "w") as f:
            f.write("\n".join(all_names) + "\n")
    names = select(all_names, args.models)
    if not args.skip_export:
        export(python, names, exporters, args.cache, args.timeout)
    if args.export_only:
        return 0

    pairs = [(name, e) for name in names for e in exporters]
    if args.smallest_first:  # the most files per hour: big models last
        size = lambda p: os.path.getsize(p) if os.path.exists(p) else float("inf")  # noqa: E731
        pairs.sort(key=lambda ne: size(os.path.join(args.cache, f"{ne[0]}.{ne[1]}.onnx")))
    todo = pairs[args.shard[0]::args.shard[1]] if args.shard else pairs
    pending = []
    for name, e in todo:
        meta_path = os.path.join(args.cache, f"{name}.{e}.json")
        cached = os.path.join(results_dir, f"{name}.{e}.json")
        if not os.path.exists(meta_path) or _load(meta_path).get("status") != "ok":
            continue  # an export failure is a row of its own (see collect)
        if args.latency_only:
            if os.path.exists(cached) and _load(cached).get("ok") and not _load(cached).get("latency"):
                print(f"latency {name} ({e})", flush=True)
                subprocess.run(["nice", "-n", "10", sys.executable, os.path.abspath(__file__), "--latency-only",
                                "--one", os.path.join(args.cache, f"{name}.{e}.onnx"), "--row-out", cached],
                               capture_output=True, timeout=args.timeout, cwd=ROOT)
                write_results(args.out, all_names, args.cache)
            continue
        if os.path.exists(cached) and (args.rerun == "none" or (args.rerun == "failed" and _load(cached).get("ok"))):
            continue
        if os.path.exists(cached):
            os.remove(cached)
        pending.append((name, e))
    for i in range(0, len(pending), args.batch):
        chunk = pending[i:i + args.batch]
        print("prune " + ", ".join(f"{n} ({e})" for n, e in chunk), flush=True)
        fail = _run_chunk(args, chunk, results_dir)
        for name, e in chunk:  # a crash loses the chunk's other files: each is tried again on its own
            cached = os.path.join(results_dir, f"{name}.{e}.json")
            if not os.path.exists(cached) and len(chunk) > 1:
                fail = _run_chunk(args, [(name, e)], results_dir)
            if not os.path.exists(cached):
                _write_json(cached, dict(model=name, exporter=e, ok=False, error=fail, stage="process"))
            row = _load(cached)
            print(json.dumps({k: row.get(k) for k in ("model", "exporter", "ok", "macs_before", "macs_after",
                                                      "oracle_passed", "keras_matches", "error")}), flush=True)
        write_results(args.out, all_names, args.cache)
    print(json.dumps(write_results(args.out, all_names, args.cache), indent=1))
    return 0


def _run_chunk(args, chunk, results_dir):
    """Prune the chunk's files in one process (TensorFlow is imported once); the failure, if any."""
    cmd = ["nice", "-n", "10", sys.executable, os.path.abspath(__file__), "--row-dir", results_dir, "--many"]
    cmd += [os.path.join(args.cache, f"{n}.{e}.onnx") for n, e in chunk]
    cmd += ["--no-keras"] * args.no_keras + ["--no-latency"] * args.no_latency
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout * len(chunk), cwd=ROOT,
                           env=dict(os.environ, PYTHONPATH=ROOT))
        return None if r.returncode == 0 else f"the pruning process exited with {r.returncode}: {r.stderr.strip()[-500:]}"
    except subprocess.TimeoutExpired:
        return f"pruning took longer than {args.timeout} s"


def collect(names, exporters, cache):
    """One row per model and exporter, from the export records and the cached pruning results (the
    source of truth, so that several runs can share a cache)."""
    rows = []
    for name in names:
        for e in exporters:
            meta_path = os.path.join(cache, f"{name}.{e}.json")
            cached = os.path.join(cache, "results", f"{name}.{e}.json")
            meta = _load(meta_path) if os.path.exists(meta_path) else None
            if meta is None:
                row = dict(model=name, exporter=e, ok=False, pending=True, error="not exported yet", stage="export")
            elif meta.get("status") != "ok":
                row = dict(model=name, exporter=e, ok=False, error=f"export {meta['status']}: {meta.get('reason')}",
                           stage="export")
            elif os.path.exists(cached):
                row = _load(cached)
            else:
                row = dict(model=name, exporter=e, ok=False, pending=True, error="not pruned yet", stage="prune")
            if meta:
                row.setdefault("size", meta.get("size"))
                row["export_s"] = meta.get("export_s")
            rows.append(row)
    return rows


def write_results(out, names, cache):
    """The whole table from the per-file results in ``cache``: every model with every exporter, whatever
    ``--exporters`` a run prunes with (a table of one exporter would drop the other's rows)."""
    rows = collect(names, EXPORTERS, cache)
    summary = summarise(rows)
    _write_json(out, dict(summary=summary, models=rows))
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
