"""The report as a document: sections (text, a table, a figure) rendered to Markdown and to HTML.

Task-agnostic: each task's report (`compress/tasks/<task>/report.py`) builds its list of sections; both renderings
come from that one list, so they always say the same.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Section:
    title: str | None = None
    level: int = 2
    paragraphs: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    right: set[int] = field(default_factory=set)  # right-aligned (numeric) columns
    rows: list[list[str]] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    plot: str | None = None  # a key of the plots dict
    caption: str = ""


def mb(n: float | None) -> str:
    return "–" if n is None else f"{n / 1e6:.1f}"


def pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.2f}%"


def ms(x: float | None) -> str:
    return "–" if x is None else (f"{x:.2f}" if x < 100 else f"{x:.0f}")


def cpu_line(env: dict) -> str:
    cpu = env["cpu"]
    isa = ", ".join(k for k, on in cpu["isa"].items() if on) or "none detected"
    return f"{cpu['model']} ({cpu['machine']}, {cpu['logical_cores']} logical cores; ISA: {isa})"


def target_line(name: str, d: dict, env: dict) -> str:
    cores = d.get("cpus")
    pin = f"pinned to core(s) {','.join(map(str, cores))}" if cores else "not pinned"
    cap = d.get("memory_limit_bytes")
    cap_text = (
        f"address space capped at {cap / 2**20:.0f} MiB (RLIMIT_AS) in the memory probe" if cap else "no memory cap"
    )
    over = " (more threads than cores: oversubscribed)" if d.get("oversubscribed") else ""
    return (
        f"**{name}**: {d['threads']} intra-op thread(s){over}, {pin}, "
        f"intra-op spinning {'on' if d.get('intra_op_spinning') else 'off'}, {cap_text}. "
        f"Emulated on {cpu_line(env)}."
    )


def fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {fmt_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    return str(v)


NOT_SHIPPED = "No int8 model fitted these variants' accuracy budget; their float32 source stays the model to deploy."


def steps_section(report: dict, not_shipped_note: str = NOT_SHIPPED) -> list[Section]:
    sec = Section("What each step did", paragraphs=["Figures from each step's record in manifest.json."])
    for name, summary in report.get("steps", {}).items():
        if summary:
            sec.bullets.append(f"**{name}**: " + "; ".join(f"{k} {fmt_value(v)}" for k, v in summary.items()))
    out = [sec]
    if report.get("not_shipped"):
        out.append(
            Section(
                "Not shipped",
                paragraphs=[not_shipped_note],
                bullets=[f"**{k}**: {v}" for k, v in report["not_shipped"].items()],
            )
        )
    return out


def stage_section(report: dict) -> list[Section]:
    sec = Section("Stage wall time", header=["step", "wall s"], right={1})
    for name, st in report["stages"].items():
        sec.rows.append([name, f"{st['wall_s']}" if st["wall_s"] is not None else "–"])
    return [sec, Section(plot="stage_wall_time", caption="Wall time per step")]


def _md_table(sec: Section) -> list[str]:
    lines = ["| " + " | ".join(sec.header) + " |"]
    lines.append("|" + "|".join("---:" if i in sec.right else "---" for i in range(len(sec.header))) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in sec.rows]
    return lines


def render_md(sections: list[Section], plots: dict[str, str]) -> str:
    lines: list[str] = []
    for sec in sections:
        if sec.plot and sec.plot not in plots:
            continue
        if sec.title:
            lines += ["#" * sec.level + " " + sec.title, ""]
        for p in sec.paragraphs:
            if p:
                lines += [p, ""]
        if sec.header:
            lines += [*_md_table(sec), ""]
        if sec.bullets:
            lines += [f"- {b}" for b in sec.bullets] + [""]
        if sec.plot:
            lines += [f"![{sec.caption}]({plots[sec.plot]})", ""]
    return "\n".join(lines)


def _inline_md(text: str) -> str:
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;
color:#222;line-height:1.45}
table{border-collapse:collapse;margin:0.5em 0 1.2em;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;white-space:nowrap}
th{background:#f3f5f8;position:sticky;top:0}
tr:nth-child(even) td{background:#fafafa}
td.r,th.r{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
code{background:#f3f3f3;padding:0 3px}
"""


def render_html_sections(title: str, sections: list[Section], plots: dict[str, bytes]) -> str:
    """Sections as one self-contained HTML page (figures embedded as base64 PNG)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for sec in sections:
        if sec.plot and sec.plot not in plots:
            continue
        if sec.title:
            parts.append(f"<h{sec.level}>{html.escape(sec.title)}</h{sec.level}>")
        parts += [f"<p>{_inline_md(p)}</p>" for p in sec.paragraphs if p]
        if sec.header:
            parts.append("<table><thead><tr>")
            parts += [
                f"<th class='{'r' if i in sec.right else ''}'>{html.escape(h)}</th>" for i, h in enumerate(sec.header)
            ]
            parts.append("</tr></thead><tbody>")
            for row in sec.rows:
                cells = "".join(
                    f"<td class='{'r' if i in sec.right else ''}'>{_inline_md(c)}</td>" for i, c in enumerate(row)
                )
                parts.append(f"<tr>{cells}</tr>")
            parts.append("</tbody></table>")
        if sec.bullets:
            parts.append("<ul>" + "".join(f"<li>{_inline_md(b)}</li>" for b in sec.bullets) + "</ul>")
        if sec.plot:
            data = base64.b64encode(plots[sec.plot]).decode("ascii")
            parts.append(f"<figure><img alt='{html.escape(sec.caption)}' src='data:image/png;base64,{data}'></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_atomic(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


# ---- quality gates (compress.gate) ----


def gated_variants(manifest: dict) -> list[dict]:
    """Variants that failed their quality gate, or were not built because a model they come from did."""
    out = []
    for step, rec in manifest["stages"].items():
        if not rec or rec.get("status") not in ("failed-gate", "skipped-gate") or step.startswith("export/"):
            continue
        gate = (rec.get("metrics") or {}).get("gate") or {}
        out.append(
            {
                "name": step.split("/", 1)[-1],
                "step": step,
                "stage": step.split("/")[0],
                "status": rec["status"],
                "metric": gate.get("metric"),
                "value": gate.get("value"),
                "parent": gate.get("parent"),
                "parent_value": gate.get("parent_value"),
                "bound": gate.get("bound"),
                "reason": "; ".join(gate.get("reasons", [])) or rec.get("reason", ""),
            }
        )
    return out


def gated_rows(report: dict, columns: int) -> list[list[str]]:
    """Rows for the main table: each gated variant with its held-out figure in the gate column, dashes elsewhere."""
    rows = []
    for g in report.get("gated", []):
        if g["status"] == "failed-gate":
            figure = f"{g['value']:.4g}" if isinstance(g.get("value"), float) else "–"
            cell = f"**failed**: held-out {g['metric']} {figure}" + (f" ({g['bound']})" if g.get("bound") else "")
        else:
            cell = "**not built**"
        rows.append([f"{g['name']} ⛔", g["stage"]] + ["–"] * (columns - 3) + [cell])
    return rows


def gated_note(report: dict) -> str:
    gated = report.get("gated", [])
    if not gated:
        return "Quality gate: every variant passed (held-out figures against its parent and the collapse checks)."
    return (
        "⛔ failed its quality gate or was not built from one that did; nothing was measured, built or shipped "
        "from it: " + "; ".join(f"**{g['name']}**: {g['reason']}" for g in gated) + "."
    )
