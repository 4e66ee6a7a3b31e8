// VM details: live graphs from the daemon's statistics, and new events as they happen.
"use strict";
(() => {
  const holder = document.getElementById("vm");
  const name = holder.dataset.vm;
  const note = document.getElementById("stats-note");
  const KIB = 1024;

  function chart(id, series) {
    const el = document.getElementById(id);
    const opts = {
      width: Math.max(260, el.clientWidth || 320),
      height: 150,
      legend: { show: true },
      scales: {
        // At least a minute wide, so a fresh VM's first samples do not show as
        // fractions of a second.
        x: { time: true, range: (u, min, max) => [Math.min(min, max - 60), max] },
        y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] },
      },
      series: [{}, ...series.map(([label, stroke]) => ({ label, stroke, width: 1.5 }))],
      axes: [{}, { size: 50 }],
    };
    return new uPlot(opts, [[], ...series.map(() => [])], el);
  }

  const charts = typeof uPlot === "undefined" ? null : {
    cpu: chart("g-cpu", [["CPU %", "#2f6fd6"]]),
    mem: chart("g-mem", [["RSS MiB", "#1b9e5a"]]),
    disk: chart("g-disk", [["read", "#2f6fd6"], ["write", "#d6452f"]]),
    net: chart("g-net", [["rx", "#2f6fd6"], ["tx", "#d6452f"]]),
  };

  // Disk and network counters are cumulative bytes; the graphs show KiB/s between samples.
  function rate(samples, key) {
    return samples.map((s, i) => {
      const prev = samples[i - 1];
      if (!prev || s[key] == null || prev[key] == null || s.t <= prev.t) return null;
      return Math.max(0, s[key] - prev[key]) / (s.t - prev.t) / KIB;
    });
  }

  async function refresh() {
    const response = await fetch(`/api/vms/${encodeURIComponent(name)}/stats`);
    if (!response.ok) return;
    const { samples } = await response.json();
    holder.dataset.samples = String(samples.length);
    const t = samples.map((s) => s.t);
    note.textContent = samples.length ? "" : "No statistics: the VM is not running.";
    if (!samples.length || !charts) return;
    const last = samples[samples.length - 1];
    note.textContent = last.net_rx_bytes == null ? "Network counters are not available for user-mode networking." : "";
    charts.cpu.setData([t, samples.map((s) => s.cpu_percent)]);
    charts.mem.setData([t, samples.map((s) => s.rss_bytes / KIB / KIB)]);
    charts.disk.setData([t, rate(samples, "disk_read_bytes"), rate(samples, "disk_write_bytes")]);
    charts.net.setData([t, rate(samples, "net_rx_bytes"), rate(samples, "net_tx_bytes")]);
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
      pid.textContent = event.state === "shutoff" ? "—" : event.detail.replace(/^pid /, "");
    }
    if (event.event === "undefined") window.location.assign("/");
  });

  refresh();
  setInterval(refresh, 2000);
})();
