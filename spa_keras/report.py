"""What a plan removes: per-layer widths and MACs before and after, as a table or a dict."""

from __future__ import annotations

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
        return cls(g.name, count_macs(g), count_macs(g, plan), count_params(g), count_params(g, plan), rows,
                   held_fixed(g))

    def to_dict(self) -> dict:
        return dict(
            model=self.model,
            macs_before=self.macs_before,
            macs_after=self.macs_after,
            params_before=self.params_before,
            params_after=self.params_after,
            layers=self.rows,
            held_fixed=self.held_fixed,
        )

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
