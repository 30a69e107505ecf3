"""What a plan removes: per-layer widths and MACs before and after, as a table, JSON and a PNG plot."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from .metrics import count_macs, count_params, node_macs
from .plan import PruningPlan


def held_fixed(graph) -> list:
    """``[{"layer", "reason"}]`` for every op held fixed (not understood, or not prunable by nature)."""
    return [dict(layer=n.layer, reason=n.attrs.get("reason", "")) for n in graph.nodes if n.kind == "fixed"]


@dataclass
class Report:
    """Totals and per-layer rows (``layer, width_before, width_after, macs_before, macs_after``), plus
    the ops held fixed and why."""

    model: str
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    rows: list = field(default_factory=list)
    held_fixed: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # how the plan was made (criterion, algorithm, samples, ...)

    @classmethod
    def from_plan(cls, plan: PruningPlan) -> "Report":
        g = plan.graph
        rows = []
        seen = set()
        for node in g.nodes:
            if node.layer in seen or not node.outputs or node.kind in ("input",):
                continue
            if not node.params and not node.macs:
                continue
            seen.add(node.layer)
            t = node.outputs[0]
            rows.append(
                dict(
                    layer=node.layer,
                    width_before=g.tensors[t].channels,
                    width_after=plan.width(t),
                    macs_before=int(node_macs(g, node)),
                    macs_after=int(node_macs(g, node, plan)),
                )
            )
        settings = {k: v for k, v in plan.settings.items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))}
        return cls(g.name, count_macs(g), count_macs(g, plan), count_params(g), count_params(g, plan), rows,
                   held_fixed(g), settings)

    @classmethod
    def from_graphs(cls, before, after) -> "Report":
        """The report of two standard channel graphs of the same model, before and after pruning
        (layers matched by name, as pruning keeps them): what iterative pruning or a callback did."""
        index = {}
        for node in after.nodes:
            if node.outputs:
                index.setdefault(node.layer, node)
        rows, seen = [], set()
        for node in before.nodes:
            if node.layer in seen or not node.outputs or node.kind == "input" or (not node.params and not node.macs):
                continue
            seen.add(node.layer)
            other = index.get(node.layer)
            width = before.tensors[node.outputs[0]].channels
            rows.append(dict(
                layer=node.layer,
                width_before=width,
                width_after=after.tensors[other.outputs[0]].channels if other is not None else 0,
                macs_before=int(node_macs(before, node)),
                macs_after=int(node_macs(after, other)) if other is not None else 0,
            ))
        return cls(before.name, count_macs(before), count_macs(after), count_params(before), count_params(after),
                   rows, held_fixed(before))

    def to_dict(self) -> dict:
        """Totals, ``layers`` (one row per layer) and ``held_fixed``, as plain Python values."""
        return dict(
            model=self.model,
            macs_before=self.macs_before,
            macs_after=self.macs_after,
            params_before=self.params_before,
            params_after=self.params_after,
            layers=self.rows,
            held_fixed=self.held_fixed,
            settings=self.settings,
        )

    def to_json(self, path: str | None = None, overwrite: bool = False) -> str:
        """The report as JSON text; also written to ``path`` (atomically) when given.

        >>> import json, keras, spa_keras as spa
        >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(2)])
        >>> first = json.loads(spa.Report.from_plan(spa.plan(m, ratio=0.5)).to_json())["layers"].pop(0)
        >>> first["width_after"]
        8
        """
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            _write(path, _text(text), overwrite)
        return text

    def plot(self, path: str | None = None, overwrite: bool = False, max_layers: int = 120):
        """A figure of per-layer widths (top) and MACs (bottom), before (grey) and after (blue), for
        the layers with MACs (convolutions, dense, attention); written as a PNG to ``path`` when given
        (matplotlib, Agg backend, atomically). Returns the ``matplotlib.figure.Figure``.

        >>> import keras, spa_keras as spa
        >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(2)])
        >>> fig = spa.Report.from_plan(spa.plan(m, ratio=0.5)).plot()   # or .plot("report.png")
        """
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, the Agg canvas writes the PNG

        rows = [r for r in self.rows if r["macs_before"]] or list(self.rows)
        if len(rows) > max_layers:  # thin evenly
            step = -(-len(rows) // max_layers)
            rows = rows[::step]
        n = max(len(rows), 1)
        fig = Figure(figsize=(min(4 + 0.22 * n, 40), 7.5), dpi=110, layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True)
        xs = range(len(rows))
        top.bar(xs, [r["width_before"] for r in rows], color="#c8c8c8", label="before", width=0.8)
        top.bar(xs, [r["width_after"] for r in rows], color="#1f6fb4", label="after", width=0.5)
        top.set_ylabel("output channels")
        top.legend(loc="upper left", frameon=False)
        bottom.bar(xs, [r["macs_before"] / 1e6 for r in rows], color="#c8c8c8", width=0.8)
        bottom.bar(xs, [r["macs_after"] / 1e6 for r in rows], color="#1f6fb4", width=0.5)
        bottom.set_ylabel("MMACs per sample")
        bottom.set_xticks(list(xs))
        bottom.set_xticklabels([r["layer"] for r in rows], rotation=90, fontsize=6 if n > 40 else 8)
        for ax in (top, bottom):
            ax.spines[["top", "right"]].set_visible(False)
            ax.set_xlim(-0.7, n - 0.3)
        fig.suptitle(self.totals(), fontsize=9)
        if path is not None:
            _write(path, lambda tmp: fig.savefig(tmp, format="png"), overwrite)
        return fig

    @staticmethod
    def paths(report) -> dict:
        """``{"txt", "json", "png"}`` paths for ``report``: a folder (existing, or ending in ``/``)
        gets ``report.txt``, ``report.json``, ``report.png``; anything else is a prefix
        (``out/slim.report`` -> ``out/slim.report.txt``, ...)."""
        report = os.fspath(report)
        if os.path.isdir(report) or report.endswith(("/", os.sep)):
            report = os.path.join(report, "report")
        return {ext: f"{report}.{ext}" for ext in ("txt", "json", "png")}

    @classmethod
    def check_paths(cls, report, overwrite: bool = False) -> dict:
        """The paths :meth:`save` will write; an error, before any work, if one exists and not ``overwrite``."""
        from .errors import OutputExistsError

        paths = cls.paths(report)
        if not overwrite:
            for p in paths.values():
                if os.path.exists(p):
                    raise OutputExistsError(f"report file {p!r} exists; pass overwrite=True (--overwrite) "
                                            "or choose another report path")
        return paths

    def save(self, report, overwrite: bool = False) -> dict:
        """Write the table (``.txt``), the JSON and the PNG plot (see :meth:`paths` for the names),
        each atomically. Returns ``{"txt": path, "json": path, "png": path}``.

        >>> # spa.Report.from_plan(plan).save("reports/")  -> reports/report.txt, .json, .png
        """
        paths = self.check_paths(report, overwrite)
        text = self.table(max_rows=None) + "\n"
        _write(paths["txt"], _text(text), overwrite)
        self.to_json(paths["json"], overwrite)
        self.plot(paths["png"], overwrite)
        return paths

    def table(self, max_rows: int | None = 40) -> str:
        """The before/after table as text (the layers that changed first, up to ``max_rows``)."""
        changed = [r for r in self.rows if r["width_after"] != r["width_before"]]
        shown = changed if max_rows is None else changed[:max_rows]
        w = max([len(r["layer"]) for r in shown] + [5])
        lines = [f"{'layer':<{w}}  {'width':>13}  {'MACs before':>12}  {'MACs after':>12}"]
        for r in shown:
            widths = f"{r['width_before']} -> {r['width_after']}"
            lines.append(f"{r['layer']:<{w}}  {widths:>13}  {r['macs_before']:>12,}  {r['macs_after']:>12,}")
        if len(changed) > len(shown):
            lines.append(f"... and {len(changed) - len(shown)} more layers")
        lines.append(self.totals())
        return "\n".join(lines)

    def totals(self) -> str:
        def pct(a, b):
            return f"{100.0 * (1 - b / a):.1f}% fewer" if a else "-"

        return (
            f"{self.model}: MACs {self.macs_before:,} -> {self.macs_after:,} ({pct(self.macs_before, self.macs_after)}), "
            f"params {self.params_before:,} -> {self.params_after:,} ({pct(self.params_before, self.params_after)})"
        )

    def __str__(self):
        return self.table()


def _write(path, write, overwrite):
    from .io import atomic_write

    return atomic_write(os.fspath(path), write, overwrite)


def _text(text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    return write
