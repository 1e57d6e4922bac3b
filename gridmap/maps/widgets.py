"""Page furniture: legends, name search, full screen, coordinate read-out, styles (no plugins)."""

from __future__ import annotations

from collections.abc import Sequence

import folium
from branca.element import Element

from gridmap.escape import html_text, script_json
from gridmap.maps.base import MapFrame
from gridmap.maps.elements import Control

PAGE_CSS = """<style>
.gm-household { background: #4575b4; border: 1px solid #fff; border-radius: 50%; }
.gm-icon { width: 22px; height: 22px; line-height: 22px; border-radius: 50%; color: #fff;
  font: bold 12px "Noto Sans CJK SC", "Microsoft YaHei", sans-serif; text-align: center;
  border: 2px solid #fff; box-shadow: 0 0 2px #333; }
.gm-label { font: 13px "Noto Sans CJK SC", "Microsoft YaHei", sans-serif; color: #40004b;
  text-shadow: 0 0 3px #fff, 0 0 3px #fff; white-space: nowrap; text-align: center; }
.gm-label-small { font: 11px sans-serif; color: #00441b; text-shadow: 0 0 2px #fff;
  white-space: nowrap; text-align: center; }
.gm-box { background: rgba(255,255,255,0.92); padding: 6px 9px; border-radius: 4px;
  box-shadow: 0 1px 4px rgba(0,0,0,0.3); font: 12px "Noto Sans CJK SC", sans-serif; }
.gm-box h4 { margin: 0 0 4px; font-size: 13px; }
.gm-swatch { display: inline-block; width: 14px; height: 10px; margin-right: 5px;
  border: 1px solid #999; vertical-align: middle; }
.gm-search input { width: 150px; }
.gm-search ul { list-style: none; margin: 4px 0 0; padding: 0; max-height: 160px;
  overflow-y: auto; }
.gm-search li { cursor: pointer; padding: 1px 2px; }
.gm-search li:hover { background: #e0ecf4; }
.gm-far .gm-label-small { display: none; }
.gm-count { border-radius: 50%; background: rgba(69,117,180,0.75); color: #fff;
  text-align: center; font: bold 12px sans-serif; border: 2px solid #fff; }
@media print { .leaflet-control-layers, .gm-search, .gm-tools { display: none; } }
</style>"""


def add_page_css(frame: MapFrame) -> None:
    """The map pages' own styles (once per page)."""
    frame.map.get_root().header.add_child(Element(PAGE_CSS), name="gm_css")


def add_legend(
    frame: MapFrame,
    title: str,
    entries: Sequence[tuple[str, str]],
    *,
    position: str = "bottomright",
) -> None:
    """A legend box: a title and (colour, label) rows."""
    rows = "".join(
        f'<div><span class="gm-swatch" style="background:{html_text(c)}"></span>'
        f"{html_text(label)}</div>"
        for c, label in entries
    )
    frame.map.add_child(
        Control(f"<h4>{html_text(title)}</h4>{rows}", position=position, css="gm-legend")
    )


# GCJ-02 → WGS84 in the browser, for the coordinate read-out over a GCJ-02 basemap
# (the same formula as gridmap.crs, iterated).
_GCJ_JS = """
function gmDelta(x, y) {
  var a = 6378245.0, ee = 0.00669342162296594323, pi = Math.PI, dx = x - 105, dy = y - 35;
  var c = 20 * Math.sin(6 * dx * pi) + 20 * Math.sin(2 * dx * pi);
  var tl = -100 + 2*dx + 3*dy + 0.2*dy*dy + 0.1*dx*dy + 0.2*Math.sqrt(Math.abs(dx))
    + (c + 20*Math.sin(dy*pi) + 40*Math.sin(dy/3*pi) + 160*Math.sin(dy/12*pi)
       + 320*Math.sin(dy*pi/30)) * 2 / 3;
  var tn = 300 + dx + 2*dy + 0.1*dx*dx + 0.1*dx*dy + 0.1*Math.sqrt(Math.abs(dx))
    + (c + 20*Math.sin(dx*pi) + 40*Math.sin(dx/3*pi) + 150*Math.sin(dx/12*pi)
       + 300*Math.sin(dx/30*pi)) * 2 / 3;
  var r = y / 180 * pi, m = 1 - ee * Math.sin(r) * Math.sin(r), s = Math.sqrt(m);
  return [tn * 180 / (a / s * Math.cos(r) * pi), tl * 180 / ((a * (1 - ee)) / (m * s) * pi)];
}
function gmToWgs(x, y) {
  var wx = x, wy = y;
  for (var i = 0; i < 6; i++) { var d = gmDelta(wx, wy); wx = x - d[0]; wy = y - d[1]; }
  return [wx, wy];
}
"""


def add_tools(frame: MapFrame, search_index: Sequence[tuple[str, str, float, float]]) -> None:
    """Name search (grids, communities, facilities …), full screen, coordinate read-out.

    ``search_index`` rows are (name, kind, lat, lon) in the map's datum.
    """
    zh = frame.lang == "zh"
    m = frame.map.get_name()
    index = script_json([list(r) for r in search_index])
    placeholder = "搜索网格、社区、设施…" if zh else "Search grids, communities, sites…"
    search_js = f"""
      window.gmIndex = window.gmIndex || {{}};
      window.gmIndex.page = {index};  // layers fetched later add their own rows
      var box = document.getElementById('gm-q'), list = document.getElementById('gm-hits');
      box.addEventListener('input', function() {{
        var q = box.value.trim(); list.innerHTML = '';
        if (!q) return;
        var rows = Object.keys(window.gmIndex).reduce(function(a, k) {{
          return a.concat(window.gmIndex[k]); }}, []);
        rows.filter(function(r) {{ return r[0].indexOf(q) >= 0; }}).slice(0, 12)
          .forEach(function(r) {{
            var li = document.createElement('li'); li.textContent = r[0] + ' · ' + r[1];
            li.addEventListener('click', function() {{ {m}.setView([r[2], r[3]], 17); }});
            list.appendChild(li);
          }});
      }});
    """
    frame.map.add_child(
        Control(
            f'<input id="gm-q" type="search" placeholder="{placeholder}"><ul id="gm-hits"></ul>',
            position="topleft",
            css="gm-search",
            script=search_js,
        )
    )
    full = "全屏" if zh else "Full screen"
    gcj = frame.datum != "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
    if gcj:
        show_xy = (
            "var w = gmToWgs(x, y); txt = 'WGS84 ' + w[0].toFixed(6) + ', ' + w[1].toFixed(6)"
            " + ' · GCJ-02 ' + x.toFixed(6) + ', ' + y.toFixed(6);"
        )
    else:
        show_xy = "txt = 'WGS84 ' + x.toFixed(6) + ', ' + y.toFixed(6);"
    coord_js = (
        (_GCJ_JS if gcj else "")
        + f"""
      var out = document.getElementById('gm-xy');
      {m}.on('mousemove', function(e) {{
        var x = e.latlng.lng, y = e.latlng.lat, txt;
        {show_xy}
        out.textContent = txt;
      }});
      function gmZoomClass() {{
        var c = {m}.getContainer();
        if ({m}.getZoom() < 16) {{ c.classList.add('gm-far'); }}
        else {{ c.classList.remove('gm-far'); }}
      }}
      {m}.on('zoomend', gmZoomClass); gmZoomClass();
      document.getElementById('gm-full').addEventListener('click', function() {{
        var el = {m}.getContainer();
        if (document.fullscreenElement) {{ document.exitFullscreen(); }}
        else if (el.requestFullscreen) {{ el.requestFullscreen(); }}
      }});
    """
    )
    frame.map.add_child(
        Control(
            f'<button id="gm-full" type="button">{full}</button> <span id="gm-xy"></span>',
            position="bottomleft",
            css="gm-tools",
            script=coord_js,
        )
    )


def add_measure_picker(frame: MapFrame, current: str, measures: dict[str, str]) -> None:
    """A selector that reloads the page with another grid measure (``?measure=``)."""
    options = "".join(
        f'<option value="{html_text(k)}"{" selected" if k == current else ""}>'
        f"{html_text(v)}</option>"
        for k, v in measures.items()
    )
    label = "网格着色" if frame.lang == "zh" else "Colour grids by"
    script = """
      document.getElementById('gm-measure').addEventListener('change', function(e) {
        var q = new URLSearchParams(window.location.search);
        q.set('measure', e.target.value); window.location.search = q.toString();
      });
    """
    frame.map.add_child(
        Control(
            f'<label>{label} <select id="gm-measure">{options}</select></label>',
            position="topleft",
            css="gm-measure",
            script=script,
        )
    )


def add_title(frame: MapFrame, text: str) -> None:
    """The page title (browser tab): the figure's title, escaped, substituted as a value.

    Never put a value into branca's ``Element(...)``: its text is compiled as a Jinja
    template, so ``{{ … }}`` in a stored name would run on the server.
    """
    frame.map.get_root().title = html_text(text)


__all__ = ["add_legend", "add_page_css", "add_title", "add_tools", "folium"]


def add_month_slider(frame: MapFrame, current: str, months: list[str], label: str) -> None:
    """A slider over ``months`` (YYYY-MM-01) that reloads the page on another (``?on=``)."""
    if not months:
        return
    at = months.index(current) if current in months else len(months) - 1
    script = f"""
      var gmMonths = {script_json(months)};
      var gmSlider = document.getElementById('gm-month');
      var gmShown = document.getElementById('gm-month-shown');
      gmSlider.addEventListener('input', function(e) {{
        gmShown.textContent = gmMonths[+e.target.value].slice(0, 7);
      }});
      gmSlider.addEventListener('change', function(e) {{
        var q = new URLSearchParams(window.location.search);
        q.set('on', gmMonths[+e.target.value]); window.location.search = q.toString();
      }});
    """
    frame.map.add_child(
        Control(
            f'<label>{html_text(label)} <input type="range" id="gm-month" min="0" '
            f'max="{len(months) - 1}" step="1" value="{at}"> '
            f'<b id="gm-month-shown">{html_text(months[at][:7])}</b></label>',
            position="topleft",
            css="gm-measure",
            script=script,
        )
    )
