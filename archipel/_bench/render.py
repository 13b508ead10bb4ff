"""A result file as a Markdown table (with ratios to a baseline) and as plots (PNG and SVG)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .result import Result, Row

COLUMNS: tuple[tuple[str, str, Callable[[Row], float | None]], ...] = (
    ("p50 ms", "{:.2f}", lambda r: r.p50_ms),
    ("p99 ms", "{:.2f}", lambda r: r.p99_ms),
    ("throughput /s", "{:,.0f}", lambda r: r.throughput),
    ("CPU s / 1,000", "{:.3f}", lambda r: r.cpu_s_per_1000),
    ("RSS MiB", "{:,.0f}", lambda r: r.rss_mb),
    ("start-up s", "{:.2f}", lambda r: r.startup_s),
)
RATIO_COLUMNS = ("p50 ms", "p99 ms", "throughput /s", "CPU s / 1,000", "RSS MiB")


def _cell(template: str, value: float | None) -> str:
    return "" if value is None else template.format(value)


def markdown(result: Result, baseline: str | None = None) -> str:
    """The rows as a table; with ``baseline`` (a row's name, or a placement: ``extra.placement``)
    a second table of each row's ratios to it (for a placement: to its row at the same load)."""
    machine = result.machine
    lines = [
        f"## {result.scenario}",
        "",
        f"{result.started}, {machine.cpus} CPUs ({machine.model}), Python {machine.python}, "
        f"{machine.platform}",
        "",
        "| row | " + " | ".join(c[0] for c in COLUMNS) + " | errors |",
        "| --- | " + " | ".join("---:" for _ in COLUMNS) + " | ---: |",
    ]
    for row in result.rows:
        if row.failure is not None:
            lines.append(f"| {row.name} | failed: {row.failure} |" + " |" * len(COLUMNS))
            continue
        cells = [_cell(template, get(row)) for _, template, get in COLUMNS]
        lines.append(f"| {row.name} | " + " | ".join(cells) + f" | {row.errors} |")
    if baseline is not None:
        lines += ["", *ratio_table(result, baseline)]
    return "\n".join(lines) + "\n"


def baseline_of(result: Result, row: Row, baseline: str) -> Row | None:
    """The row ``row`` is compared with: the row named ``baseline``, or the baseline
    placement's row at the same load."""
    for other in result.rows:
        if other.name == baseline:
            return other
    for other in result.rows:
        if other.extra.get("placement") == baseline and other.extra.get("load") == row.extra.get("load"):
            return other
    return None


def ratios(row: Row, base: Row) -> dict[str, float | None]:
    found: dict[str, float | None] = {}
    for title, _, get in COLUMNS:
        if title not in RATIO_COLUMNS:
            continue
        mine, theirs = get(row), get(base)
        found[title] = mine / theirs if mine is not None and theirs else None
    return found


def ratio_table(result: Result, baseline: str) -> list[str]:
    lines = [
        f"Ratios to {baseline} (latency, CPU, memory: lower is better; throughput: higher is better):",
        "",
        "| row | " + " | ".join(RATIO_COLUMNS) + " |",
        "| --- | " + " | ".join("---:" for _ in RATIO_COLUMNS) + " |",
    ]
    for row in result.rows:
        base = baseline_of(result, row, baseline)
        if row.failure is not None or base is None or base.failure is not None:
            continue
        values = ratios(row, base)
        lines.append(
            f"| {row.name} | "
            + " | ".join("" if values[t] is None else f"{values[t]:.2f}x" for t in RATIO_COLUMNS)
            + " |"
        )
    return lines


def plot(result: Result, stem: Path) -> list[Path]:
    """Latency (p50 and p99) against offered load, one line per placement, from the rows whose
    ``extra`` has ``placement`` and ``offered_rate``: ``stem``.png and ``stem``.svg. None without
    matplotlib (``pip install archipel[bench]``)."""
    try:
        import matplotlib
    except ImportError:  # the bench extra is not installed: the table alone
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list[tuple[float, float, float]]] = {}
    for row in result.rows:
        rate = row.extra.get("offered_rate")
        if (
            row.failure is None
            and isinstance(rate, int | float)
            and row.p50_ms is not None
            and row.p99_ms is not None
        ):
            curves.setdefault(str(row.extra.get("placement", row.name)), []).append(
                (float(rate), row.p50_ms, row.p99_ms)
            )
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for placement, points in curves.items():
        points.sort()
        rates = [p[0] for p in points]
        line = axes.plot(rates, [p[1] for p in points], marker="o", label=f"{placement} p50")[0]
        axes.plot(
            rates,
            [p[2] for p in points],
            marker="^",
            linestyle="--",
            color=line.get_color(),
            label=f"{placement} p99",
        )
    axes.set_xlabel("offered load (calls/s, open loop)")
    axes.set_ylabel("latency (ms, from the scheduled start)")
    axes.set_title(result.scenario)
    axes.set_yscale("log")
    axes.grid(True, which="both", alpha=0.3)
    if curves:
        axes.legend(fontsize="small")
    figure.tight_layout()
    written = []
    for suffix in (".png", ".svg"):
        path = stem.with_suffix(suffix)
        figure.savefig(path)
        written.append(path)
    plt.close(figure)
    return written


def render(result: Result, json_path: Path, baseline: str | None = None) -> list[Path]:
    """Write the Markdown table and the plots next to ``json_path``; return their paths."""
    stem = json_path.with_suffix("")
    table = stem.with_suffix(".md")
    table.write_text(markdown(result, baseline))
    return [table, *plot(result, stem)]
