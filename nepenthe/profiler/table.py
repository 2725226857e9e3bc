"""The readable per-layer table of a profile (``Profile.summary()``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One layer of the summary table."""

    name: str
    activation: str
    channels: int
    samples: int
    entropy: float
    on_fraction: float
    linearizable: bool


_HEADER = ("layer", "activation", "C", "samples/neuron", "entropy (bits)", "% on", "linearizable")


def format_table(rows: list[Row], title: str) -> str:
    """Rows as an aligned text table with a one-line title and a footer of totals."""
    cells = [
        (
            r.name,
            r.activation,
            str(r.channels),
            str(r.samples),
            f"{r.entropy:.4f}",
            f"{100.0 * r.on_fraction:.1f}",
            "yes" if r.linearizable else "no",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(_HEADER)]
    left = {0, 1}

    def line(values: tuple[str, ...]) -> str:
        return "  ".join(
            v.ljust(w) if i in left else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
        )

    rule = "-" * len(line(_HEADER))
    n_lin = sum(r.linearizable for r in rows)
    footer = f"{len(rows)} layers, {n_lin} linearizable"
    return "\n".join([title, rule, line(_HEADER), rule, *(line(c) for c in cells), rule, footer])
