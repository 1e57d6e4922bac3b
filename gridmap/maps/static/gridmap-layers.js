/* gridmap: fill the overview's layers from the API (/map/layers/{key}).
 *
 * Every value from the server goes into the page as text (textContent, DOM nodes):
 * never as markup, so a stored "<img onerror=…>" stays the text it is.
 * Layers fetched by view reload when the map moves; the others load once, when shown.
 * window.gmPending counts fetches under way (0 once everything shown has loaded).
 */
(function () {
  "use strict";
  window.gmPending = 0;
  window.gmLoaded = window.gmLoaded || {};
  window.gmIndex = window.gmIndex || {};

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }

  function table(props, fields) {
    var t = el("table");
    fields.forEach(function (f) {
      var v = props[f[0]];
      if (v === undefined) { return; }
      var tr = el("tr");
      tr.appendChild(el("th", null, f[1]));
      tr.appendChild(el("td", null, v === null ? "" : v));
      t.appendChild(tr);
    });
    return t;
  }

  function facilityIcon(f) {
    var s = f.properties._s || {};
    var d = el("div", "gm-icon", s.mark || "");
    d.style.background = s.colour || "#333333";
    return L.divIcon({ html: d, className: "gm-facility", iconSize: [22, 22], iconAnchor: [11, 11] });
  }

  // Points above areas whatever order the layers arrive in (a click on a toilet inside
  // a zone opens the toilet).
  var POINTS = "gmPoints";
  function pointPane(map) {
    if (!map.getPane(POINTS)) { map.createPane(POINTS).style.zIndex = 450; }
    return POINTS;
  }

  function pointLayer(map, gm) {
    return function (f, ll) {
      if (gm.kind === "icon") { return L.marker(ll, { icon: facilityIcon(f) }); }
      var o = { radius: 6, color: "#ffffff", weight: 1, fill: true, fillOpacity: 0.95,
                pane: pointPane(map) };
      return L.circleMarker(ll, Object.assign(o, f.properties._s || {}));
    };
  }

  function bind(gm) {
    return function (f, layer) {
      if (gm.tooltip && gm.tooltip.length) {
        var tip = el("div");
        gm.tooltip.forEach(function (p) {
          var v = f.properties[p[0]];
          if (v === null || v === undefined) { return; }
          tip.appendChild(el("div", null, p[1] ? p[1] + "：" + v : v));
        });
        layer.bindTooltip(tip, { sticky: true });
      }
      if (gm.popup && gm.popup.length) {
        layer.bindPopup(table(f.properties, gm.popup), { maxWidth: 320 });
      }
    };
  }

  // Labels are DOM nodes: only those in view, and only from their zoom on.
  var MAX_LABELS = 1500;
  function labelLayer(map, data, gm) {
    var g = L.layerGroup(), minZoom = gm.labels.min_zoom || 0;
    function redraw() {
      g.clearLayers();
      if (map.getZoom() < minZoom) { return; }
      var view = map.getBounds().pad(0.2), n = 0;
      data.features.some(function (f) {
        var p = f.properties, text = p[gm.labels.field];
        if (!p._lp || text === null || text === undefined || !view.contains(p._lp)) { return false; }
        var d = el("div", gm.labels.css, text);
        L.marker(p._lp, {
          icon: L.divIcon({ html: d, className: "", iconSize: [120, 20], iconAnchor: [60, 10] }),
          interactive: false, keyboard: false,
        }).addTo(g);
        n += 1;
        return n >= MAX_LABELS;
      });
    }
    g.on("add", function () { map.on("moveend", redraw); redraw(); });
    g.on("remove", function () { map.off("moveend", redraw); });
    return g;
  }

  function searchRows(gj, gm) {
    var rows = [];
    gj.eachLayer(function (l) {
      var p = l.feature && l.feature.properties, name = p && p.name;
      if (name === null || name === undefined || name === "") { return; }
      var at = p._lp ? L.latLng(p._lp) : l.getLatLng ? l.getLatLng() : l.getBounds().getCenter();
      rows.push([String(name), gm.title, at.lat, at.lng]);
    });
    return rows;
  }

  function legend(map, spec, lg) {
    if (spec.legend) { map.removeControl(spec.legend); spec.legend = null; }
    if (!lg) { return; }
    var ctl = L.control({ position: "bottomright" });
    ctl.onAdd = function () {
      var box = el("div", "gm-box gm-legend");
      box.appendChild(el("h4", null, lg.title));
      lg.entries.forEach(function (e) {
        var row = el("div"), sw = el("span", "gm-swatch");
        sw.style.background = e[0];
        row.appendChild(sw);
        row.appendChild(document.createTextNode(e[1]));
        box.appendChild(row);
      });
      L.DomEvent.disableClickPropagation(box);
      return box;
    };
    spec.legend = ctl.addTo(map);
  }

  function households(data, group) {
    if (data.type === "Points") {
      data.points.forEach(function (p) {
        L.circleMarker(p, {
          radius: 3, color: "#ffffff", weight: 0.5, fillColor: "#4575b4", fillOpacity: 0.9,
          interactive: false,
        }).addTo(group);
      });
      return;
    }
    data.counts.forEach(function (c) {
      var n = c[2], size = n >= 1000 ? 44 : n >= 100 ? 36 : 28;
      var d = el("div", "gm-count", n);
      d.style.width = d.style.height = d.style.lineHeight = size + "px";
      L.marker([c[0], c[1]], {
        icon: L.divIcon({ html: d, className: "gm-count-wrap", iconSize: [size, size] }),
        interactive: false, keyboard: false,
      }).addTo(group);
    });
  }

  function draw(map, spec, data) {
    var group = spec.group, gm = data.gm;
    group.clearLayers();
    if (gm.kind === "households" || gm.kind === "household_counts") {
      households(data, group);
      window.gmLoaded[spec.key] = gm.kind === "households" ? data.points.length : data.counts.length;
      return;
    }
    var gj = L.geoJSON(data, {
      style: function (f) { return f.properties._s || {}; },
      pointToLayer: pointLayer(map, gm),
      onEachFeature: bind(gm),
      interactive: gm.interactive !== false,
    });
    gj.addTo(group);
    window["gm_layer_" + spec.key] = gj;
    if (gm.labels) { labelLayer(map, data, gm).addTo(group); }
    if (gm.search) { window.gmIndex[spec.key] = searchRows(gj, gm); }
    legend(map, spec, gm.legend);
    window.gmLoaded[spec.key] = data.features.length;
  }

  function url(map, spec) {
    if (!spec.byView) { return spec.url; }
    var b = map.getBounds();
    var box = [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()].map(function (v) {
      return v.toFixed(6);
    });
    return spec.url + "&bbox=" + box.join(",") + "&zoom=" + map.getZoom();
  }

  function load(map, spec) {
    var target = url(map, spec);
    if (target === spec.shown) { return; }
    if (spec.request) { spec.request.abort(); }
    var ctl = new AbortController();
    spec.request = ctl;
    window.gmPending += 1;
    fetch(target, { credentials: "same-origin", headers: { Accept: "application/json" }, signal: ctl.signal })
      .then(function (r) {
        if (!r.ok) { throw new Error("gridmap: layer " + spec.key + " answered " + r.status); }
        return r.json();
      })
      .then(function (data) {
        if (spec.request !== ctl) { return; }
        draw(map, spec, data);
        spec.shown = target;
      })
      .catch(function (e) { if (e.name !== "AbortError") { console.error(String(e)); } })
      .finally(function () {
        if (spec.request === ctl) { spec.request = null; }
        window.gmPending -= 1;
      });
  }

  window.gmLoadLayers = function (map, specs, groups) {
    specs.forEach(function (spec, i) {
      spec.group = groups[i];
      spec.group.on("add", function () { load(map, spec); });
      if (spec.byView) {
        map.on("moveend", function () { if (map.hasLayer(spec.group)) { load(map, spec); } });
      }
    });
    // after the page's own script has run: it sets the view (fitBounds) after this call
    setTimeout(function () {
      map.whenReady(function () {
        specs.forEach(function (spec) { if (map.hasLayer(spec.group)) { load(map, spec); } });
      });
    }, 0);
  };
})();
