// Live preview of a metric definition in the admin: the change form's current values, unsaved,
// are posted to the preview endpoint (the same form and compile step as saving) and drawn.
// data-drawn counts finished draws, so a browser test can wait for the chart of its last edit.
(function () {
  "use strict";
  var chart = document.getElementById("metric-live-preview");
  var form = document.getElementById("metricdefinition_form");
  if (!chart || !form || typeof Plotly === "undefined") { return; }
  var status = document.getElementById("metric-live-preview-status");
  var timer = null;
  var sequence = 0;
  var draws = 0;

  function show(message) { status.textContent = message; }

  function draw(body) {
    var trace = {
      type: "scatter", mode: "lines+markers", x: body.x, y: body.y, text: body.hover,
      hovertemplate: "%{x}<br>%{text}<extra></extra>", line: { color: "#3b7dd8" }, marker: { size: 4 },
    };
    var yaxis = body.ticks
      ? { tickmode: "array", tickvals: body.ticks.values, ticktext: body.ticks.labels, rangemode: "tozero" }
      : { tickformat: body.tickformat, rangemode: "tozero" };
    var layout = { margin: { l: 70, r: 10, t: 10, b: 40 }, xaxis: { type: "date", title: { text: "hour (UTC)" } }, yaxis: yaxis };
    Plotly.react(chart, [trace], layout, { displayModeBar: false }).then(function () {
      draws += 1;
      chart.dataset.drawn = String(draws);
      chart.dataset.total = body.total === null ? "" : String(body.total);
      show("Last 24 hours, unsaved: total " + body.totalText);
    });
  }

  function refresh() {
    var mine = ++sequence;
    fetch(chart.dataset.url, { method: "POST", body: new FormData(form), credentials: "same-origin" })
      .then(function (response) { return response.json().then(function (body) { return [response.status, body]; }); })
      .then(function (result) {
        if (mine !== sequence) { return; } // an older answer arriving late
        if (result[0] !== 200) {
          var errors = result[1].errors || {};
          show("Not previewable: " + Object.keys(errors).map(function (k) { return (k === "__all__" ? "" : k + ": ") + errors[k].join(" "); }).join("; "));
          chart.dataset.error = "1";
          return;
        }
        delete chart.dataset.error;
        draw(result[1]);
      })
      .catch(function (error) { show("Preview failed: " + error); });
  }

  function later() { clearTimeout(timer); timer = setTimeout(refresh, 300); }
  form.addEventListener("input", later);
  form.addEventListener("change", later);
  refresh();
})();
