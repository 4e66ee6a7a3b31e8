// Shared by every page: CSRF-carrying calls, lifecycle buttons, live state from /ws/events.
"use strict";
const qumran = (() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const hooks = [];
  // The state -> actions table of lifecycle.py, as the page was served with it.
  const TABLE = JSON.parse(document.querySelector('meta[name="qumran-actions"]').content);
  const ORDER = ["start", "shutdown", "reboot", "suspend", "resume", "reset", "destroy", "undefine"];

  function flash(message) {
    const box = document.getElementById("flash");
    box.textContent = message;
    box.hidden = !message;
  }

  async function post(url) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "X-CSRF-Token": csrf, Accept: "application/json" },
      credentials: "same-origin",
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
    }
    return body;
  }

  // One primary button for the state, the other allowed actions in the ⋮ menu (as the
  // server first rendered them: _actions.html); buttons of disallowed actions are hidden.
  function arrange(form, state) {
    const slot = form.querySelector(".primary-slot");
    const menu = form.querySelector(".menu-items");
    const first = TABLE.primary[state] || "destroy";
    const valid = TABLE.valid[state] || ["destroy"];
    const edit = menu.querySelector('[data-menu="edit"]');
    for (const action of ORDER) {
      const button = form.querySelector(`button[data-action="${action}"]`);
      if (!button) continue;
      const allowed = valid.includes(action);
      button.hidden = !allowed;
      button.disabled = !allowed;
      if (action === first) {
        slot.appendChild(button);
        continue;
      }
      if (action === "undefine" && edit) menu.appendChild(edit); // edit, then delete: last
      menu.appendChild(button);
    }
    form.action = `/vms/${encodeURIComponent(form.dataset.vm)}/${first}`;
    const more = form.querySelector("details.menu");
    more.hidden = !menu.querySelector("button:not([hidden]), a");
  }

  function enableButtons(root) {
    for (const form of root.querySelectorAll("form.actions")) {
      const holder = form.closest("[data-state]") || document.getElementById("vm");
      arrange(form, holder ? holder.dataset.state : "shutoff");
    }
  }

  // One menu open at a time; a click elsewhere or Escape closes it.
  function closeMenus(except) {
    for (const open of document.querySelectorAll("details.menu[open]")) {
      if (open !== except) open.open = false;
    }
  }
  document.addEventListener("click", (event) => closeMenus(event.target.closest("details.menu")));
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeMenus(null); });

  function setState(name, state, reason) {
    for (const el of document.querySelectorAll(`[data-vm="${CSS.escape(name)}"][data-state]`)) {
      el.dataset.state = state;
      for (const badge of el.querySelectorAll('[data-field="state"]')) {
        badge.textContent = state;
        badge.className = `state state-${state}`;
      }
      for (const why of el.querySelectorAll('[data-field="reason"]')) why.textContent = reason;
    }
    enableButtons(document);
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("form.actions button[data-action]");
    if (!button) return;
    event.preventDefault();
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    const name = button.closest("form").dataset.vm;
    const action = button.dataset.action;
    closeMenus(null);
    button.disabled = true;
    try {
      const body = await post(`/vms/${encodeURIComponent(name)}/${action}`);
      flash("");
      if (action === "undefine") window.location.assign("/");
      else if (body.vm) setState(name, body.vm.state, body.vm.reason);
    } catch (error) {
      flash(`${action} ${name}: ${error.message}`);
      enableButtons(document);
    }
  });

  function follow() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${window.location.host}/ws/events`);
    socket.onopen = () => document.body.classList.add("live");
    socket.onmessage = (message) => {
      const event = JSON.parse(message.data);
      setState(event.vm, event.state, event.reason);
      for (const hook of hooks) hook(event);
    };
    socket.onclose = () => {
      document.body.classList.remove("live");
      setTimeout(follow, 2000);
    };
  }

  function localTimes(root) {
    for (const cell of root.querySelectorAll("[data-time]")) {
      cell.textContent = new Date(Number(cell.dataset.time) * 1000).toLocaleTimeString();
    }
  }

  enableButtons(document);
  localTimes(document);
  if (csrf) follow();
  return { post, flash, onEvent: (hook) => hooks.push(hook), localTimes };
})();
