// The dashboards' charts: the series the server put in the page (#charts-data, json_script; no
// extra request) drawn with plotly.js. Loaded `defer` after plotly.min.js, so the page is parsed
// and painted before either runs. Drawing ~30 charts in one go held the load event and every
// click for about a second: the charts of the screen in view are drawn first, the others when they
// scroll into view or, one per idle slice of the browser, when nothing else is waiting, so that a
// click or a scroll never waits behind more than one chart.
// data-drawn marks a finished plot (the browser tests and bench/bench_dashboard.py wait on it).
(function () {
  "use strict";
  var source = document.getElementById("charts-data");
  if (!source || typeof Plotly === "undefined") { return; }
  var pending = new Map();  // element -> its chart, until drawn
  JSON.parse(source.textContent).forEach(function (c) {
    var el = document.getElementById(c.id);
    if (el) { pending.set(el, c); }
  });

  var MARGIN = { l: 50, r: 10, t: 10, b: 40 };

  // A series with more points than the plot is wide (24 h per minute: 1,440 points in ~380 px)
  // has its markers merged into a band that the line already draws, at one SVG element per point
  // (most of the drawing time): it is drawn as the line alone, every point kept (hover included),
  // with markers only on the points that the line cannot show, those between two gaps.
  function lonePoints(c) {
    var x = [], y = [];
    c.y.forEach(function (v, i) {
      if (v !== null && (i === 0 || c.y[i - 1] === null) && (i === c.y.length - 1 || c.y[i + 1] === null)) {
        x.push(c.x[i]);
        y.push(v);
      }
    });
    return { type: "scatter", mode: "markers", x: x, y: y, marker: { size: 4, color: "#3b7dd8" }, hoverinfo: "skip" };
  }

  function plot(el, c) {
    var dense = c.kind !== "bar" && c.x.length > el.clientWidth - MARGIN.l - MARGIN.r;
    var trace = c.kind === "bar"
      ? { type: "bar", x: c.x, y: c.y, marker: { color: "#3b7dd8" } }
      : { type: "scatter", mode: dense ? "lines" : "lines+markers", x: c.x, y: c.y, connectgaps: false, line: { color: "#3b7dd8" }, marker: { size: 4 } };
    // The server writes values as the dashboards do (units.value_format): hover shows "45 h 36 min".
    trace.text = c.hover;
    trace.hovertemplate = "%{x}<br>%{text}<extra></extra>";
    var layout = {
      margin: MARGIN,
      showlegend: false,
      // Times are UTC (the server's series are); ratios as percentages, counts abbreviated (12k).
      xaxis: c.kind === "bar" ? { type: "category" } : { type: "date", title: { text: "time (UTC)" } },
      yaxis: c.unit === "ratio"
        ? { title: { text: "%" }, tickformat: c.tickformat, rangemode: "tozero" }
        : c.ticks
          ? { title: { text: "duration" }, tickmode: "array", tickvals: c.ticks.values, ticktext: c.ticks.labels, rangemode: "tozero" }
          : { title: { text: c.unit === "ms" ? "duration" : c.unit }, tickformat: c.tickformat, rangemode: "tozero" },
    };
    // data[0] is the whole series whatever the density (the browser tests read it).
    Plotly.newPlot(el, dense ? [trace, lonePoints(c)] : [trace], layout, { displayModeBar: false, responsive: true }).then(function () {
      el.dataset.drawn = "1";
    });
  }

  function draw(el) {
    var c = pending.get(el);
    if (!c) { return; }
    pending.delete(el);
    observer.unobserve(el);
    plot(el, c);
  }

  var idle = window.requestIdleCallback || function (callback) { return setTimeout(callback, 1); };
  function drawWhenIdle(deadline) {
    // One chart at least, more while the slice lasts (a chart takes ~20 ms, a slice up to 50).
    do {
      var next = pending.keys().next();
      if (next.done) { return; }
      draw(next.value);
    } while (deadline && deadline.timeRemaining() > 20);
    idle(drawWhenIdle);
  }

  var started = false;
  // The first call comes after the page's first layout, with every chart's element: those in view
  // are drawn then, and only then do the others start drawing in the idle slices.
  var observer = new IntersectionObserver(function (entries) {
    entries.forEach(function (entry) {
      if (entry.isIntersecting) { draw(entry.target); }
    });
    if (!started) {
      started = true;
      idle(drawWhenIdle);
    }
  });
  pending.forEach(function (c, el) { observer.observe(el); });
})();
