"""The report as one self-contained HTML file: the report's data as JSON, the page's script and style (report.js,
report.css beside this module) and plotly's offline JavaScript bundle, all inline, so the page opens without a
network (the browser test checks that it requests nothing but itself)."""

from __future__ import annotations

import html
import json
import math
from importlib import resources

from sptbench.core.errors import SptbenchError


def plotly_js() -> str:
    """plotly.js, from the `plotly` package's offline bundle (the `report` extra)."""
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise SptbenchError("the HTML report needs plotly: pip install 'sptbench[report]' (or pip install plotly)"
                            ) from None
    return get_plotlyjs()


def _asset(name: str) -> str:
    return resources.files("sptbench.reports").joinpath(name).read_text(encoding="utf-8")


def _finite(value):
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def script_json(data) -> str:
    """`data` as JSON that is safe inside a <script> element: no `</`, no `<!--`, strict JSON (no NaN)."""
    text = json.dumps(_finite(data), ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def render_html(report: dict, title: str = "sptbench report") -> str:
    """The page: header and filters are built by report.js from the embedded data."""
    bundle = plotly_js()
    if "</script" in bundle.lower():  # it would end the inline script early
        raise SptbenchError("plotly's bundle contains '</script': cannot inline it")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<style>\n{_asset('report.css')}</style>\n"
        f"<script>{bundle}</script>\n</head>\n<body>\n"
        f"<header><h1>{html.escape(title)}</h1><p id=\"summary\"></p><div id=\"filters\"></div></header>\n"
        "<main id=\"sections\"></main>\n"
        "<aside id=\"record-view\" hidden><button id=\"record-close\" type=\"button\" aria-label=\"close\">×</button>"
        "<h2 id=\"record-title\"></h2><div id=\"record-list\"></div><div id=\"record-body\"></div></aside>\n"
        f"<script type=\"application/json\" id=\"report-data\">{script_json(report)}</script>\n"
        f"<script>\n{_asset('report.js')}</script>\n</body>\n</html>\n"
    )
