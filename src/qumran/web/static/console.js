// The serial console: xterm.js on the daemon's console stream (as `qumran console`).
"use strict";
(() => {
  const holder = document.getElementById("vm");
  const conn = document.getElementById("conn");
  const name = holder.dataset.vm;
  if (typeof Terminal === "undefined") {
    conn.textContent = "xterm.js is missing: run web/build.sh on the host";
    return;
  }
  const term = new Terminal({ convertEol: false, cursorBlink: true, scrollback: 5000,
    fontFamily: "DejaVu Sans Mono, monospace", fontSize: 14 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  window.addEventListener("resize", () => fit.fit());
  window.qumranTerminal = term; // for the browser tests: read what the guest printed

  let socket = null;
  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(`${scheme}//${window.location.host}/ws/vms/${encodeURIComponent(name)}/console`);
    socket.binaryType = "arraybuffer";
    socket.onopen = () => { conn.textContent = "connected"; conn.className = "conn ok"; term.focus(); };
    socket.onmessage = (m) => term.write(new Uint8Array(m.data));
    socket.onclose = (e) => {
      conn.className = "conn";
      conn.textContent = e.reason ? `closed: ${e.reason}` : "not connected (is the VM running?)";
      socket = null;
    };
  }
  const encoder = new TextEncoder();
  term.onData((data) => { if (socket && socket.readyState === 1) socket.send(encoder.encode(data)); });
  qumran.onEvent((event) => {
    if (event.vm === name && event.event === "started" && !socket) { term.reset(); connect(); }
  });
  connect();
})();
