// nova dashboard: charts, the overview's refresh, select-all, confirmations.
// No inline scripts anywhere (the Content-Security-Policy forbids them): everything is wired here.
(function () {
  "use strict";

  var charts = [];

  function seriesData(data, names) {
    return [data.t].concat(names.map(function (n) { return data[n]; }));
  }

  // seconds as "850 ms", "12.5 s", "4.2 min": three significant digits
  function seconds(v) {
    if (v === null || v === undefined) { return "–"; }
    var a = Math.abs(v);
    if (a === 0) { return "0"; }
    if (a < 1) { return +(v * 1000).toPrecision(3) + " ms"; }
    if (a < 120) { return +v.toPrecision(3) + " s"; }
    return +(v / 60).toPrecision(3) + " min";
  }

  function count(v) { return v === null || v === undefined ? "–" : (+v.toPrecision(4)).toString(); }

  var CHARTS = {
    throughput: {
      names: ["completed", "retried", "failed"],
      labels: ["completed", "retried", "dead-lettered"],
      colors: ["#1e8a52", "#c77a12", "#c23a3a"],
      perMinute: true,
      format: count
    },
    wait: { names: ["wait_p50", "wait_p99"], labels: ["p50", "p99"], colors: ["#4b6fb5", "#9a3fb5"], format: seconds },
    duration: { names: ["duration_p50", "duration_p99"], labels: ["p50", "p99"], colors: ["#1e8a52", "#c77a12"],
                format: seconds }
  };

  function pad(n) { return n < 10 ? "0" + n : "" + n; }

  // 24-hour UTC labels: HH:MM, with the date when the ticks span more than a day
  function timeLabels(u, splits) {
    var days = splits.length > 1 && splits[splits.length - 1] - splits[0] > 86400;
    return splits.map(function (ts) {
      var d = new Date(ts * 1e3);
      var hm = pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());
      return days ? pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " + hm : hm;
    });
  }

  function drawCharts(root) {
    charts.forEach(function (c) { c.destroy(); });
    charts = [];
    var holder = document.getElementById("charts");
    if (!holder || typeof uPlot === "undefined") { return; }
    var data = JSON.parse(holder.getAttribute("data-series"));
    var minutes = data.t.length > 1 ? (data.t[1] - data.t[0]) / 60 : 1;
    root.querySelectorAll("[data-chart]").forEach(function (el) {
      var spec = CHARTS[el.getAttribute("data-chart")];
      if (!spec) { return; }
      var values = seriesData(data, spec.names);
      if (spec.perMinute && minutes !== 1) {
        values = values.map(function (column, i) {
          return i === 0 ? column : column.map(function (v) { return v === null ? null : v / minutes; });
        });
      }
      var series = [{}].concat(spec.names.map(function (n, i) {
        return { label: spec.labels[i], stroke: spec.colors[i], width: 1.5, spanGaps: false,
                 points: { show: data.t.length <= 100, size: 4 },
                 value: function (u, v) { return spec.format(v); } };
      }));
      var opts = {
        width: Math.max(el.clientWidth, 300), height: 220, series: series,
        scales: { x: { time: true } },
        axes: [{ values: timeLabels },
               { size: 70, values: function (u, splits) { return splits.map(spec.format); } }],
        tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"); },
        legend: { live: true }
      };
      el.textContent = "";
      charts.push(new uPlot(opts, values, el));
    });
  }

  function setUpRefresh() {
    var box = document.getElementById("refresh");
    if (!box) { return; }
    var seconds = parseInt(box.getAttribute("data-interval"), 10);
    var button = document.getElementById("refresh-toggle");
    var paused = false;
    button.addEventListener("click", function () {
      paused = !paused;
      button.setAttribute("aria-pressed", paused ? "true" : "false");
      button.textContent = paused ? "Resume" : "Pause";
      box.classList.toggle("paused", paused);
    });
    window.setInterval(function () {
      if (paused || document.hidden || typeof htmx === "undefined") { return; }
      htmx.ajax("GET", box.getAttribute("data-url"),
                { target: "#overview-body", select: "#overview-body", swap: "outerHTML" });
    }, seconds * 1000);
  }

  document.addEventListener("change", function (event) {
    var all = event.target;
    if (!all.matches || !all.matches("input[data-select-all]")) { return; }
    var form = all.closest("form") || document;
    form.querySelectorAll("input[name=ids]").forEach(function (box) { box.checked = all.checked; });
  });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var button = event.submitter;
    var question = (button && button.getAttribute("data-confirm")) || form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); }
  });

  document.addEventListener("DOMContentLoaded", function () {
    drawCharts(document);
    setUpRefresh();
  });
  document.addEventListener("htmx:afterSettle", function () { drawCharts(document); });
  window.addEventListener("resize", function () { drawCharts(document); });
})();
