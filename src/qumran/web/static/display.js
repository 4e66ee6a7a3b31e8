// The graphical console: noVNC through the daemon's WebSocket proxy to the VM's VNC socket.
import RFB from "/static/vendor/novnc/core/rfb.js";

const holder = document.getElementById("vm");
const conn = document.getElementById("conn");
const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
const url = `${scheme}//${window.location.host}/ws/vms/${encodeURIComponent(holder.dataset.vm)}/vnc`;
const rfb = new RFB(document.getElementById("screen"), url, { wsProtocols: ["binary"] });
rfb.scaleViewport = true;
rfb.addEventListener("connect", () => { conn.textContent = "connected"; conn.className = "conn ok"; });
rfb.addEventListener("disconnect", (e) => {
  conn.className = "conn";
  conn.textContent = e.detail.clean ? "disconnected" : "could not connect (is the VM running?)";
});
document.getElementById("cad").addEventListener("click", () => rfb.sendCtrlAltDel());
window.qumranRfb = rfb;
