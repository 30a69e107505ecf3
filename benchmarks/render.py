"""Render the JSON results in benchmarks/results/ as the Markdown tables of docs/benchmarks.md, and the
plots in docs/img/ (post-training accuracy against MACs, data pruning, transformer perplexity).

    python benchmarks/render.py            # prints the tables, writes the plot
"""

import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _save(fig, path, dpi):
    """Write the figure under a temporary name, then rename it into place."""
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)


def load(name):
    path = os.path.join(HERE, "results", name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _zoo_latency(r) -> str:
    """Batch 1 and 8 in the serving path (ms, before → after), the speed-ups and batch 8's efficiency; rows of
    the older format (one eager batch-8 figure under load) are marked *."""
    lat = r.get("latency")
    if isinstance(lat, dict) and lat:
        cells = []
        for b in ("b1", "b8"):
            v = lat.get(b)
            cells.append(f"{1e3 * v['serving_before_s']:.1f} → {1e3 * v['serving_after_s']:.1f}" if v else "–")
        speed = " / ".join(f"{lat[b]['speedup']:.2f}x" if b in lat else "–" for b in ("b1", "b8"))
        eff = r.get("efficiency", {}).get("b8")
        return " | ".join(cells) + f" | {speed} | " + (f"{eff:.2f}" if eff is not None else "–")
    if "speedup" in r:
        return (f"– | {1e3 * r['latency_before_s']:.0f} → {1e3 * r['latency_after_s']:.0f} * | "
                f"{r['speedup']:.2f}x * | {r['speedup'] / r['macs_reduction']:.2f} *")
    return "– | – | – | –"


def zoo_table(data) -> str:
    rows = [
        "| model | GMACs before → after | MACs ÷ | params (M) before → after | plan (s) | rebuild (s) | "
        "clone_model (s) | Keras build (s) | oracle | b=1 (ms) | b=8 (ms) | speed-up b=1 / 8 | efficiency b=8 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(data["models"], key=lambda r: r["model"]):
        if "error" in r:
            rows.append(f"| {r['model']} | error: {r['error']} |" + " |" * 11)
            continue
        rows.append(
            f"| {r['model']} | {r['macs_before'] / 1e9:.2f} → {r['macs_after'] / 1e9:.2f} | {r['macs_reduction']:.2f} | "
            f"{r['params_before'] / 1e6:.1f} → {r['params_after'] / 1e6:.1f} | {r['plan_s']:.3f} | {r['rebuild_s']:.2f} | "
            f"{r['clone_model_s']:.2f} | {r['keras_build_slim_s']:.2f} | {'pass' if r['oracle_passed'] else 'FAIL'} | "
            f"{_zoo_latency(r)} |"
        )
    return "\n".join(rows)


def any_time_table(data) -> str:
    rows = ["| when | test accuracy | MACs (fraction) | wall time (s) |", "|---|---|---|---|"]
    for k, v in data["results"].items():
        extra = f" (before fine-tuning: {v['accuracy_before_finetune']:.4f})" if "accuracy_before_finetune" in v else ""
        rows.append(f"| {k.replace('_', ' ')} | {v['accuracy']:.4f}{extra} | {v['macs']:.3f} | {v['seconds']:.1f} |")
    return "\n".join(rows)


def _reason(r) -> str:
    """Why a row of the ONNX zoo did not pass, in one short line."""
    if r.get("pending"):
        return r.get("error", "pending")
    if r.get("error"):
        return f"{r.get('stage', '')}: {r['error']}".replace("|", "/").replace("\n", " ")[:160]
    if not r.get("pruned"):
        held = "; ".join(f"{h['reason']} ({h['ops']})" for h in r.get("held", [])[:2])
        return f"prunes nothing: {held}"[:160]
    if not r.get("oracle_passed"):
        return f"oracle failed: max diff {r.get('oracle_max_abs_diff', float('nan')):.2g}"
    if not r.get("keras_matches"):
        return f"from_onnx: {r.get('keras_error') or 'max diff %.2g' % r.get('keras_max_abs_diff', float('nan'))}"[:160]
    return ""


def _status(r) -> str:
    if not r.get("ok"):
        return _reason(r)
    return "ok, blind" if r.get("input_sensitivity", 1.0) < 1e-3 else "ok"


def _latency(r, b) -> str:
    lat = r.get("latency") or {}
    o, s = (lat.get("original") or {}).get(b), (lat.get("slim") or {}).get(b)
    return f"{o * 1e3:.0f} → {s * 1e3:.0f}" if o and s else "–"


def onnx_table(data) -> str:
    """benchmarks/results/onnx_zoo.json: one row per torchvision model and exporter, the summary first,
    then every failure with its reason."""
    sm = data.get("summary", {})
    lines = []
    if sm:
        r1, r8 = sm.get("median_latency_ratio_b1"), sm.get("median_latency_ratio_b8")
        lines += [
            f"**{sm['ok']} of {sm['files']}** model × exporter files prune with the oracle passing and `from_onnx` "
            f"matching onnxruntime ({sm['models']} models, {sm.get('pending', 0)} not run yet, "
            f"{sm.get('export_failed', 0)} not exported). Median MACs after / before: "
            f"{sm['median_macs_ratio']:.3f}" if sm.get("median_macs_ratio") else
            f"**{sm['ok']} of {sm['files']}** files pass",
            "",
            f"Median slim / original latency in onnxruntime: batch 1 "
            f"{'%.3f' % r1 if r1 else '–'} ({sm.get('latency_measured_b1', 0)} files), batch 8 "
            f"{'%.3f' % r8 if r8 else '–'} ({sm.get('latency_measured_b8', 0)} files).",
            "",
            f"Of the files that pass, {sm.get('ok_input_blind', 0)} have an output that barely depends on the input "
            "(it moves by less than 1e-3 of its size, the checks' tolerance, between two inputs: activations vanish "
            "in the untrained model), so the checks at the output cannot see a wrong channel there; they are marked "
            "*blind* below"
            + (f" ({sm['ok_input_unmeasured']} passing files were not measured for this)." if sm.get("ok_input_unmeasured")
               else "."),
            "",
        ]
    lines += ["| model | exporter | input | GMACs before → after | params (M) before → after | plan (s) | apply (s) "
              "| oracle | from_onnx | latency b=1 (ms) | latency b=8 (ms) | status |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["models"]:
        if "macs_before" not in r:
            lines.append(f"| {r['model']} | {r['exporter']} | {r.get('size') or ''} | | | | | | | | | {_reason(r)} |")
            continue
        oracle = "pass" if r.get("oracle_passed") else ("FAIL" if "oracle_passed" in r else "–")
        keras = "yes" if r.get("keras_matches") else ("no" if "keras_matches" in r else "–")
        lines.append(
            f"| {r['model']} | {r['exporter']} | {r.get('size') or ''} | {r['macs_before'] / 1e9:.2f} → "
            f"{r['macs_after'] / 1e9:.2f} | {r['params_before'] / 1e6:.1f} → {r['params_after'] / 1e6:.1f} | "
            f"{r.get('plan_s', 0):.2f} | {r.get('apply_s', 0):.2f} | {oracle} | {keras} | {_latency(r, 'b1')} | "
            f"{_latency(r, 'b8')} | {_status(r)} |")
    failures = [r for r in data["models"] if not r.get("ok") and not r.get("pending")]
    if failures:
        lines += ["", "Failures:", ""] + [f"- {r['model']} ({r['exporter']}): {_reason(r)}" for r in failures]
    return "\n".join(lines)


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


METHOD_LABELS = {
    "l1": "group L1", "l2": "group L2", "obspa_bn": "OBSPA, no data (BN-matched synthetic)",
    "obspa_random": "OBSPA, no data (random inputs)", "obspa_128": "OBSPA, 128 samples",
    "obspa_512": "OBSPA, 512 samples", "obspa_2048": "OBSPA, 2048 samples",
    "reconstruct_128": "reconstruction, 128 samples", "reconstruct_512": "reconstruction, 512 samples",
    "reconstruct_2048": "reconstruction, 2048 samples",
    "obspa_reconstruct_128": "OBSPA + phase 2, 128 samples", "obspa_reconstruct_512": "OBSPA + phase 2, 512 samples",
    "obspa_reconstruct_2048": "OBSPA + phase 2, 2048 samples", "l2_finetune_1epoch": "group L2 + 1 epoch fine-tuning (reference)",
}


def post_training_rows(data) -> list:
    return list(data.get("rows", []))


def post_training_table(data) -> str:
    rows = post_training_rows(data)
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        base = data["unpruned"][model]
        targets = sorted({r["target"] for r in rows if r["model"] == model}, reverse=True)
        head = " | ".join(f"{1 / t:.0f}x fewer MACs: accuracy (s)" for t in targets)
        out += [f"**{model}** (unpruned: {base['accuracy']:.4f}, {base['macs'] / 1e6:.1f} M MACs, "
                f"{base['params'] / 1e3:.0f} k parameters)", "", f"| method | {head} |",
                "|---|" + "---|" * len(targets)]
        for method, label in METHOD_LABELS.items():
            cells = []
            for t in targets:
                r = next((r for r in rows if r["model"] == model and r["method"] == method and r["target"] == t), None)
                cells.append(f"{r['accuracy']:.4f} ({r['seconds']:.0f})" if r else "–")
            if any(c != "–" for c in cells):
                out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def calibration_choice_table(data) -> str:
    """OBSPA with calibration samples chosen by dp.calibration_subset against random draws."""
    c = data["calibration_choice"]
    targets = sorted({r["target"] for r in c["rows"]}, reverse=True)
    out = [f"| choice of the {c['samples']} samples (pool of {c['pool']:,}) | "
           + " | ".join(f"{1 / t:.0f}x fewer MACs: accuracy (per draw)" for t in targets) + " |",
           "|---|" + "---|" * len(targets)]
    for method in dict.fromkeys(r["method"] for r in c["rows"]):
        cells = []
        for t in targets:
            accs = [r["accuracy"] for r in c["rows"] if r["method"] == method and r["target"] == t]
            cells.append(f"{np.mean(accs):.4f} ({', '.join(f'{a:.4f}' for a in accs)})" if accs else "–")
        out.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def torch_table(data) -> str:
    rows = ["| method | target | accuracy | MACs (fraction) | seconds |", "|---|---|---|---|---|"]
    for r in data["rows"]:
        rows.append(f"| {r['method']} | {r['target']:.3f} | {r['accuracy']:.4f} | {r['macs_fraction']:.3f} | {r['seconds']:.1f} |")
    return "\n".join(rows)


def post_training_plot(data, path):
    """Accuracy against MACs, one panel per model, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = post_training_rows(data)
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models) + 3.5, 4.5), squeeze=False)
    colors = plt.cm.tab20.colors
    for ax, model in zip(axes[0], models):
        base = data["unpruned"][model]
        for i, (method, label) in enumerate(METHOD_LABELS.items()):
            pts = sorted((r["macs_fraction"], r["accuracy"]) for r in rows if r["model"] == model and r["method"] == method)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "os^D"[i % 4] + "-", color=colors[i % 20], label=label)
        ax.axhline(base["accuracy"], color="k", ls="--", lw=1, label="unpruned")
        ax.set(title=f"{model} on Fashion-MNIST, no fine-tuning", xlabel="MACs (fraction of the unpruned model)",
               ylabel="test accuracy", ylim=(0, 1))
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right")
    fig.tight_layout(rect=(0, 0, 1 - 3.3 / fig.get_figwidth(), 1))
    _save(fig, path, 110)


SCORE_LABELS = {"dynamic_uncertainty": "Dynamic Uncertainty", "tdds": "TDDS"}
DOWNSTREAM = ("random", "full_top", "full_ccs", "extrapolated_top", "extrapolated_ccs")


def data_pruning_tables(data) -> str:
    """Fidelity, downstream accuracy with paired differences, cost and goals of benchmarks/data_pruning.py."""
    fr = data["setup"]["fractions"].split(",")
    scores = [s for s in SCORE_LABELS if s in data["fidelity"][0]]
    head = " | ".join(f"{SCORE_LABELS[s]}: Spearman (÷ ceiling) | top-{'/'.join(f'{float(f):.0%}' for f in fr)} overlap"
                      for s in scores)
    out = [f"| scores on the samples outside the subset | {head} |", "|---|" + "---|---|" * len(scores)]
    for r in data["fidelity"]:
        cells = []
        for s in scores:
            v = r[s]
            cells.append(f"{v['spearman']:.3f} ({v['ceiling_ratio']:.2f}) | "
                         + " / ".join(f"{v['top_overlap'][f]:.2f}" for f in fr))
        out.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    summ = data.get("summary")
    if summ:
        acc = summ["accuracy"]
        base = [r for r in data["downstream"] if r["method"] == "all data"]
        out += ["", f"Validation accuracy, mean of {len(base)} paired seeds (all {data['setup']['train_samples']:,} "
                f"samples: {sum(r['val_accuracy'] for r in base) / len(base):.4f}); in brackets the per-seed "
                "difference with random, then for extrapolated selections with the full scores' same strategy, "
                "in points:", "",
                "| kept | " + " | ".join(m.replace("_", " ") for m in DOWNSTREAM) + " |", "|---|" + "---|" * len(DOWNSTREAM)]
        for f in fr:
            cells = []
            for m in DOWNSTREAM:
                a = acc[f"{m}@{float(f)}"]
                cell = f"{a['mean']:.4f}"
                if m != "random":
                    cell += " [" + ", ".join(f"{100 * d:+.1f}" for d in a["vs_random"]) + "]"
                if a.get("vs_full"):
                    cell += " [" + ", ".join(f"{100 * d:+.1f}" for d in a["vs_full"]) + "]"
                cells.append(cell)
            out.append(f"| {float(f):.0%} | " + " | ".join(cells) + " |")
        secs = data["seconds"]
        full = (secs["full_seed0"] + secs["full_seed1"]) / 2
        out += ["", "| scoring path | wall time (s) | ÷ full scoring |", "|---|---|---|",
                f"| full scores (one run, mean of two seeds) | {full:.1f} | 1.00 |",
                f"| extrapolated, kNN (subset run {secs['extrapolated_stages']['train']:.1f} s, embedding "
                f"{secs['extrapolated_stages']['embed']:.1f} s, kNN {secs['extrapolated_stages']['extrapolate']:.1f} s) "
                f"| {secs['extrapolated_knn']:.1f} | {secs['extrapolated_knn'] / full:.2f} |"]
        if "extrapolated_gnn" in secs:
            out.append(f"| extrapolated, GCN (same subset run and embedding) | {secs['extrapolated_gnn']:.1f} | "
                       f"{secs['extrapolated_gnn'] / full:.2f} |")
        out += ["", "| goal | met |", "|---|---|"] + [f"| {g} | {'yes' if ok else 'no'} |" for g, ok in summ["goals"].items()]
    return "\n".join(out)


def smoothing_table(data) -> str:
    """The smoothing diagnostic of benchmarks/data_pruning.py --smoothing-diagnostic."""
    d = data["smoothing_diagnostic"]
    out = ["| kept 30% by | validation accuracy per seed | mean | coverage (mean distance to the nearest kept) |",
           "|---|---|---|---|"]
    for name in dict.fromkeys(r["selection"] for r in d["rows"]):
        rows = [r for r in d["rows"] if r["selection"] == name]
        out.append(f"| {name} | " + ", ".join(f"{r['val_accuracy']:.4f}" for r in rows)
                   + f" | {np.mean([r['val_accuracy'] for r in rows]):.4f} | {rows[0]['coverage']:.2f} |")
    return "\n".join(out)


def data_pruning_plot(data, path):
    """Left: Spearman with the full scores per method; right: validation accuracy against the kept fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 4.8), gridspec_kw=dict(width_ratios=(1.1, 1)))
    rows = data["fidelity"]
    scores = [s for s in SCORE_LABELS if s in rows[0]]
    ypos = np.arange(len(rows))
    for i, s in enumerate(scores):
        ax1.barh(ypos + 0.4 * i - 0.2, [r[s]["spearman"] for r in rows], height=0.4, label=SCORE_LABELS[s])
    ax1.set_yticks(ypos, [r["name"] for r in rows], fontsize=7)
    ax1.invert_yaxis()
    ax1.axvline(0, color="k", lw=0.8)
    ax1.set(title="Spearman with the full scores (outside the subset)", xlabel="Spearman correlation")
    ax1.legend(fontsize=8, loc="lower left")
    down = data.get("downstream", [])
    fracs = sorted({r["fraction"] for r in down if r["method"] != "all data"})
    for m in DOWNSTREAM:
        mean = [np.mean([r["val_accuracy"] for r in down if r["method"] == m and r["fraction"] == f]) for f in fracs]
        std = [np.std([r["val_accuracy"] for r in down if r["method"] == m and r["fraction"] == f]) for f in fracs]
        ax2.errorbar(fracs, mean, yerr=std, marker="o", capsize=3, label=m.replace("_", " "))
    base = [r["val_accuracy"] for r in down if r["method"] == "all data"]
    if base:
        ax2.axhline(np.mean(base), color="k", ls="--", lw=1, label="all data")
    ax2.set(title="Training on the kept samples (mean ± std, paired seeds)", xlabel="fraction kept",
            ylabel="validation accuracy")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, 100)


def _ppl(r) -> str:
    if "perplexity" not in r:
        return "error" if "error" in r else "missing"
    return f"{r['perplexity']:.4f} (x{r['ratio_to_dense']:.3f})"


def transformers_table(data) -> str:
    """Perplexity per model (columns) and method/setting (rows), with parameters after and seconds."""
    models = data["models"]
    rows, seen = [], set()
    for m in models.values():
        for r in m.get("baselines", []) + m.get("spa", []):
            key = (r["kind"], r["method"], r["setting"])
            if key not in seen:
                seen.add(key)
                rows.append(key)
    head = "| kind | method | setting | " + " | ".join(
        f"{f} (dense {m['dense']['test_perplexity']:.4f}, {m['params']:,} params)" for f, m in models.items()) + " |"
    out = [head, "|" + "---|" * (3 + len(models))]
    for kind, method, setting in rows:
        cells = []
        for m in models.values():
            r = next((r for r in m.get("baselines", []) + m.get("spa", [])
                      if (r["kind"], r["method"], r["setting"]) == (kind, method, setting)), None)
            if r is None:
                cells.append("")
                continue
            params = r.get("params_effective", r.get("params_after"))
            cells.append(f"{_ppl(r)}, {params:,} params, {r['seconds']:.1f} s" if "perplexity" in r else _ppl(r))
        out.append(f"| {kind} | {method} | {setting} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def transformers_goals(data) -> str:
    out = ["| model | goal | result | met |", "|---|---|---|---|"]
    for fam, m in data["models"].items():
        for k, g in m.get("goals", {}).items():
            detail = {kk: vv for kk, vv in g.items() if kk not in ("met", "rows")}
            out.append(f"| {fam} | {k} | {json.dumps(detail)} | {g.get('met')} |")
    return "\n".join(out)


def transformers_plot(data, path):
    """Perplexity / dense against parameters kept, one panel per model: the spa_keras rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    models = data["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, (fam, m) in zip(axes[0], models.items()):
        by = {}
        for r in m.get("spa", []):
            if "perplexity" in r:
                by.setdefault(r["method"], []).append((r["params_after"] / r["params_before"], r["ratio_to_dense"]))
        for i, (method, pts) in enumerate(sorted(by.items())):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "os^Dv"[i % 5] + "-", color=plt.cm.tab20.colors[i % 20],
                    label=method)
        ax.axhline(1.0, color="k", lw=1, ls="--")
        ax.set(title=f"{fam} (dense perplexity {m['dense']['test_perplexity']:.2f})", xlabel="parameters kept",
               ylabel="perplexity / dense (log scale)", yscale="log")
        top = max(p[1] for pts in by.values() for p in pts)
        ax.set_yticks([t for t in (1, 1.1, 1.25, 1.5, 2, 3, 5, 10, 20, 30, 50) if t <= top * 1.2])
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path, 100)


if __name__ == "__main__":
    data = load("post_training.json")
    if data is not None:
        print(f"## post_training.json\n\n{post_training_table(data)}\n")
        post_training_plot(data, os.path.join(HERE, "..", "docs", "img", "post_training.png"))
    data = load("data_pruning.json")
    if data is not None:
        print(f"## data_pruning.json\n\n{data_pruning_tables(data)}\n")
        if data.get("smoothing_diagnostic"):
            print(f"## data_pruning.json: smoothing diagnostic\n\n{smoothing_table(data)}\n")
        if data.get("summary"):
            data_pruning_plot(data, os.path.join(HERE, "..", "docs", "img", "data_pruning.png"))
    data = load("post_training.json")
    if data is not None and "calibration_choice" in data:
        print(f"## post_training.json: calibration choice\n\n{calibration_choice_table(data)}\n")
    data = load("post_training_torch.json")
    if data is not None:
        print(f"## post_training_torch.json\n\n{torch_table(data)}\n")
    data = load("transformers.json")
    if data is not None:
        print(f"## transformers.json\n\n{transformers_table(data)}\n\n{transformers_goals(data)}\n")
        transformers_plot(data, os.path.join(HERE, "..", "docs", "img", "transformers.png"))
    for name, fn in (("zoo.json", zoo_table), ("any_time.json", any_time_table), ("onnx_zoo.json", onnx_table),
                     ("fuzz.json", fuzz_table)):
        data = load(name)
        if data is not None:
            print(f"## {name}\n\n{fn(data)}\n")
