"""A report's content once, written twice: ``report.md`` and a self-contained
``index.html`` (inline style, no script, no external resource; figures by relative link).

Everything that comes from a run or its data (class names, sentences, paths) is escaped:
a CSV's text is untrusted input and must not become markup in either page.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metafit.io import atomic_write_text

__all__ = ["Table", "Section", "ReportPage", "to_markdown", "to_html", "write_report",
           "run_label"]


@dataclass
class Table:
    """``header`` and ``rows`` of cells (plain text); ``marks``: an optional CSS class per
    row (``"right"`` / ``"wrong"`` colour it in the HTML page)."""

    header: list[str]
    rows: list[list[str]]
    marks: list[str] = field(default_factory=list)


@dataclass
class Section:
    """A heading, a paragraph, figures (``(file name, caption)``, relative to the page) and
    tables, in that order."""

    heading: str
    text: str = ""
    figures: list[tuple[str, str]] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)


@dataclass
class ReportPage:
    """The page: a title, warnings shown first, then the sections."""

    title: str
    warnings: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def figures(self) -> list[str]:
        """Every figure file the page shows, in order."""
        return [name for s in self.sections for name, _ in s.figures]


#: Markdown punctuation that makes links, images and code from the data: with the
#: brackets escaped no ``[text](url)`` or ``![alt](url)`` forms (parentheses stay as text).
_MD_PUNCTUATION = re.compile(r"([\\`\[\]])")


def _md_cell(text: str) -> str:
    """A table cell: one line, ``|`` escaped, no markup from the data: HTML escaped, and
    the brackets and backticks of links, images and code (``[x](url)``, ``![x](url)``)
    written with a backslash so that a viewer shows them rather than fetching or linking."""
    flat = " ".join(str(text).split())
    return _MD_PUNCTUATION.sub(r"\\\1", html.escape(flat, quote=False)).replace("|", "\\|")


def to_markdown(page: ReportPage) -> str:
    """``page`` as Markdown."""
    out = [f"# {page.title}", ""]
    for w in page.warnings:
        out += [f"> **Warning:** {_md_cell(w)}", ">"]
    if page.warnings:
        out[-1] = ""
    for s in page.sections:
        out += [f"## {s.heading}", ""]
        if s.text:
            out += [_md_cell(s.text), ""]
        for name, caption in s.figures:
            out += [f"![{_md_cell(caption)}]({name})", ""]
        for t in s.tables:
            out.append("| " + " | ".join(_md_cell(h) for h in t.header) + " |")
            out.append("|" + "---|" * len(t.header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


STYLE = """body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}
.warning{background:#fff1c9;border:1px solid #d08c00;color:#8a1c00;padding:.5em 1em;
border-radius:6px;margin:.5em 0}
figure{margin:1em 0}img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:90%;color:#555}
table{border-collapse:collapse;font-size:90%;margin:.5em 0}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f2f2f2}tr.right td:last-child{color:#1a9641}
tr.wrong td{background:#fde8e8}tr.wrong td:last-child{color:#d7191c;font-weight:bold}"""


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)


def _html_table(t: Table) -> list[str]:
    out = ["<table>", "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in t.header) + "</tr>"]
    for i, row in enumerate(t.rows):
        mark = f' class="{_esc(t.marks[i])}"' if i < len(t.marks) and t.marks[i] else ""
        out.append(f"<tr{mark}>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return out


def to_html(page: ReportPage) -> str:
    """``page`` as one self-contained HTML document."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{_esc(page.title)}</title>", f"<style>{STYLE}</style>", "</head>",
           "<body>", f"<h1>{_esc(page.title)}</h1>"]
    out += [f'<div class="warning"><strong>Warning:</strong> {_esc(w)}</div>'
            for w in page.warnings]
    for s in page.sections:
        out.append(f"<h2>{_esc(s.heading)}</h2>")
        if s.text:
            out.append(f"<p>{_esc(s.text)}</p>")
        for name, caption in s.figures:
            out += [f'<figure><a href="{_esc(name)}"><img src="{_esc(name)}" '
                    f'alt="{_esc(caption)}"></a>', f"<figcaption>{_esc(caption)}"
                    "</figcaption></figure>"]
        for t in s.tables:
            out += _html_table(t)
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def write_report(out: Path, page: ReportPage, results: Mapping[str, Any]) -> list[Path]:
    """Write ``page`` as ``out/report.md`` and ``out/index.html`` and ``results`` (run
    label -> its result as a dict) as ``out/report.json``; returns the page's figures and
    the two pages."""
    atomic_write_text(out / "report.md", to_markdown(page))
    atomic_write_text(out / "index.html", to_html(page))
    atomic_write_text(out / "report.json", json.dumps(dict(results), indent=1))
    return [*(out / name for name in page.figures()), out / "report.md", out / "index.html"]


def run_label(name: str, taken: Collection[str]) -> str:
    """A run's label in a report: ``name`` (its algorithm), or ``name-2``, ``name-3``, ...
    when ``taken`` already holds it."""
    label, n = name, 1
    while label in taken:
        n += 1
        label = f"{name}-{n}"
    return label
