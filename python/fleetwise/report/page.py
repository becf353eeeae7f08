"""Assembling the single self-contained HTML page: plotly.js inline once, one div per figure."""

from __future__ import annotations

import json
from html import escape

import plotly.io as pio
from plotly.offline import get_plotlyjs

from fleetwise.report.panel import Panel

CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1400px;margin:0 auto;padding:16px 28px 60px}
h1{font-size:1.6em;margin:.6em 0 .2em} h2{font-size:1.25em;margin:1.6em 0 .3em;border-bottom:1px solid #ddd;padding-bottom:.2em}
h3{font-size:1.05em;margin:1.2em 0 .3em}
p.desc,p.meta{color:#555;margin:.2em 0 .6em} p.note{background:#fff6e0;border-left:4px solid #e6a700;padding:.5em .8em;color:#5a4500}
nav a{margin-right:1em} code{font-size:.92em}
table.summary{border-collapse:collapse;margin:.4em 0 1em;font-size:.88em;background:#fff}
table.summary th,table.summary td{border:1px solid #ddd;padding:3px 8px;text-align:right;white-space:nowrap}
table.summary th:first-child,table.summary td:first-child{text-align:left}
table.summary thead th{background:#f0f0f0}
.swatch{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.4em;vertical-align:middle}
.fw-figure{background:#fff;border:1px solid #e4e4e4;margin:.3em 0 1em}
"""

BOOT = """
(function () {
  var nodes = document.querySelectorAll("script.fw-figure-data");
  for (var k = 0; k < nodes.length; k++) {
    var spec = JSON.parse(nodes[k].textContent);
    Plotly.newPlot(nodes[k].getAttribute("data-target"), spec.data, spec.layout, {responsive: true, displaylogo: false});
  }
})();
"""


HEAD = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"generator\" content=\"fleetwise report\">\n"
"""How every report begins (``write_report`` overwrites a file inside an input directory only when
it begins so: a report written there before)."""


def _json_for_script(obj_json: str) -> str:
    """JSON text safe inside a <script> element."""
    return obj_json.replace("</", "<\\/").replace("<!--", "<\\!--")


def figure_html(panel: Panel) -> str:
    """A section: heading, caption, then the figure's div and its JSON (or the skip note)."""
    out = [f'<section id="sec-{panel.name}"><h2>{escape(panel.title)}</h2><p class="desc">{escape(panel.description)}</p>']
    if panel.figure is None:
        out.append(f'<p class="note" id="note-{panel.name}">Not shown: {escape(panel.note or "no data")}</p>')
    else:
        spec = _json_for_script(pio.to_json(panel.figure, validate=False, pretty=False))
        out.append(f'<div id="{panel.div_id}" class="fw-figure"></div>')
        out.append(f'<script type="application/json" class="fw-figure-data" data-target="{panel.div_id}">{spec}</script>')
    out.append("</section>")
    return "".join(out)


def render(title: str, inputs: list[str], tables: list[tuple[str, str]], panels: list[Panel], colors: dict[str, str], notes: list[str]) -> str:
    """The whole page. ``tables`` are (heading, html) pairs shown before the figures."""
    nav = " ".join(f'<a href="#sec-{p.name}">{escape(p.title)}</a>' for p in panels)
    body = [
        f"<h1>{escape(title)}</h1>",
        '<p class="meta">Inputs: ' + ", ".join(f"<code>{escape(i)}</code>" for i in inputs) + "</p>",
        f"<nav>{nav}</nav>",
    ]
    body += [f'<p class="note">{escape(n)}</p>' for n in notes]
    for heading, html in tables:
        body.append(f'<section class="tables"><h2>{escape(heading)}</h2>{html}</section>')
    body += [figure_html(p) for p in panels]
    colors_json = _json_for_script(json.dumps(colors, sort_keys=True))
    return (
        HEAD
        + f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{escape(title)}</title>\n"
        f"<style>{CSS}</style>\n"
        f"<script type=\"text/javascript\">{get_plotlyjs()}</script>\n"
        "</head>\n<body>\n<main>\n" + "\n".join(body) + "\n</main>\n"
        f'<script type="application/json" id="fw-colors">{colors_json}</script>\n'
        f"<script type=\"text/javascript\">{BOOT}</script>\n</body>\n</html>\n"
    )
