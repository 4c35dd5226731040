// Resource charts: replaces the server-drawn SVG sparklines with uPlot charts (axes,
// hover values) from the page's JSON endpoint, and refreshes them once a minute.
(function () {
  "use strict";
  var MB = 1024 * 1024;

  // Times in UTC, 24-hour, as the page's caption says (uPlot's default is local, 12-hour).
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function utcTime(ts) { var d = new Date(ts * 1000); return pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()); }
  function utcStamp(ts) {
    var d = new Date(ts * 1000);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " + utcTime(ts) + " UTC";
  }

  function options(kind, width, limit) {
    var isCpu = kind === "cpu";
    var unit = isCpu ? "%" : " MB";
    var fmt = function (u, v) { return v == null ? "—" : v.toFixed(isCpu ? 1 : 0) + unit; };
    return {
      width: width,
      height: 200,
      scales: { x: { time: true }, y: { range: function (u, min, max) { return [0, Math.max(max, limit) * 1.05]; } } },
      axes: [
        { values: function (u, ticks) { return ticks.map(utcTime); } },
        { values: function (u, ticks) { return ticks.map(function (t) { return t.toFixed(0) + unit; }); }, size: 60 }
      ],
      series: [
        { value: function (u, v) { return v == null ? "—" : utcStamp(v); } },
        { label: "average", stroke: "#0d6efd", width: 2, value: fmt },
        { label: "peak", stroke: "#6c757d", width: 1, dash: [4, 4], value: fmt },
        { label: "limit", stroke: "#dc3545", width: 1, dash: [2, 6], value: fmt }
      ]
    };
  }

  function rows(kind, data) {
    var scale = kind === "cpu" ? 1 : MB;
    var limit = (kind === "cpu" ? data.limits.cpu_percent : data.limits.memory_bytes) / scale;
    var avg = data[kind].map(function (v) { return v / scale; });
    var peak = data[kind + "_peak"].map(function (v) { return v / scale; });
    return { limit: limit, data: [data.t, avg, peak, data.t.map(function () { return limit; })] };
  }

  function setup() {
    var holder = document.querySelector("[data-metrics-url]");
    if (!holder || typeof window.uPlot === "undefined") { return; }
    var url = holder.getAttribute("data-metrics-url");
    var charts = {};

    function draw(data) {
      holder.querySelectorAll("[data-chart]").forEach(function (el) {
        var kind = el.getAttribute("data-chart");
        var r = rows(kind, data);
        if (charts[kind]) {
          charts[kind].setData(r.data);
          return;
        }
        el.classList.remove("d-none");
        var svg = document.getElementById(kind + "-sparkline");
        if (svg) { svg.classList.add("d-none"); }
        charts[kind] = new window.uPlot(options(kind, el.clientWidth || 500, r.limit), r.data, el);
      });
    }

    function load() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (data) { if (data && data.t.length) { draw(data); } })
        .catch(function () { /* the SVG stays */ });
    }

    load();
    window.setInterval(load, 60000);
    window.addEventListener("resize", function () {
      Object.keys(charts).forEach(function (kind) {
        var el = holder.querySelector('[data-chart="' + kind + '"]');
        charts[kind].setSize({ width: el.clientWidth, height: 200 });
      });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", setup);
  } else {
    setup();
  }
})();
