"""The efficacy report as one self-contained HTML file: the table, success per arm with its interval,
cost per episode against success (the cascade frontier), and the training curves. Plots are inline
SVG drawn here (no script, no network, no plotting dependency); every string is escaped."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from agentdistill.paths import write_atomic
from agentdistill.report.efficacy import COLUMNS, conclusions, rows

PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac", "#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
E = html.escape


def _nice_max(x: float) -> float:
    if x <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if m * exp >= x:
            return m * exp
    return 10 * exp


def success_chart(report: dict[str, Any]) -> str:
    arms = report["arms"]
    w, bar, left, top = 640, 22, 150, 24
    h = top + bar * len(arms) + 34
    scale = lambda v: left + (w - left - 20) * max(0.0, min(1.0, v))  # noqa: E731
    out = [f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="success per arm">']
    for t in range(0, 101, 20):
        x = scale(t / 100)
        out.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{h - 28}" stroke="#ddd"/>'
                   f'<text x="{x:.1f}" y="{h - 12}" text-anchor="middle" class="tick">{t}%</text>')
    for i, a in enumerate(arms):
        y = top + i * bar
        m, lo, hi = a["success"]
        color = "#999" if a["arm"] == report["base"] else PALETTE[i % len(PALETTE)]
        if not math.isnan(m):
            out.append(f'<rect x="{left}" y="{y + 3}" width="{scale(m) - left:.1f}" height="{bar - 8}" fill="{color}"/>'
                       f'<line x1="{scale(lo):.1f}" y1="{y + bar / 2 - 1}" x2="{scale(hi):.1f}" y2="{y + bar / 2 - 1}" '
                       f'stroke="#222" stroke-width="1.5"/>')
        out.append(f'<text x="{left - 6}" y="{y + bar / 2 + 3}" text-anchor="end">{E(a["arm"])}</text>')
    out.append("</svg>")
    return "".join(out)


def frontier(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Arms no other arm beats on both cost (lower) and success (higher), by cost."""
    best, out = -1.0, []
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if p[1] > best:
            out.append(p)
            best = p[1]
    return out


def cost_chart(report: dict[str, Any]) -> str:
    pts = [(a["cost_per_episode"], a["success"][0], a["arm"]) for a in report["arms"] if not math.isnan(a["success"][0])]
    w, h, left, bottom, top, right = 640, 320, 60, 40, 16, 110
    xmax = _nice_max(max((p[0] for p in pts), default=0.0) * 1.05)
    sx = lambda c: left + (w - left - right) * c / xmax  # noqa: E731
    sy = lambda s: top + (h - top - bottom) * (1 - s)  # noqa: E731
    out = [f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="cost per episode vs success">']
    for t in range(0, 101, 25):
        y = sy(t / 100)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w - right}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{t}%</text>')
    for j in range(5):
        c = xmax * j / 4
        out.append(f'<text x="{sx(c):.1f}" y="{h - bottom + 16}" text-anchor="middle" class="tick">${c:.4g}</text>')
    out.append(f'<text x="{(left + w - right) / 2}" y="{h - 6}" text-anchor="middle" class="tick">cost per episode (USD)'
               f'</text>')
    front = frontier(pts)
    if len(front) > 1:
        path = " ".join(f"{sx(c):.1f},{sy(s):.1f}" for c, s, _ in front)
        out.append(f'<polyline points="{path}" fill="none" stroke="#e15759" stroke-dasharray="4 3"/>')
    for i, a in enumerate(report["arms"]):
        m, lo, hi = a["success"]
        if math.isnan(m):
            continue
        x = sx(a["cost_per_episode"])
        color = PALETTE[i % len(PALETTE)]
        out.append(f'<line x1="{x:.1f}" y1="{sy(lo):.1f}" x2="{x:.1f}" y2="{sy(hi):.1f}" stroke="{color}"/>'
                   f'<circle cx="{x:.1f}" cy="{sy(m):.1f}" r="4.5" fill="{color}"/>'
                   f'<text x="{x + 7:.1f}" y="{sy(m) + 4:.1f}">{E(a["arm"])}</text>')
    out.append("</svg>")
    return "".join(out)


def curve_chart(name: str, curve: dict[str, Any]) -> str:
    xs, ys = curve["x"], curve["y"]
    if not xs:
        return ""
    w, h, left, bottom, top, right = 300, 180, 46, 30, 20, 10
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y1 = _nice_max(max(ys)) if max(ys) > 0 else 1.0
    sx = lambda x: left + (w - left - right) * (x - x0) / (x1 - x0)  # noqa: E731
    sy = lambda y: top + (h - top - bottom) * (1 - max(0.0, y) / y1)  # noqa: E731
    label = "loss" if curve["kind"] == "loss" else "divergence"
    out = [f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{E(name)} {label}">',
           f'<text x="{left}" y="13" class="title">{E(name)} ({E(curve.get("method", ""))}): {label}</text>']
    for j in range(3):
        v = y1 * j / 2
        out.append(f'<line x1="{left}" y1="{sy(v):.1f}" x2="{w - right}" y2="{sy(v):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 4}" y="{sy(v) + 4:.1f}" text-anchor="end" class="tick">{v:.3g}</text>')
    out.append(f'<text x="{left}" y="{h - 8}" class="tick">{"step" if label == "loss" else "iteration"} {x0:g}</text>'
               f'<text x="{w - right}" y="{h - 8}" text-anchor="end" class="tick">{x1:g}</text>')
    pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys))
    out.append(f'<polyline points="{pts}" fill="none" stroke="#4e79a7" stroke-width="1.8"/></svg>')
    return "".join(out)


def render_html(report: dict[str, Any]) -> str:
    env = report.get("env") or {}
    head = "".join(f"<th>{E(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{E(v)}</td>" for v in r) + "</tr>" for r in rows(report))
    collect = report.get("collect") or {}
    curves = "".join(curve_chart(n, c) for n, c in (report.get("curves") or {}).items()) or "<p>No training stage.</p>"
    findings = "".join(f"<li>{E(line)}</li>" for line in conclusions(report))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>agentdistill efficacy: {E(str(report.get("recipe")))}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 12px 0; }} th, td {{ padding: 4px 8px; border-bottom: 1px solid #ddd; }}
td {{ text-align: right; white-space: nowrap; }} td:first-child, td:nth-child(5) {{ text-align: left; }}
th {{ background: #f4f4f4; }} svg {{ font-size: 12px; margin: 6px 12px 6px 0; }} .tick {{ fill: #666; font-size: 11px; }}
.title {{ font-weight: 600; }} .curves svg {{ border: 1px solid #eee; }}
</style></head><body>
<h1>Efficacy: {E(str(report.get("recipe")))}</h1>
<p>Pipeline run <code>{E(str(report.get("pipeline_run")))}</code> on {E(str(env.get("name")))}
(held-out split {E(str(env.get("split")))}, tasks {E(", ".join(env.get("tasks") or ["all"]))}).
Teacher data: {E(str(collect.get("episodes")))} episodes ({E(str(collect.get("successes")))} successful),
${collect.get("cost") or 0:.4f}. Success intervals and paired differences to <b>{E(report["base"])}</b> are bootstrap 95%
intervals over the same held-out (task, variation, seed) triples.</p>
<ul>{findings}</ul>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>Success per arm</h2>{success_chart(report)}
<h2>Cost per episode vs success</h2>
<p>The dashed line joins the arms no other arm beats on both cost and success.</p>{cost_chart(report)}
<h2>Training curves</h2><div class="curves">{curves}</div>
</body></html>
"""


def write_html(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, render_html(report))
    return path
