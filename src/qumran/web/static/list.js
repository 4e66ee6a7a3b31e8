// The VM list: uptime and CPU sparklines, refreshed every few seconds; new or removed VMs
// reload it.
"use strict";
(() => {
  function spark(canvas, values) {
    const ctx = canvas.getContext("2d");
    const { width, height } = canvas;
    ctx.clearRect(0, 0, width, height);
    if (values.length < 2) return;
    const top = Math.max(100, ...values);
    ctx.beginPath();
    values.forEach((v, i) => {
      const x = (i / (values.length - 1)) * (width - 2) + 1;
      const y = height - 1 - (v / top) * (height - 2);
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.strokeStyle = "#2f6fd6";
    ctx.lineWidth = 1.5;
    ctx.stroke();
  }

  function drawAll() {
    for (const canvas of document.querySelectorAll("canvas.spark")) {
      spark(canvas, JSON.parse(canvas.dataset.cpu || "[]"));
    }
  }

  async function refresh() {
    const response = await fetch("/api/vms", { credentials: "same-origin" });
    if (!response.ok) return;
    for (const vm of await response.json()) {
      const row = document.querySelector(`tr[data-vm="${CSS.escape(vm.name)}"]`);
      if (!row) continue;
      row.querySelector("canvas.spark").dataset.cpu = JSON.stringify(vm.cpu);
      const now = row.querySelector('[data-field="cpu"]');
      now.textContent = vm.cpu.length ? `${Math.round(vm.cpu[vm.cpu.length - 1])}%` : "";
      row.querySelector('[data-field="uptime"]').textContent = vm.uptime;
    }
    drawAll();
  }

  qumran.onEvent((event) => {
    if (event.event === "defined" || event.event === "undefined") window.location.reload();
    const row = document.querySelector(`tr[data-vm="${CSS.escape(event.vm)}"]`);
    if (row && event.state === "shutoff") {
      row.querySelector("canvas.spark").dataset.cpu = "[]";
      row.querySelector('[data-field="cpu"]').textContent = "";
      row.querySelector('[data-field="uptime"]').textContent = "";
      drawAll();
    }
  });
  drawAll();
  setInterval(refresh, 2000);
})();
