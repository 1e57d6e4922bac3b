"""Leaflet elements whose content passes :mod:`gridmap.escape` (never folium's template literals).

folium's ``Tooltip`` and ``Popup`` paste their text between backticks, where ``${…}``
runs and a stray backtick breaks the page; these elements hand Leaflet one JavaScript
string literal instead. Their content is HTML the caller built with
:func:`gridmap.escape.html_text` around every stored value.
"""

from __future__ import annotations

from typing import Any

from branca.element import MacroElement
from folium.elements import JSCSSMixin
from jinja2 import Template

from gridmap.escape import js_string, script_json


class Tooltip(MacroElement):  # type: ignore[misc]
    """A tooltip bound to its parent layer; ``html`` is trusted markup with escaped values."""

    _template = Template(
        """{% macro script(this, kwargs) %}
        {{ this._parent.get_name() }}.bindTooltip({{ this.content }}, {sticky: true});
        {% endmacro %}"""
    )

    def __init__(self, html: str) -> None:
        super().__init__()
        self._name = "GmTooltip"
        self.content = js_string(html)


class Popup(MacroElement):  # type: ignore[misc]
    """A popup bound to its parent layer; ``html`` is trusted markup with escaped values."""

    _template = Template(
        """{% macro script(this, kwargs) %}
        {{ this._parent.get_name() }}.bindPopup({{ this.content }}, {maxWidth: {{ this.width }}});
        {% endmacro %}"""
    )

    def __init__(self, html: str, *, max_width: int = 320) -> None:
        super().__init__()
        self._name = "GmPopup"
        self.content = js_string(html)
        self.width = int(max_width)


class Control(MacroElement):  # type: ignore[misc]
    """A box on the map (legend, search, sheet header) holding trusted markup, plus a script.

    ``script`` is code of gridmap's own; any stored value in it must come through
    :func:`gridmap.escape.script_json`.
    """

    _template = Template(
        """{% macro script(this, kwargs) %}
        (function() {
          var ctl = L.control({position: {{ this.position }}});
          ctl.onAdd = function() {
            var div = L.DomUtil.create('div', {{ this.css }});
            div.innerHTML = {{ this.content }};
            L.DomEvent.disableClickPropagation(div);
            return div;
          };
          ctl.addTo({{ this._parent.get_name() }});
          {{ this.script }}
        })();
        {% endmacro %}"""
    )

    def __init__(self, html: str, *, position: str, css: str = "", script: str = "") -> None:
        super().__init__()
        self._name = "GmControl"
        self.content = js_string(html)
        self.position = js_string(position)
        self.css = js_string(f"gm-box {css}".strip())
        self.script = script


class Sheet(MacroElement):  # type: ignore[misc]
    """A section of the page under the map (a printable list) holding trusted markup."""

    _template = Template(
        """{% macro script(this, kwargs) %}
        (function() {
          var sec = document.createElement('section');
          sec.className = {{ this.css }};
          sec.innerHTML = {{ this.content }};
          document.body.appendChild(sec);
          window.addEventListener('beforeprint', function() {
            {{ this._parent.get_name() }}.invalidateSize();
          });
        })();
        {% endmacro %}"""
    )

    def __init__(self, html: str, *, css: str = "") -> None:
        super().__init__()
        self._name = "GmSheet"
        self.content = js_string(html)
        self.css = js_string(css)


class RemoteLayers(JSCSSMixin, MacroElement):  # type: ignore[misc]
    """Layer groups the browser fills from the API (``gridmap-layers.js``): ``specs`` are
    JSON (keys, URLs, whether fetched by view), ``groups`` the folium groups, in order."""

    _template = Template(
        """{% macro script(this, kwargs) %}
        gmLoadLayers({{ this._parent.get_name() }}, {{ this.specs }},
          [{% for g in this.groups %}{{ g.get_name() }}, {% endfor %}]);
        {% endmacro %}"""
    )

    def __init__(self, specs: list[dict[str, Any]], groups: list[Any], *, prefix: str) -> None:
        super().__init__()
        self._name = "GmRemoteLayers"
        self.specs = script_json(specs)
        self.groups = groups
        self.default_js = [("gridmap_layers", f"{prefix}/gridmap/gridmap-layers.js")]
