// VM details: live graphs from the daemon's statistics, and new events as they happen.
// A shut-off VM has no process to measure: the graphs give way to a note until it starts.
"use strict";
(() => {
  const holder = document.getElementById("vm");
  const name = holder.dataset.vm;
  const graphs = document.getElementById("graphs");
  const off = document.getElementById("stats-off");
  const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];
  const BLUE = "#2f6fd6";
  const RED = "#d6452f";

  // The unit that keeps the largest value under 1024 of it, so the axis ticks are round
  // numbers of that unit (uPlot picks decimal steps).
  function unitFor(max) {
    let i = 0;
    while (max >= 1024 && i < UNITS.length - 1) { max /= 1024; i += 1; }
    return { div: 1024 ** i, name: UNITS[i] };
  }

  function number(v) {
    if (v == null) return "";
    if (v === 0) return "0";
    return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1).replace(/\.0$/, "") : v.toFixed(2).replace(/\.?0+$/, "");
  }

  function timeRange(t) {
    const newest = t && t.length ? t[t.length - 1] : Date.now() / 1000;
    const oldest = t && t.length ? t[0] : newest;
    return [Math.min(oldest, newest - 60), newest];
  }

  function clock(t) {
    return new Date(t * 1000).toLocaleTimeString([], { hour: "numeric", minute: "2-digit", second: "2-digit" });
  }

  function bytes(v) {
    const unit = unitFor(v);
    return `${number(v / unit.div)} ${unit.name}`;
  }

  // Axis labels measured, not guessed: a wide tick label ("1023.5") is never clipped.
  function axisSize(u, values, axisIdx, cycle) {
    const axis = u.axes[axisIdx];
    if (cycle > 1) return axis._size;
    const widest = (values || []).reduce((a, v) => (v.length > a.length ? v : a), "");
    u.ctx.font = axis.font[0];
    return Math.ceil(axis.ticks.size + axis.gap + u.ctx.measureText(widest).width / devicePixelRatio) + 8;
  }

  function makeChart(el, series, yLabel) {
    el.textContent = "";
    return new uPlot({
      width: Math.max(260, el.clientWidth || 320),
      height: 170,
      legend: { show: false }, // the heading says what each line is, with its latest value
      cursor: { show: false },
      scales: {
        // At least a minute wide, so a fresh VM's first samples are not spread over the
        // whole width as fractions of a second.
        // Read from the data itself: uPlot's own min/max for a single sample is no range,
        // and an empty chart's would be the epoch (1970).
        x: { time: true, range: (u) => timeRange(u.data[0]) },
        y: { range: (u, min, max) => [0, Math.max(1, (max || 0) * 1.15)] },
      },
      series: [{}, ...series.map(([label, stroke]) => ({ label, stroke, width: 1.5, spanGaps: false }))],
      axes: [
        // One line per tick, the time of day in the person's own format: never a date.
        { size: 30, space: 90, values: (u, ticks) => ticks.map(clock) },
        { label: yLabel, labelSize: 18, size: axisSize, values: (u, ticks) => ticks.map(number) },
      ],
    }, [[], ...series.map(() => [])], el);
  }

  const charts = {};
  window.qumranCharts = charts; // for the browser tests: the scales uPlot drew
  function chart(id, series, yLabel) {
    const el = document.getElementById(id);
    if (!el || typeof uPlot === "undefined") return null;
    let entry = charts[id];
    if (entry && entry.label !== yLabel) { entry.plot.destroy(); entry = null; }
    if (!entry) entry = charts[id] = { plot: makeChart(el, series, yLabel), label: yLabel, el };
    return entry.plot;
  }

  function resetCharts() {
    for (const id of Object.keys(charts)) {
      charts[id].plot.destroy();
      charts[id].el.innerHTML = '<p class="note waiting">Waiting for the first samples…</p>';
      delete charts[id];
    }
    for (const now of document.querySelectorAll("[data-now]")) now.textContent = "";
  }

  window.addEventListener("resize", () => {
    for (const { plot, el } of Object.values(charts)) plot.setSize({ width: el.clientWidth, height: 170 });
  });

  // Disk and network counters are cumulative bytes; the graphs show bytes/s between samples.
  function rate(samples, key) {
    return samples.map((s, i) => {
      const prev = samples[i - 1];
      if (!prev || s[key] == null || prev[key] == null || s.t <= prev.t) return null;
      return Math.max(0, s[key] - prev[key]) / (s.t - prev.t);
    });
  }

  function last(values) {
    for (let i = values.length - 1; i >= 0; i -= 1) if (values[i] != null) return values[i];
    return null;
  }

  function swatch(color, text) {
    return `<span><span class="key" style="--c:${color}"></span>${text}</span>`;
  }

  function setNow(key, html) {
    document.querySelector(`[data-now="${key}"]`).innerHTML = html;
  }

  function showNote(id, text) {
    const note = document.getElementById(id);
    if (note) { note.textContent = text; note.hidden = !text; }
  }

  // Two series of byte rates in one graph, in the unit their largest value needs.
  function rates(id, nowKey, t, a, b) {
    const unit = unitFor(Math.max(0, ...a.filter((v) => v != null), ...b.filter((v) => v != null)));
    const scaled = (vs) => vs.map((v) => (v == null ? null : v / unit.div));
    const plot = chart(id, [[a.label, BLUE], [b.label, RED]], `${unit.name}/s`);
    if (!plot) return;
    plot.setData([t, scaled(a), scaled(b)]);
    const la = last(a);
    const lb = last(b);
    setNow(nowKey, la == null && lb == null ? "" : `${swatch(BLUE, `${a.label} ${bytes(la || 0)}/s`)} ${swatch(RED, `${b.label} ${bytes(lb || 0)}/s`)}`);
  }

  function labelled(values, label) {
    values.label = label;
    return values;
  }

  function draw(samples) {
    const t = samples.map((s) => s.t);
    const newest = samples[samples.length - 1];
    const cpu = samples.map((s) => s.cpu_percent);
    chart("g-cpu", [["CPU", BLUE]], "%")?.setData([t, cpu]);
    setNow("cpu", swatch(BLUE, `${number(newest.cpu_percent)} % of one host CPU`));
    const rss = samples.map((s) => s.rss_bytes);
    const unit = unitFor(Math.max(...rss));
    chart("g-mem", [["resident", "#1b9e5a"]], unit.name)?.setData([t, rss.map((v) => v / unit.div)]);
    setNow("mem", swatch("#1b9e5a", `${bytes(newest.rss_bytes)} resident`));
    if (document.getElementById("g-disk")) {
      if (newest.disk_read_bytes == null) {
        showNote("disk-note", "The hypervisor reports no disk counters for this VM.");
      } else {
        rates("g-disk", "disk", t, labelled(rate(samples, "disk_read_bytes"), "read"),
          labelled(rate(samples, "disk_write_bytes"), "write"));
      }
    }
    if (document.getElementById("g-net")) {
      const measured = newest.net_rx_bytes != null;
      document.getElementById("g-net").hidden = !measured;
      showNote("net-note", measured ? "" :
        "Traffic is not measured on user-mode network interfaces: the hypervisor keeps no counters for them.");
      if (measured) {
        rates("g-net", "net", t, labelled(rate(samples, "net_rx_bytes"), "received"),
          labelled(rate(samples, "net_tx_bytes"), "sent"));
      }
    }
  }

  function shutOff() {
    return holder.dataset.state === "shutoff";
  }

  function layout() {
    graphs.hidden = shutOff();
    off.hidden = !shutOff();
    if (shutOff()) resetCharts();
  }

  async function refresh() {
    if (shutOff()) return;
    const response = await fetch(`/api/vms/${encodeURIComponent(name)}/stats`);
    if (!response.ok || shutOff()) return;
    const { samples } = await response.json();
    holder.dataset.samples = String(samples.length);
    if (samples.length) draw(samples);
  }

  qumran.onEvent((event) => {
    if (event.vm !== name) return;
    const row = document.createElement("tr");
    for (const value of [event.time, event.event, event.state, event.reason, event.detail]) {
      const cell = document.createElement("td");
      cell.textContent = value;
      row.appendChild(cell);
    }
    row.firstChild.dataset.time = String(event.time);
    document.querySelector("#events tbody").prepend(row);
    qumran.localTimes(row);
    const pid = document.querySelector('[data-field="pid"]');
    if (event.event === "started" || event.state === "shutoff") {
      pid.textContent = event.state === "shutoff" ? "none (shut off)" : event.detail.replace(/^pid /, "");
    }
    if (event.event === "undefined") window.location.assign("/");
    layout();
    if (event.event === "started") refresh();
  });

  layout();
  refresh();
  setInterval(refresh, 2000);
})();
