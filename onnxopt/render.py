"""Terminal rendering of reports with rich: comparisons, pass reports, model statistics.

``render_*`` functions return rich renderables (for embedding and tests); ``print_*`` functions
print them to a console (stdout by default) and are what the CLI calls.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Any, Sequence

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from onnxopt.api import OptimizeReport
    from onnxopt.evaluate import Comparison
    from onnxopt.inspect import Inspection
    from onnxopt.pass_base import Pass, PassReport
    from onnxopt.stats import ModelStats

#: skip reasons shown per pass (the most common first); the JSON report has all of them
SKIP_REASONS_SHOWN = 3
DETAIL_WIDTH = 70


# -- number formatting --------------------------------------------------------------------------

def fmt_bytes(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB")
    step = 0
    while abs(n) >= 1024 and step < len(units) - 1:
        n /= 1024
        step += 1
    return f"{n:.0f} B" if step == 0 else f"{n:.2f} {units[step]}"


def fmt_count(n: float) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= limit:
            return f"{n / limit:.2f}{suffix}"
    return f"{n:.0f}"


def fmt_ratio(b: float, a: float) -> str:
    return f"×{b / a:.3f}" if a else "—"


def fmt_error(x: float) -> str:
    return "0" if x == 0 else f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def fmt_cosine(c: float) -> str:
    """Cosine similarity; values just under 1 as ``1−ε`` so they do not print as 1.000000."""
    return f"1−{1 - c:.1e}" if 0.999 < c < 1 else f"{c:.6f}"


def fmt_snr(db: float) -> str:
    if math.isinf(db):
        return "∞ (identical)" if db > 0 else "-∞"
    return f"{db:.1f} dB"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.2f}%"


def _warnings(lines: Sequence[str]) -> list[Text]:
    return [Text(f"⚠ {line}", style="yellow") for line in lines]


# -- comparison ---------------------------------------------------------------------------------

def render_comparison(cmp: Comparison) -> RenderableType:
    """Table metric | A | B | B vs A, then the measurement conditions and the warnings."""
    table = Table(title="B against A", title_justify="left", show_edge=False, header_style="bold")
    table.add_column("metric")
    table.add_column("A", justify="right")
    table.add_column("B", justify="right")
    table.add_column("B vs A", justify="right")
    if cmp.accuracy_a is not None and cmp.accuracy_b is not None:
        delta = cmp.accuracy_delta or 0.0
        ci = "" if cmp.accuracy_delta_ci95 is None else f" ±{cmp.accuracy_delta_ci95 * 100:.2f}"
        table.add_row(f"accuracy ({cmp.labelled_samples} labelled)", _pct(cmp.accuracy_a), _pct(cmp.accuracy_b),
                      f"{delta * 100:+.2f}{ci} pts")
    if cmp.agreement is not None:
        table.add_row(f"top-1 agreement ({cmp.logits_output})", "", "", _pct(cmp.agreement))
    for out in cmp.outputs:
        table.add_row(f"{out.name}: max / mean |B−A|", "", "", f"{fmt_error(out.max_abs)} / {fmt_error(out.mean_abs)}")
        table.add_row(f"{out.name}: cosine · SNR", "", "", f"{fmt_cosine(out.cosine)} · {fmt_snr(out.snr_db)}")
    if cmp.canonical_latency is not None:  # A column: A as given; B column: canonical A
        gain = cmp.canonical_latency
        table.add_row("canonical gain: A → A canonical (not the passes')", f"{gain.a_median_ms:.3f} ms",
                      f"{gain.b_median_ms:.3f} ms", f"×{gain.ratio:.3f} ({gain.ratio_p10:.2f}–{gain.ratio_p90:.2f})")
    if cmp.latency is not None:
        lat = cmp.latency
        against = "" if cmp.canonical_latency is None else ", A canonical"
        table.add_row(f"latency median (batch {cmp.latency_batch}{against})", f"{lat.a_median_ms:.3f} ms",
                      f"{lat.b_median_ms:.3f} ms", f"×{lat.ratio:.3f} ({lat.ratio_p10:.2f}–{lat.ratio_p90:.2f})")
        table.add_row(f"latency p90{against}", f"{lat.a_p90_ms:.3f} ms", f"{lat.b_p90_ms:.3f} ms",
                      fmt_ratio(lat.b_p90_ms, lat.a_p90_ms))
    table.add_row("file size", fmt_bytes(cmp.size_a_bytes), fmt_bytes(cmp.size_b_bytes),
                  fmt_ratio(cmp.size_b_bytes, cmp.size_a_bytes))
    sa, sb = cmp.stats_a, cmp.stats_b
    table.add_row("parameters", fmt_count(sa.parameters), fmt_count(sb.parameters), fmt_ratio(sb.parameters, sa.parameters))
    table.add_row("MACs per sample", fmt_macs(sa), fmt_macs(sb), _macs_ratio(sa, sb))
    table.add_row("nodes", str(sa.nodes), str(sb.nodes), f"{sb.nodes - sa.nodes:+d}")
    return Group(table, Text(conditions_line(cmp), style="dim"), *_warnings(cmp.warnings))


def conditions_line(cmp: Comparison) -> str:
    """Under what conditions the numbers were measured, in one line."""
    threads = "threads not pinned" if cmp.threads is None else f"{cmp.threads} thread{'s' * (cmp.threads != 1)}"
    parts = [
        f"A = {cmp.model_a}, B = {cmp.model_b}",
        f"{', '.join(cmp.providers)}, {threads}",
        f"data: {cmp.data}{' [synthetic]' if cmp.synthetic else ''}; {cmp.samples} samples compared in batches "
        f"of {cmp.batch_size} (graph optimizations {'on' if cmp.optimized_sessions else 'off'})",
    ]
    if cmp.latency is not None:
        parts.append(f"latency: {cmp.latency.runs} interleaved runs after {cmp.latency.warmup} warm-up, "
                     f"ratio = median of per-pair B/baseline (p10–p90), baseline = {cmp.latency_baseline}")
    parts.append(f"CPU: {cmp.cpu.model_name} ({cmp.cpu.arch}; int8 dot-product: {cmp.cpu.int8_dot_text})")
    return " · ".join(parts)


def print_comparison(cmp: Comparison, console: Console | None = None) -> None:
    (console or Console()).print(render_comparison(cmp))


# -- passes -------------------------------------------------------------------------------------

def render_pass_reports(reports: Sequence[PassReport]) -> RenderableType:
    """One row per pass (its prerequisites first, indented under it): changes, nodes added/removed,
    skipped count, key details; then skip reasons and notes."""
    table = Table(title="passes", title_justify="left", show_edge=False, header_style="bold")
    for name, justify in (("pass", "left"), ("changes", "right"), ("+nodes", "right"), ("−nodes", "right"),
                          ("skipped", "right"), ("details", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    reasons: list[Text] = []
    for report in reports:
        _add_pass_rows(table, reasons, report, "")
    return Group(table, *reasons)


def _add_pass_rows(table: Table, reasons: list[Text], report: PassReport, parent: str) -> None:
    """Rows of ``report``'s prerequisites (labelled ``parent › name``), then its own row."""
    label = f"{parent} › {report.pass_name}" if parent else report.pass_name
    for nested in report.prerequisites:
        _add_pass_rows(table, reasons, nested, label)
    style = None if report.modified else "dim"
    table.add_row(f"  {label}" if parent else label, str(report.changes), str(report.nodes_added),
                  str(report.nodes_removed), str(len(report.skipped)), summarize_details(report.details_dict()),
                  style=style)
    counts = Counter(s.reason for s in report.skipped)
    for reason, n in counts.most_common(SKIP_REASONS_SHOWN):
        reasons.append(Text(f"  {label}: skipped {n}× — {reason}", style="dim"))
    if len(counts) > SKIP_REASONS_SHOWN:
        reasons.append(Text(f"  {label}: … {len(counts) - SKIP_REASONS_SHOWN} more reason(s) "
                            "in the JSON report", style="dim"))
    reasons.extend(Text(f"  {label}: {note}", style="dim") for note in report.notes)


def summarize_details(details: dict[str, Any], width: int = DETAIL_WIDTH) -> str:
    """``key=value`` for scalars, sizes for collections, cut to ``width`` characters."""
    parts = []
    for key, value in details.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        elif isinstance(value, (int, str, bool)) or value is None:
            parts.append(f"{key}={value}")
        elif isinstance(value, dict) and 0 < len(value) <= 3 and all(_scalar(v) for v in value.values()):
            parts.append(f"{key}=" + " ".join(f"{k}:{_short(v)}" for k, v in value.items()))
        elif hasattr(value, "__len__"):
            parts.append(f"{key}=({len(value)} {'entries' if isinstance(value, dict) else 'items'})")
    text = ", ".join(parts)
    return text if len(text) <= width else text[: width - 1] + "…"


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render_pass_list(classes: Sequence[type[Pass]]) -> RenderableType:
    """One row per pass: name, lossy, calibration, and what it does followed by its settings."""
    table = Table(title="passes", title_justify="left", show_edge=False, header_style="bold", show_lines=True)
    for name in ("pass", "lossy", "calibration", "what it does / settings"):
        table.add_column(name, no_wrap=name == "pass")
    for cls in classes:
        cell = Text(cls.summary)
        for setting in cls.settings():
            help_text = f" — {setting.help}" if setting.help else ""
            cell.append(f"\n  {setting.name}: {setting.type_name} = {setting.default!r}{help_text}", style="dim")
        calibration = "needed" if cls.needs_calibration else "optional" if cls.uses_calibration else "—"
        table.add_row(cls.name, "yes" if cls.lossy else "no", calibration, cell)
    return table


def print_pass_list(classes: Sequence[type[Pass]], console: Console | None = None) -> None:
    (console or Console()).print(render_pass_list(classes))


# -- model statistics ---------------------------------------------------------------------------

def _io_text(items: Sequence[tuple[str, str, list[int | str]]]) -> str:
    return "\n".join(f"{name}: {dtype}[{', '.join(map(str, dims))}]" for name, dtype, dims in items) or "—"


def fmt_macs(stats: ModelStats) -> str:
    """MACs, marked as a lower bound when some nodes have shapes that are not static."""
    text = fmt_count(stats.macs)
    return f"≥ {text} (+{stats.macs_unknown_nodes} of unknown shape)" if stats.macs_unknown_nodes else text


def _macs_ratio(a: ModelStats, b: ModelStats) -> str:
    if a.macs_unknown_nodes or b.macs_unknown_nodes:
        return "unknown"
    return fmt_ratio(b.macs, a.macs)


def render_stats(stats: ModelStats) -> RenderableType:
    """Summary (nodes, parameters, MACs, opsets, inputs/outputs) and the op histogram."""
    summary = Table(title="model", title_justify="left", show_header=False, show_edge=False)
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("nodes", str(stats.nodes))
    summary.add_row("parameters", f"{fmt_count(stats.parameters)} ({fmt_bytes(stats.parameter_bytes)})")
    summary.add_row("MACs per sample", fmt_macs(stats))
    summary.add_row("opsets", ", ".join(f"{d} {v}" for d, v in stats.opsets.items()))
    summary.add_row("inputs", _io_text(stats.inputs))
    summary.add_row("outputs", _io_text(stats.outputs))
    ops = Table(title="ops", title_justify="left", show_edge=False, header_style="bold")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in sorted(stats.op_histogram.items(), key=lambda item: (-item[1], item[0])):
        ops.add_row(op, str(count))
    return Group(summary, Text(""), ops)


def render_inspection(info: Inspection) -> RenderableType:
    """``onnxopt inspect``: statistics, producer, and what each pass would do at its defaults."""
    previews = Table(title="what each pass would do (default settings)", title_justify="left", show_edge=False,
                     header_style="bold")
    for name, justify in (("pass", "left"), ("status", "left"), ("changes", "right"), ("+nodes", "right"),
                          ("−nodes", "right"), ("skipped", "right"), ("reason", "left")):
        previews.add_column(name, justify=justify)  # type: ignore[arg-type]
    for p in info.previews:
        style = None if p.status == "would change" else "dim"
        previews.add_row(p.name, p.status, str(p.changes), str(p.nodes_added), str(p.nodes_removed), str(p.skipped),
                         p.reason, style=style)
    header = Text(f"producer: {info.producer} · IR version {info.ir_version}", style="dim")
    return Group(header, render_stats(info.stats), Text(""), previews)


def print_inspection(info: Inspection, console: Console | None = None) -> None:
    (console or Console()).print(render_inspection(info))


# -- optimize -----------------------------------------------------------------------------------

def render_optimize_report(report: OptimizeReport) -> RenderableType:
    """The passes, the static before/after numbers, and the measured comparison when there is one."""
    before, after = report.before, report.after
    static = Table(title="before → after", title_justify="left", show_edge=False, header_style="bold")
    for name, justify in (("", "left"), ("before", "right"), ("after", "right"), ("after/before", "right")):
        static.add_column(name, justify=justify)  # type: ignore[arg-type]
    static.add_row("nodes", str(before.nodes), str(after.nodes), f"{after.nodes - before.nodes:+d}")
    static.add_row("parameters", fmt_count(before.parameters), fmt_count(after.parameters),
                   fmt_ratio(after.parameters, before.parameters))
    static.add_row("parameter bytes", fmt_bytes(before.parameter_bytes), fmt_bytes(after.parameter_bytes),
                   fmt_ratio(after.parameter_bytes, before.parameter_bytes))
    static.add_row("MACs per sample", fmt_macs(before), fmt_macs(after), _macs_ratio(before, after))
    parts: list[RenderableType] = [
        Text(f"{report.source} → {report.output or '(not saved)'}", style="bold"),
        render_pass_reports(report.passes), Text(""), static]
    if report.calibration:
        parts.append(Text(f"calibration: {report.calibration}", style="dim"))
    if report.comparison is not None:
        parts += [Text(""), render_comparison(report.comparison)]
    parts += _warnings(report.warnings)
    return Group(*parts)


def print_optimize_report(report: OptimizeReport, console: Console | None = None) -> None:
    (console or Console()).print(render_optimize_report(report))
