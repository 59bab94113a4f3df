"""Render a `Document` as Markdown and as one self-contained HTML file (figures inlined as
base64 PNG, no scripts, no network). Every string is HTML-escaped: run names and config values
come from users."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from dfl.experiments.document import Document, Figure, Section, Table, fmt

# ------------------------------------------------------------------------------- Markdown


def md_table(table: Table) -> str:
    def cell(v: object) -> str:
        return fmt(v).replace("|", "\\|").replace("\n", " ")

    lines = []
    if table.caption:
        lines += [f"*{table.caption}*", ""]
    lines.append("| " + " | ".join(table.columns) + " |")
    lines.append("|" + "---|" * len(table.columns))
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.rows]
    return "\n".join(lines)


def anchor(title: str) -> str:
    """A section's id, as GitHub makes them from a heading: '3.2 Q2 — CNN' -> '32-q2--cnn'."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def _md_contents(doc: Document) -> str:
    titles = [s.title for s in doc.sections] + (["Environment"] if doc.environment else [])
    return "**Contents:** " + " · ".join(f"[{t}](#{anchor(t)})" for t in titles)


def _md_section(s: Section) -> str:
    parts = [f"## {s.title}"]
    if s.question:
        parts.append("> " + s.question.replace("\n", "\n> "))
    if s.missing:
        parts.append(f"**Missing:** {s.missing}")
    parts += s.paragraphs
    parts += [md_table(t) for t in s.tables]
    parts += [f"![{f.caption}]({f.path})\n\n*{f.caption}*" for f in s.figures]
    return "\n\n".join(parts)


def to_markdown(doc: Document) -> str:
    parts = [f"# {doc.title}", *doc.summary, _md_contents(doc)]
    parts += [_md_section(s) for s in doc.sections]
    if doc.environment:
        parts += ["## Environment", md_table(doc.environment)]
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------- HTML

STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;
overflow-wrap:anywhere}
h1{border-bottom:2px solid #333}h2{margin-top:2em;border-bottom:1px solid #ccc}
blockquote{color:#555;border-left:4px solid #ccc;margin:1em 0;padding:.2em 1em}
.table{overflow-x:auto;max-width:100%}table{border-collapse:collapse;margin:1em 0;font-size:13px}
td,th{overflow-wrap:normal}nav{background:#f7f7f7;padding:.5em 1em}nav a{margin-right:1em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;white-space:nowrap}
caption{caption-side:top;font-style:italic}code{background:#f3f3f3;padding:0 3px}
figure{margin:1em 0}img{max-width:100%}figcaption{font-style:italic;color:#555}
.missing{color:#a00;font-weight:bold}
"""


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(_html_cell(v) for v in row) + "</tr>" for row in table.rows)
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    # In a box of its own that scrolls sideways: a wide table on a phone moves, not the page
    return (
        f'<div class="table"><table>{caption}<thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _html_cell(value: object) -> str:
    text = _inline(fmt(value))  # a command in a cell reads as code, not between backticks
    if text == "missing":
        return f'<td><span class="missing">{text}</span></td>'
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>"


def _html_figure(fig: Figure, root: Path) -> str:
    path = root / fig.path
    caption = html.escape(fig.caption)
    if not path.exists():
        return f'<p class="missing">missing figure: {html.escape(fig.path)}</p>'
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f'<figure><img alt="{caption}" src="data:image/png;base64,{data}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _inline(text: str) -> str:
    """Escape, then render the two bits of Markdown the report's prose uses: **bold**, `code`."""
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _html_paragraph(text: str) -> str:
    return f"<p>{_inline(text)}</p>"


def _html_section(s: Section, root: Path) -> str:
    parts = [f'<section id="{anchor(s.title)}"><h2>{html.escape(s.title)}</h2>']
    if s.question:
        parts.append(f"<blockquote>{html.escape(s.question)}</blockquote>")
    if s.missing:
        parts.append(f'<p class="missing">Missing: {html.escape(s.missing)}</p>')
    parts += [_html_paragraph(p) for p in s.paragraphs]
    parts += [_html_table(t) for t in s.tables]
    parts += [_html_figure(f, root) for f in s.figures]
    parts.append("</section>")
    return "\n".join(parts)


def to_html(doc: Document, root: Path) -> str:
    body = [f"<h1>{html.escape(doc.title)}</h1>"]
    body += [_html_paragraph(p) for p in doc.summary]
    titles = [s.title for s in doc.sections] + (["Environment"] if doc.environment else [])
    links = "".join(f'<a href="#{anchor(t)}">{html.escape(t)}</a>' for t in titles)
    body.append(f"<nav>{links}</nav>")
    body += [_html_section(s, root) for s in doc.sections]
    if doc.environment:
        body += [
            '<section id="environment"><h2>Environment</h2>',
            _html_table(doc.environment),
            "</section>",
        ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(doc.title)}</title><style>{STYLE}</style></head>"
        "<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
