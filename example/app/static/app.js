// The chiws echo page: plain JavaScript, no framework, no build step.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const url = $("url"), connect = $("connect"), close = $("close");
  const message = $("message"), send = $("send");
  const status = $("status"), log = $("log");
  let socket = null;

  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const endpoint = (path) => scheme + location.host + path;
  url.value = endpoint("/ws");

  function stamp() {
    const d = new Date();
    const p = (n, w) => String(n).padStart(w || 2, "0");
    return p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds()) +
      "." + p(d.getMilliseconds(), 3);
  }

  // entry appends one line to the Communication Log. kind is one of open,
  // send, recv, close, error; attrs become data-* attributes for tests.
  function entry(kind, text, attrs) {
    const li = document.createElement("li");
    li.dataset.kind = kind;
    for (const k in attrs || {}) li.dataset[k] = attrs[k];
    const t = document.createElement("time");
    t.textContent = stamp();
    const k = document.createElement("span");
    k.className = "kind";
    k.textContent = kind.toUpperCase();
    const x = document.createElement("span");
    x.className = "text";
    x.textContent = text;
    li.append(t, k, x);
    log.append(li);
    log.scrollTop = log.scrollHeight;
  }

  function setState(state, text) {
    status.dataset.state = state;
    status.textContent = text || state;
    const open = state === "open";
    const busy = state === "connecting" || state === "open";
    connect.disabled = busy || state === "closing";
    url.disabled = busy || state === "closing";
    close.disabled = !busy;
    message.disabled = !open;
    send.disabled = !open;
    document.querySelectorAll(".presets button").forEach((b) => { b.disabled = url.disabled; });
  }

  function describe(data) {
    if (typeof data === "string") return data;
    const bytes = new Uint8Array(data);
    const hex = Array.from(bytes.slice(0, 32), (b) => b.toString(16).padStart(2, "0")).join(" ");
    return "[binary, " + bytes.length + " bytes] " + hex + (bytes.length > 32 ? " ..." : "");
  }

  $("connect-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (socket) return;
    let ws;
    try {
      ws = new WebSocket(url.value);
    } catch (err) {
      entry("error", String(err.message || err));
      setState("closed", "closed (invalid URL)");
      return;
    }
    ws.binaryType = "arraybuffer";
    socket = ws;
    setState("connecting", "connecting to " + url.value);
    ws.onopen = () => {
      entry("open", "connected to " + ws.url + (ws.protocol ? " (" + ws.protocol + ")" : ""));
      setState("open", "open");
      message.focus();
    };
    ws.onmessage = (ev) => {
      const binary = typeof ev.data !== "string";
      entry("recv", describe(ev.data), { type: binary ? "binary" : "text" });
    };
    ws.onerror = () => {
      // Browsers deliberately give no detail (a 403 looks like a network
      // error); the close event that follows carries the code, 1006.
      entry("error", "WebSocket error");
    };
    ws.onclose = (ev) => {
      const reason = ev.reason ? " " + JSON.stringify(ev.reason) : "";
      entry("close", "code " + ev.code + reason + (ev.wasClean ? "" : " (not clean)"),
        { code: String(ev.code), reason: ev.reason });
      setState("closed", "closed, code " + ev.code + reason);
      if (socket === ws) socket = null;
    };
  });

  $("send-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    socket.send(message.value);
    entry("send", message.value);
    message.value = "";
    message.focus();
  });

  close.addEventListener("click", () => {
    if (!socket) return;
    setState("closing", "closing");
    socket.close(1000, "Closed from the page");
  });

  document.querySelectorAll(".presets button").forEach((b) => {
    b.addEventListener("click", () => { url.value = endpoint(b.dataset.path); });
  });
  $("clear").addEventListener("click", () => { log.replaceChildren(); });

  setState("idle", "not connected");
  document.body.dataset.ready = "true";
})();
