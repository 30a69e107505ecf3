"""Render the JSON results in benchmarks/results/ as the Markdown tables of docs/benchmarks.md.

    python benchmarks/render.py            # prints the tables
"""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def load(name):
    path = os.path.join(HERE, "results", name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def zoo_table(data) -> str:
    rows = [
        "| model | GMACs before → after | MACs ÷ | params (M) before → after | plan (s) | rebuild (s) | "
        "clone_model (s) | Keras build (s) | oracle | latency b=8 (s) before → after | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["models"]:
        if "error" in r:
            rows.append(f"| {r['model']} | error: {r['error']} |" + " |" * 9)
            continue
        lat = (f"{r['latency_before_s']:.3f} → {r['latency_after_s']:.3f} | {r['speedup']:.2f}x"
               if "speedup" in r else "– | –")
        rows.append(
            f"| {r['model']} | {r['macs_before'] / 1e9:.2f} → {r['macs_after'] / 1e9:.2f} | {r['macs_reduction']:.2f} | "
            f"{r['params_before'] / 1e6:.1f} → {r['params_after'] / 1e6:.1f} | {r['plan_s']:.3f} | {r['rebuild_s']:.2f} | "
            f"{r['clone_model_s']:.2f} | {r['keras_build_slim_s']:.2f} | {'pass' if r['oracle_passed'] else 'FAIL'} | {lat} |"
        )
    return "\n".join(rows)


def any_time_table(data) -> str:
    rows = ["| when | test accuracy | MACs (fraction) | wall time (s) |", "|---|---|---|---|"]
    for k, v in data["results"].items():
        extra = f" (before fine-tuning: {v['accuracy_before_finetune']:.4f})" if "accuracy_before_finetune" in v else ""
        rows.append(f"| {k.replace('_', ' ')} | {v['accuracy']:.4f}{extra} | {v['macs']:.3f} | {v['seconds']:.1f} |")
    return "\n".join(rows)


def onnx_table(data) -> str:
    rows = ["| model | exporter | GMACs before → after | plan (s) | apply (s) | oracle (onnxruntime) | from_onnx matches |",
            "|---|---|---|---|---|---|---|"]
    for r in data["models"]:
        if "error" in r:
            rows.append(f"| {r['model']} | {r['exporter']} | error: {r['error'][:80]} | | | | |")
            continue
        rows.append(f"| {r['model']} | {r['exporter']} | {r['macs_before'] / 1e9:.2f} → {r['macs_after'] / 1e9:.2f} | "
                    f"{r['plan_s']:.2f} | {r['apply_s']:.2f} | {'pass' if r['oracle_passed'] else 'FAIL'} | "
                    f"{'yes' if r.get('keras_matches') else 'no: ' + r.get('keras_error', '')[:60]} |")
    return "\n".join(rows)


def fuzz_table(data) -> str:
    rows = ["| frontend | architectures tried | pruned (channels removed) | oracle-checked | shapes only | failures "
            "| seconds |", "|---|---|---|---|---|---|---|"]
    for kind, label in (("keras", "Keras (random functional models)"), ("keras_mixed_float16", "Keras, mixed_float16"),
                        ("onnx", "ONNX (random PyTorch modules)")):
        r = data.get(kind)
        if not r or "skipped" in r:
            continue
        rows.append(f"| {label} | {r['examples']} | {r['removed_channels']} | {r['oracle_checked']} | {r['shape_only']} | "
                    f"{len(r['failures'])} | {r['seconds']:.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    for name, fn in (("zoo.json", zoo_table), ("any_time.json", any_time_table), ("onnx_zoo.json", onnx_table),
                     ("fuzz.json", fuzz_table)):
        data = load(name)
        if data is not None:
            print(f"## {name}\n\n{fn(data)}\n")
