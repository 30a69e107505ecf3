"""Data pruning on Fashion-MNIST (Debian's dataset-fashion-mnist): full scores against scores extrapolated
from a 10% subset, and what training on the kept samples gives.

- Setup: an MLP (784-256-128-10, Adam 1e-3, batch 256) on ``--train-samples`` training images, with a
  fixed validation split of ``--val-samples`` carved out of the training set (the downstream metric),
  and the 10,000 test images.
- Scores: Dynamic Uncertainty and TDDS from full runs of ``--epochs`` with two seeds (their agreement is
  the ceiling); extrapolated from a 10% subset by kNN and by the GCN (one subset run, seed 0), with the
  subset run's steps at ``--step-fraction`` of a full run's; the paper's schedule (the subset trained
  for the same epochs) as an ablation, and kNN variants (across classes, k, the full model's features).
- Fidelity: Spearman correlation with the full scores (seed 0) on the samples outside the subset, and
  top-k overlap at each kept fraction, against the ceiling and a per-class-mean control.
- Downstream: train on 30/50/70% kept by random, full scores (top, CCS) and extrapolated scores (top,
  CCS), class-balanced, with ``--seeds`` paired seeds (seed s: the same initialisation and shuffling for
  every method), same epochs as a full run; validation and test accuracy.
- Cost: wall time of each scoring path. Writes benchmarks/results/data_pruning.json.

    nice -n 10 python benchmarks/data_pruning.py            # about 30 minutes on 2 CPU cores
    python benchmarks/data_pruning.py --quick               # a smoke run (a minute or two)
    nice -n 10 python benchmarks/data_pruning.py --smoothing-diagnostic   # why "top" on extrapolated scores loses
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers as L  # noqa: E402

from spa_keras import data_pruning as dp  # noqa: E402
from spa_keras.datasets import load_fashion_mnist  # noqa: E402
from post_training import write_json  # noqa: E402 - benchmarks/ is on the path

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "data_pruning.json")
SCORES = ("dynamic_uncertainty", "tdds")


def build_mlp():
    m = keras.Sequential([keras.Input((28, 28, 1)), L.Flatten(), L.Dense(256, activation="relu"),
                          L.Dense(128, activation="relu", name="features"), L.Dense(10, name="logits")])
    m.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
    return m


def spearman(a, b):
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def top_overlap(est, ref, frac):
    m = max(1, int(round(frac * len(ref))))
    a, b = set(np.argsort(-est, kind="stable")[:m].tolist()), set(np.argsort(-ref, kind="stable")[:m].tolist())
    return len(a & b) / m


def class_mean(scores, y, idx=None):
    """Each sample's score predicted by its class's mean (over ``idx`` when given)."""
    idx = np.arange(len(y)) if idx is None else idx
    means = np.array([scores[idx][y[idx] == c].mean() for c in range(int(y.max()) + 1)])
    return means[y]


def full_run(x, y, epochs, batch_size, seed):
    """One full scoring run, with its wall time and the trained model (for the features ablation)."""
    t0 = time.perf_counter()
    keras.utils.set_random_seed(seed)
    model = build_mlp()
    rec = dp.ScoreRecorder(x, y)
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0, callbacks=[rec])
    scores = {s: rec.scores(s) for s in SCORES}
    return scores, time.perf_counter() - t0, model


def fidelity_row(name, est, full, ceiling_ref, rest, fractions, y, **extra):
    row = dict(name=name, **extra)
    for s in SCORES:
        e, r = est[s][rest], full[s][rest]
        row[s] = dict(spearman=round(spearman(e, r), 4), ceiling_ratio=round(spearman(e, r) / ceiling_ref[s], 4),
                      top_overlap={str(f): round(top_overlap(e, r, f), 4) for f in fractions})
    return row


def train_eval(x, y, idx, data, epochs, batch_size, seed):
    (xv, yv), (xt, yt) = data
    keras.utils.set_random_seed(seed)
    model = build_mlp()
    model.fit(x[idx], y[idx], batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0)
    acc = lambda a, b: float((model.predict(a, batch_size=2048, verbose=0).argmax(-1) == b).mean())  # noqa: E731
    return acc(xv, yv), acc(xt, yt)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-samples", type=int, default=20000)
    ap.add_argument("--val-samples", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=20, help="epochs of the full scoring runs and of downstream training")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--subset", type=float, default=0.1)
    ap.add_argument("--step-fraction", type=float, default=0.25, help="the subset run's steps / a full run's")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--fractions", default="0.3,0.5,0.7")
    ap.add_argument("--seeds", type=int, default=3, help="paired seeds of the downstream training")
    ap.add_argument("--no-gnn", action="store_true")
    ap.add_argument("--quick", action="store_true", help="4,000 samples, 6 epochs, 1 downstream seed")
    ap.add_argument("--output", default=RESULTS)
    ap.add_argument("--smoothing-diagnostic", action="store_true",
                    help="only the diagnostic of why 'top' on extrapolated scores loses (added to the JSON)")
    args = ap.parse_args(argv)
    if args.quick:
        args.train_samples, args.val_samples, args.epochs, args.seeds = 4000, 1000, 6, 1
    fractions = [float(f) for f in args.fractions.split(",")]

    (xtr, ytr), (xte, yte) = load_fashion_mnist()
    perm = np.random.default_rng(0).permutation(len(xtr))
    val, train = perm[:args.val_samples], perm[args.val_samples:args.val_samples + args.train_samples]
    x, y = xtr[train], ytr[train]
    data = ((xtr[val], ytr[val]), (xte, yte))
    if args.smoothing_diagnostic:
        with open(args.output) as f:
            out = json.load(f)
        out["smoothing_diagnostic"] = smoothing_diagnostic(x, y, data, args)
        write_json(out, args.output)
        return 0
    out = dict(setup=dict(vars(args), model="MLP 784-256-128-10, Adam 1e-3", dataset="Fashion-MNIST",
                          test_samples=len(xte)), seconds={})
    print(json.dumps(out["setup"]), flush=True)

    # ---- full scores, two seeds ------------------------------------------------------------------
    full, full_model = {}, None
    for seed in (0, 1):
        scores, secs, model = full_run(x, y, args.epochs, args.batch_size, seed)
        full[seed] = scores
        out["seconds"][f"full_seed{seed}"] = round(secs, 1)
        full_model = full_model or model
        print(f"full scores, seed {seed}: {secs:.0f} s", flush=True)

    # ---- extrapolated, one subset run (seed 0) -----------------------------------------------------
    kw = dict(subset=args.subset, epochs=args.epochs, batch_size=args.batch_size, seed=0, k=args.k,
              return_details=True)
    t0 = time.perf_counter()
    knn, info = dp.extrapolated_scores(build_mlp, x, y, list(SCORES), step_fraction=args.step_fraction, **kw)
    out["seconds"]["extrapolated_knn"] = round(time.perf_counter() - t0, 1)
    out["seconds"]["extrapolated_stages"] = {k: round(v, 1) for k, v in info["seconds"].items()}
    idx, emb, sub = info["subset"], info["embeddings"], info["subset_scores"]
    rest = np.setdiff1d(np.arange(len(y)), idx)
    est = {"knn": knn}
    if not args.no_gnn:
        t0 = time.perf_counter()
        est["gnn"] = {s: dp.gcn_extrapolate(emb, idx, sub[s], args.k, labels=y, seed=0) for s in SCORES}
        gnn_secs = time.perf_counter() - t0
        out["seconds"]["extrapolated_gnn"] = round(info["seconds"]["train"] + info["seconds"]["embed"] + gnn_secs, 1)
    print(f"extrapolated: {out['seconds']}", flush=True)

    # ablations: the paper's schedule; kNN across classes, k = 1 and 50; the full model's features
    t0 = time.perf_counter()
    paper, _ = dp.extrapolated_scores(build_mlp, x, y, list(SCORES), step_fraction=None, **kw)
    out["seconds"]["extrapolated_knn_paper_schedule"] = round(time.perf_counter() - t0, 1)

    def knn_variant(features=emb, k=args.k, same=True):
        r = {}
        for s in SCORES:
            e = np.empty(len(y))
            e[idx] = sub[s]
            e[rest] = dp.knn_extrapolate(features[idx], sub[s], features[rest], k, seed_labels=y[idx] if same else None,
                                         labels=y[rest] if same else None)
            r[s] = e
        return r

    full_features = dp.embeddings(full_model, x)
    big_k = int(min(50, np.bincount(y[idx]).min()))
    ceiling = {s: spearman(full[0][s][rest], full[1][s][rest]) for s in SCORES}
    rows = [fidelity_row("ceiling: full scores, another seed", full[1], full[0], ceiling, rest, fractions, y),
            fidelity_row("control: class mean of the full scores", {s: class_mean(full[0][s], y) for s in SCORES},
                         full[0], ceiling, rest, fractions, y),
            fidelity_row("control: class mean of the subset's scores",
                         {s: class_mean(np.where(np.isin(np.arange(len(y)), idx), knn[s], 0), y, idx) for s in SCORES},
                         full[0], ceiling, rest, fractions, y),
            fidelity_row(f"kNN (k={args.k}, within class)", knn, full[0], ceiling, rest, fractions, y, method="knn")]
    if "gnn" in est:
        rows.append(fidelity_row(f"GCN (kNN graph k={args.k})", est["gnn"], full[0], ceiling, rest, fractions, y,
                                 method="gnn"))
    rows += [fidelity_row("kNN, paper's schedule (subset trained for the same epochs)", paper, full[0], ceiling, rest,
                          fractions, y),
             fidelity_row("kNN across classes", knn_variant(same=False), full[0], ceiling, rest, fractions, y),
             fidelity_row("kNN, k=1", knn_variant(k=1), full[0], ceiling, rest, fractions, y),
             fidelity_row(f"kNN, k={big_k}", knn_variant(k=big_k), full[0], ceiling, rest, fractions, y),
             fidelity_row("kNN on the full model's features", knn_variant(full_features), full[0], ceiling, rest,
                          fractions, y)]
    out["fidelity"] = rows
    out["subset"] = dict(samples=len(idx), epochs=info["subset_epochs"], record_every_steps=info["record_every_steps"],
                         subset_spearman={s: round(spearman(sub[s], full[0][s][idx]), 4) for s in SCORES})
    for r in rows:
        print(r["name"], {s: r[s]["spearman"] for s in SCORES}, flush=True)
    write_json(out, args.output)

    # ---- downstream: train on what each method keeps ------------------------------------------------
    methods = {"random": (None, "random"), "full_top": (full[0]["dynamic_uncertainty"], "top"),
               "full_ccs": (full[0]["dynamic_uncertainty"], "ccs"),
               "extrapolated_top": (knn["dynamic_uncertainty"], "top"),
               "extrapolated_ccs": (knn["dynamic_uncertainty"], "ccs")}
    down = []
    for seed in range(args.seeds):
        va, te = train_eval(x, y, np.arange(len(y)), data, args.epochs, args.batch_size, seed)
        down.append(dict(method="all data", fraction=1.0, seed=seed, val_accuracy=va, test_accuracy=te))
        for frac in fractions:
            for name, (scores, strategy) in methods.items():
                s = np.zeros(len(y)) if scores is None else scores
                keep = dp.select(s, frac, y=y, strategy=strategy, class_balanced=True, seed=seed)
                va, te = train_eval(x, y, keep, data, args.epochs, args.batch_size, seed)
                down.append(dict(method=name, fraction=frac, seed=seed, val_accuracy=va, test_accuracy=te))
                print(json.dumps(down[-1]), flush=True)
        out["downstream"] = down
        write_json(out, args.output)
    out["summary"] = summarize(out, fractions)
    write_json(out, args.output)
    print(json.dumps(out["summary"], indent=1))
    return 0


def smoothing_diagnostic(x, y, data, args, fraction=0.3):
    """Is "top" on extrapolated scores hurt by their smoothness? The full scores (seed 0) smoothed the way
    kNN extrapolation smooths (each sample gets the exp(-d)-weighted mean of its k nearest other samples of
    its class, in the subset model's features), then "top" at ``fraction``, against the raw full scores;
    also the coverage of each kept set (mean distance from every sample to its nearest kept sample)."""
    full, _, _ = full_run(x, y, args.epochs, args.batch_size, 0)
    ref = full["dynamic_uncertainty"]
    _, info = dp.extrapolated_scores(build_mlp, x, y, subset=args.subset, epochs=args.epochs,
                                     batch_size=args.batch_size, seed=0, k=args.k,
                                     step_fraction=args.step_fraction, return_details=True)
    emb = info["embeddings"]
    smooth = np.empty(len(y))
    for c in np.unique(y):
        g = np.flatnonzero(y == c)
        d, nb = dp.nearest_neighbors(emb[g], emb[g], args.k + 1)
        d, nb = d[:, 1:], nb[:, 1:]  # not itself
        w = np.exp(-(d - d[:, :1]))
        smooth[g] = (w * ref[g][nb]).sum(1) / w.sum(1)
    rows = []
    for seed in range(args.seeds):
        for name, s in (("full top", ref), ("full scores smoothed by kNN, top", smooth), ("random", None)):
            keep = dp.select(np.zeros(len(y)) if s is None else s, fraction, y=y, class_balanced=True,
                             strategy="random" if s is None else "top", seed=seed)
            dist, _ = dp.nearest_neighbors(emb[keep], emb, 1)
            va, te = train_eval(x, y, keep, data, args.epochs, args.batch_size, seed)
            rows.append(dict(selection=name, fraction=fraction, seed=seed, val_accuracy=va, test_accuracy=te,
                             coverage=round(float(dist.mean()), 4)))
            print(json.dumps(rows[-1]), flush=True)
    return dict(spearman_smoothed_vs_full=round(spearman(smooth, ref), 4), rows=rows)


def summarize(out, fractions):
    """Paired differences (per seed) and the goals."""
    down = out["downstream"]
    acc = {(r["method"], r["fraction"], r["seed"]): r["val_accuracy"] for r in down}
    seeds = sorted({r["seed"] for r in down})
    table = {}
    for frac in fractions:
        for m in ("random", "full_top", "full_ccs", "extrapolated_top", "extrapolated_ccs"):
            vals = [acc[(m, frac, s)] for s in seeds]
            d_random = [acc[(m, frac, s)] - acc[("random", frac, s)] for s in seeds]
            ref = "full_top" if m == "extrapolated_top" else "full_ccs"
            d_full = [acc[(m, frac, s)] - acc[(ref, frac, s)] for s in seeds] if m.startswith("extrapolated") else None
            table[f"{m}@{frac}"] = dict(mean=round(float(np.mean(vals)), 4), per_seed=[round(v, 4) for v in vals],
                                        vs_random=[round(v, 4) for v in d_random],
                                        beats_random_every_seed=bool(all(v > 0 for v in d_random)),
                                        loses_to_random_every_seed=bool(all(v < 0 for v in d_random)),
                                        vs_full=None if d_full is None else [round(v, 4) for v in d_full])
    fid = {r["name"]: r for r in out["fidelity"]}
    knn = next(r for r in out["fidelity"] if r.get("method") == "knn")
    control = fid["control: class mean of the full scores"]
    secs = out["seconds"]
    full_secs = np.mean([secs["full_seed0"], secs["full_seed1"]])
    goals = {}
    for s in SCORES:
        goals[f"{s}: kNN Spearman >= 0.7 of the ceiling"] = bool(knn[s]["ceiling_ratio"] >= 0.7)
        goals[f"{s}: kNN Spearman above the class-mean control"] = bool(knn[s]["spearman"] > control[s]["spearman"])
        gnn = next((r for r in out["fidelity"] if r.get("method") == "gnn"), None)
        if gnn:
            goals[f"{s}: GCN Spearman >= 0.7 of the ceiling"] = bool(gnn[s]["ceiling_ratio"] >= 0.7)
            goals[f"{s}: GCN Spearman above the class-mean control"] = bool(gnn[s]["spearman"] > control[s]["spearman"])
    goals["kNN path <= 60% of full scoring's wall time"] = bool(secs["extrapolated_knn"] <= 0.6 * full_secs)
    if "extrapolated_gnn" in secs:
        goals["GCN path <= 60% of full scoring's wall time"] = bool(secs["extrapolated_gnn"] <= 0.6 * full_secs)
    for frac in fractions:
        for st in ("top", "ccs"):
            d = table[f"extrapolated_{st}@{frac}"]["vs_full"]
            goals[f"extrapolated {st} within 0.7 points of full {st} at {frac}"] = bool(abs(float(np.mean(d))) <= 0.007)
    return dict(accuracy=table, goals=goals, cost_ratio=dict(
        knn=round(secs["extrapolated_knn"] / full_secs, 3),
        gnn=round(secs["extrapolated_gnn"] / full_secs, 3) if "extrapolated_gnn" in secs else None))


if __name__ == "__main__":
    sys.exit(main())
