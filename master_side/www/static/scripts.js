// slaveshell's page in Buildbot's web UI: a "Shells" menu with the fleet and a terminal (xterm.js + fit).
// Plain JavaScript on the globals the base UI exposes (React, BuildbotPluginSupport): no build step.
// The socket protocol is described in master_side/www/terminal_ws.py.
(function () {
  "use strict";
  var h = React.createElement;
  var BASE = "plugins/slaveshell/";
  var INPUT_WINDOW = 4 * 65536; // slaveshell.protocol.INPUT_WINDOW: input in flight before the worker acks it
  var INPUT_CHUNK = 4096;

  function assetUrl(name) {
    return new URL(BASE + name, document.baseURI).href;
  }

  function socketUrl() {
    var u = new URL(BASE + "ws", document.baseURI);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    return u.href;
  }

  // Text from the master or a worker shown in the terminal: printable characters only.
  function printable(text) {
    return String(text).replace(/[\u0000-\u001f\u007f-\u009f]/g, "?");
  }

  var xtermLoaded = null;
  function loadXterm() {
    if (xtermLoaded) return xtermLoaded;
    function script(name) {
      return new Promise(function (resolve, reject) {
        var s = document.createElement("script");
        s.src = assetUrl(name);
        s.onload = resolve;
        s.onerror = function () { reject(new Error("cannot load " + name)); };
        document.head.appendChild(s);
      });
    }
    var css = document.createElement("link");
    css.rel = "stylesheet";
    css.href = assetUrl("xterm.css");
    document.head.appendChild(css);
    xtermLoaded = script("xterm.js").then(function () { return script("addon-fit.js"); });
    return xtermLoaded;
  }

  function Fleet() {
    var st = React.useState({ workers: null, error: null });
    var state = st[0], setState = st[1];
    React.useEffect(function () {
      var done = false;
      var ws = new WebSocket(socketUrl());
      ws.onopen = function () { ws.send(JSON.stringify({ type: "workers" })); };
      ws.onmessage = function (ev) {
        var m = JSON.parse(ev.data);
        if (m.type === "workers") { done = true; setState({ workers: m.workers, error: null }); ws.close(); }
        else if (m.type === "error") { done = true; setState({ workers: null, error: m.message }); }
      };
      ws.onclose = function () {
        if (!done) setState({ workers: null, error: "the master refused the connection" });
      };
      return function () { done = true; ws.close(); };
    }, []);
    if (state.error) {
      return h("div", { className: "slaveshell-page" },
        h("div", { className: "alert alert-danger slaveshell-refused" }, "Shells: " + state.error));
    }
    if (!state.workers) return h("div", { className: "slaveshell-page" }, "Loading the workers...");
    var rows = state.workers.map(function (w) {
      var ready = w.allowed && w.connected && w.shell;
      var why = !w.allowed ? "not allowed" : !w.connected ? "not connected" : !w.shell ? "no slaveshell" : "";
      return h("tr", { key: w.name, "data-worker": w.name },
        h("td", null, w.name),
        h("td", null, w.connected ? "connected" : "disconnected"),
        h("td", null, String(w.sessions)),
        h("td", null, ready
          ? h("button", {
              className: "btn btn-primary btn-sm slaveshell-open",
              onClick: function () { window.location.hash = "#/slaveshell/terminal/" + encodeURIComponent(w.name); },
            }, "Open shell")
          : h("span", { className: "text-muted" }, why)));
    });
    return h("div", { className: "slaveshell-page" },
      h("h4", null, "Shells"),
      state.workers.length === 0 ? h("p", null, "No worker you may act on.") :
      h("table", { className: "table table-sm slaveshell-fleet" },
        h("thead", null, h("tr", null, h("th", null, "Worker"), h("th", null, "State"),
          h("th", null, "Sessions"), h("th", null, ""))),
        h("tbody", null, rows)));
  }

  function describeExit(m) {
    if (m.code !== null && m.code !== undefined) return "exit status " + m.code;
    if (m.signal !== null && m.signal !== undefined) return "killed by signal " + m.signal;
    return printable(m.reason || "ended");
  }

  function TerminalView(props) {
    var worker = props.worker;
    var box = React.useRef(null);
    var st = React.useState("connecting");
    var status = st[0], setStatus = st[1];
    React.useEffect(function () {
      var disposed = false, ws = null, term = null, observer = null, finished = false;
      loadXterm().then(function () {
        if (disposed) return;
        term = new Terminal({ scrollback: 5000, fontSize: 14 });
        var fit = new FitAddon.FitAddon();
        term.loadAddon(fit);
        term.open(box.current);
        fit.fit();
        window.slaveshellTerminal = term; // for tests and the console: the screen's buffer
        var opened = false, pending = [], inFlight = 0;
        var encoder = new TextEncoder();
        function pump() {
          while (pending.length && inFlight < INPUT_WINDOW && ws.readyState === WebSocket.OPEN) {
            var chunk = pending.shift();
            inFlight += chunk.length;
            ws.send(chunk);
          }
        }
        ws = new WebSocket(socketUrl());
        ws.binaryType = "arraybuffer";
        ws.onopen = function () {
          ws.send(JSON.stringify({ type: "open", worker: worker, cols: term.cols, rows: term.rows }));
        };
        ws.onmessage = function (ev) {
          if (typeof ev.data !== "string") {
            var data = new Uint8Array(ev.data);
            // Acknowledged once rendered: the master's credit window then lets the worker read on.
            term.write(data, function () {
              if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "ack", bytes: data.length }));
            });
            return;
          }
          var m = JSON.parse(ev.data);
          if (m.type === "opened") {
            opened = true;
            setStatus("connected");
            term.focus();
          } else if (m.type === "input_ack") {
            inFlight = Math.max(0, inFlight - m.bytes);
            pump();
          } else if (m.type === "waiting") {
            setStatus(m.text);
          } else if (m.type === "exit") {
            finished = true;
            var line = "session ended: " + describeExit(m);
            term.write("\r\n\x1b[1m[" + line + "]\x1b[0m\r\n");
            setStatus(line);
          } else if (m.type === "error") {
            finished = true;
            setStatus("refused: " + m.message);
          }
        };
        ws.onclose = function () {
          if (!finished && !disposed) setStatus("connection closed");
        };
        term.onData(function (text) {
          if (!opened) return;
          var bytes = encoder.encode(text);
          for (var i = 0; i < bytes.length; i += INPUT_CHUNK) pending.push(bytes.slice(i, i + INPUT_CHUNK));
          pump();
        });
        term.onResize(function (size) {
          if (opened && ws.readyState === WebSocket.OPEN) {
            ws.send(JSON.stringify({ type: "resize", cols: size.cols, rows: size.rows }));
          }
        });
        observer = new ResizeObserver(function () { try { fit.fit(); } catch (e) { /* hidden */ } });
        observer.observe(box.current);
      }, function (e) { setStatus("cannot load the terminal: " + e.message); });
      return function () {
        disposed = true;
        if (observer) observer.disconnect();
        if (ws) ws.close();
        if (term) term.dispose();
      };
    }, [worker]);
    var refused = status.indexOf("refused") === 0;
    return h("div", { className: "slaveshell-page" },
      h("h4", null, "Shell on " + worker),
      h("div", { className: refused ? "alert alert-danger slaveshell-status" : "slaveshell-status",
                 "data-status": status }, status),
      h("div", { ref: box, className: "slaveshell-terminal" }));
  }

  function TerminalPage() {
    var match = /\/slaveshell\/terminal\/([^/?]+)/.exec(window.location.hash);
    var worker = match ? decodeURIComponent(match[1]) : "";
    return h(TerminalView, { worker: worker, key: worker });
  }

  BuildbotPluginSupport.buildbotSetupPlugin(function (reg) {
    reg.registerMenuGroup({
      name: "slaveshell", caption: "Shells", icon: h("span", { className: "slaveshell-icon" }, ">_"),
      order: 15, route: "/slaveshell", parentName: null,
    });
    reg.registerRoute({ route: "slaveshell", group: "slaveshell", element: function () { return h(Fleet); } });
    reg.registerRoute({
      route: "slaveshell/terminal/:worker", group: "slaveshell",
      element: function () { return h(TerminalPage); },
    });
  });
})();
