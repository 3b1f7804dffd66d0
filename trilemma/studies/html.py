"""A report as one self-contained HTML page: the report's Markdown rendered by Python-Markdown
(tables included), every local image embedded as a data URI, one small stylesheet. The page needs no
other file and no network, so it can be mailed or opened from anywhere."""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path

import markdown

from trilemma.files import atomic_write_bytes

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1, h2, h3 { line-height: 1.2; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; } th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #eee; }
code { background: #f4f4f4; padding: 0 .2em; }
"""

_IMG = re.compile(r'(<img\b[^>]*\bsrc=")([^"]+)(")')


def _embed(match: re.Match, base: Path) -> str:
    src = html.unescape(match.group(2))
    path = base / src
    if src.startswith(("data:", "http:", "https:")) or not path.is_file():
        if not src.startswith("data:"):
            raise FileNotFoundError(f"the report links {src}, which is not a file under {base}")
        return match.group(0)
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    data = base64.b64encode(path.read_bytes()).decode()
    return f"{match.group(1)}data:{mime};base64,{data}{match.group(3)}"


def markdown_to_html(text: str, base: str | Path, title: str = "trilemma report") -> str:
    """Markdown ``text`` -> a whole HTML page, images (paths relative to ``base``) embedded."""
    body = markdown.markdown(text, extensions=["tables", "fenced_code"])
    body = _IMG.sub(lambda m: _embed(m, Path(base)), body)
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{html.escape(title)}</title>\n"
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def write_html(markdown_path: str | Path) -> Path:
    """``DIR/report.md`` -> ``DIR/report.html`` (atomically), self-contained."""
    md = Path(markdown_path)
    text = md.read_text()
    first = text.splitlines()[0].lstrip("# ").strip() if text.strip() else "trilemma report"
    return atomic_write_bytes(md.with_suffix(".html"), markdown_to_html(text, md.parent, title=first).encode())
