// Shared by every page: CSRF-carrying calls, lifecycle buttons, live state from /ws/events.
"use strict";
const qumran = (() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const hooks = [];
  const ACTIVE = ["running", "paused", "shutdown"];
  const ALLOWED = {
    start: (s) => !ACTIVE.includes(s),
    shutdown: (s) => s === "running",
    reboot: (s) => s === "running",
    reset: (s) => s === "running",
    suspend: (s) => s === "running",
    resume: (s) => s === "paused",
    destroy: (s) => ACTIVE.includes(s),
    undefine: (s) => !ACTIVE.includes(s),
  };

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

  function enableButtons(root) {
    for (const form of root.querySelectorAll("form.actions")) {
      const holder = form.closest("[data-state]") || document.getElementById("vm");
      const state = holder ? holder.dataset.state : "shutoff";
      for (const button of form.querySelectorAll("button[data-action]")) {
        button.disabled = !ALLOWED[button.dataset.action](state);
      }
    }
  }

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
