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

  // One socket that asks for the lists of the fleet page (workers, live sessions), then closes.
  function askLists(onAnswer) {
    var got = {}, cancel = null;
    cancel = questions(function (send) {
      send({ type: "workers" });
      send({ type: "sessions" });
    }, function (m) {
      if (m.type !== "workers" && m.type !== "sessions") return;
      got[m.type] = m[m.type];
      if (got.workers && got.sessions) { cancel(); onAnswer(got, null); }
    }, function (why, m) { onAnswer(null, why, m && m.login); });
    return cancel;
  }

  function go(hash) { window.location.hash = hash; }

  // A shell opens only on a deliberate click in a top-level page (master_side/www/framing.py, docs/web.md): the
  // click that led to a terminal (the fleet's buttons) is remembered for the page it opens, for a few seconds; a
  // terminal loaded from its address (a link, a reload, a frame) shows a button instead, except a reload of one's
  // own session (the master refuses an automatic attach to another's: "reattach").
  var clicked = null;
  function goClicked(key, hash) { clicked = { key: key, at: Date.now() }; go(hash); }
  function tookClick(key) { return !!clicked && clicked.key === key && Date.now() - clicked.at < 10000; }
  function framed() { try { return window.top !== window.self; } catch (e) { return true; } }
  function loginUrl() {
    return new URL("auth/login?redirect=" + encodeURIComponent(window.location.hash.replace(/^#/, "")),
      document.baseURI).href;
  }
  function LoginAgain() {
    return h("a", { className: "btn btn-primary btn-sm slaveshell-login", href: loginUrl() }, "Log in again");
  }

  function SessionRows(props) {
    return props.sessions.map(function (s) {
      var buttons = [h("button", {
        key: "watch", className: "btn btn-secondary btn-sm slaveshell-watch",
        onClick: function () {
          goClicked("session:" + s.id + "/watch", "#/slaveshell/session/" + encodeURIComponent(s.id) + "/watch");
        },
      }, "Watch")];
      if (s.may_type) {
        buttons.push(" ", h("button", {
          key: "type", className: "btn btn-primary btn-sm slaveshell-attach",
          onClick: function () {
            goClicked("session:" + s.id + "/attach", "#/slaveshell/session/" + encodeURIComponent(s.id) + "/attach");
          },
        }, s.own ? "Resume" : "Join"));
      }
      return h("tr", { key: s.id, "data-session": s.id, "data-state": s.state },
        h("td", null, s.id), h("td", null, s.worker), h("td", null, s.operator),
        h("td", null, s.command || "(login shell)"), h("td", null, s.state),
        h("td", null, s.viewers.join(", ")), h("td", null, buttons));
    });
  }

  function Fleet() {
    var st = React.useState({ lists: null, error: null, login: false });
    var state = st[0], setState = st[1];
    React.useEffect(function () {
      var cancel = null, timer = null, live = true;
      function load() {
        cancel = askLists(function (lists, error, login) {
          if (!live) return;
          setState({ lists: lists, error: error, login: !!login });
          if (!error) timer = setTimeout(load, 5000);
        });
      }
      load();
      return function () { live = false; clearTimeout(timer); if (cancel) cancel(); };
    }, []);
    if (state.error) {
      return h("div", { className: "slaveshell-page" },
        h("div", { className: "alert alert-danger slaveshell-refused" }, "Shells: " + state.error, " ",
          state.login ? h(LoginAgain) : null));
    }
    if (!state.lists) return h("div", { className: "slaveshell-page" }, "Loading the workers...");
    var rows = state.lists.workers.map(function (w) {
      var ready = w.allowed && w.connected && w.shell;
      var why = !w.allowed ? "not allowed" : !w.connected ? "not connected" : !w.shell ? "no slaveshell" : "";
      return h("tr", { key: w.name, "data-worker": w.name },
        h("td", null, w.name),
        h("td", null, w.connected ? "connected" : "disconnected"),
        h("td", null, String(w.sessions)),
        h("td", null, ready
          ? h("button", {
              className: "btn btn-primary btn-sm slaveshell-open",
              onClick: function () {
                goClicked("new:" + w.name, "#/slaveshell/terminal/" + encodeURIComponent(w.name));
              },
            }, "Open shell")
          : h("span", { className: "text-muted" }, why)));
    });
    var sessions = state.lists.sessions;
    return h("div", { className: "slaveshell-page" },
      h("h4", null, "Shells ", h("button", { className: "btn btn-outline-secondary btn-sm slaveshell-history-link",
        onClick: function () { go("#/slaveshell/history"); } }, "History and replay")),
      state.lists.workers.length === 0 ? h("p", null, "No worker you may act on.") :
      h("div", { className: "table-responsive" }, h("table", { className: "table table-sm slaveshell-fleet" },
        h("thead", null, h("tr", null, h("th", null, "Worker"), h("th", null, "State"),
          h("th", null, "Sessions"), h("th", null, ""))),
        h("tbody", null, rows))),
      h("h5", null, "Live sessions"),
      sessions.length === 0 ? h("p", { className: "slaveshell-no-sessions" }, "No live session you may watch.") :
      h("div", { className: "table-responsive" }, h("table", { className: "table table-sm slaveshell-sessions" },
        h("thead", null, h("tr", null, h("th", null, "Session"), h("th", null, "Worker"), h("th", null, "Operator"),
          h("th", null, "Command"), h("th", null, "State"), h("th", null, "Viewers"), h("th", null, ""))),
        h("tbody", null, h(SessionRows, { sessions: sessions })))));
  }

  function describeExit(m) {
    if (m.code !== null && m.code !== undefined) return "exit status " + m.code;
    if (m.signal !== null && m.signal !== undefined) return "killed by signal " + m.signal;
    return printable(m.reason || "ended");
  }

  // A terminal on one session: a new one on props.worker, or props.sessionId attached in props.mode ("attach":
  // resume one's own detached session or join another's; "watch": read-only). Once a session is open the address
  // names it, so that a reload reattaches; a socket lost without an end is reattached too (the master keeps the
  // session detached for its detach grace).
  function TerminalView(props) {
    var box = React.useRef(null);
    var st = React.useState("connecting");
    var status = st[0], setStatus = st[1];
    // The button to press before a socket opens (its label), and whether the grant is gone (log in again).
    var asking = React.useState(null), ask = asking[0], setAsk = asking[1];
    var relogin = React.useState(false), login = relogin[0], setLogin = relogin[1];
    var ctl = React.useRef({});
    var deliberate = React.useState(function () {
      return !!props.armed || tookClick(props.sessionId ? "session:" + props.sessionId + "/" + props.mode
        : "new:" + props.worker);
    })[0];
    React.useEffect(function () {
      var disposed = false, ws = null, term = null, observer = null, finished = false, retries = 0;
      var target = props.sessionId ? { id: props.sessionId, mode: props.mode } : null;
      var clickedHere = deliberate;
      clicked = null;
      if (framed()) {
        setStatus("refused: this page is shown inside another page (a frame): open Buildbot in its own tab " +
          "to use shells");
        return function () { disposed = true; };
      }
      loadXterm().then(function () {
        if (disposed) return;
        term = new Terminal({ scrollback: 5000, fontSize: 14, disableStdin: props.mode === "watch" });
        var fit = new FitAddon.FitAddon();
        term.loadAddon(fit);
        term.open(box.current);
        fit.fit();
        window.slaveshellTerminal = term; // for tests and the console: the screen's buffer
        var opened = false, typing = false, pending = [], inFlight = 0;
        var encoder = new TextEncoder();
        function pump() {
          while (pending.length && inFlight < INPUT_WINDOW && ws.readyState === WebSocket.OPEN) {
            var chunk = pending.shift();
            inFlight += chunk.length;
            ws.send(chunk);
          }
        }
        function send(message) {
          if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
        }
        ctl.current = {
          end: function () { send({ type: "close" }); },
          // For tests: drop the socket as a lost network would.
          drop: function () { ws.close(); },
          start: function () { clickedHere = true; finished = false; setAsk(null); connect(); },
        };
        function connect() {
          opened = false; pending = []; inFlight = 0;
          ws = new WebSocket(socketUrl());
          window.slaveshellSocket = ws;
          ws.binaryType = "arraybuffer";
          ws.onopen = function () {
            if (target) {
              term.reset(); // the master sends the session's recent output first
              ws.send(JSON.stringify({ type: "attach", id: target.id, mode: target.mode, reattach: !clickedHere }));
            } else {
              var open = { type: "open", worker: props.worker, cols: term.cols, rows: term.rows };
              if (props.build) open.build = props.build;
              ws.send(JSON.stringify(open));
            }
          };
          ws.onmessage = onMessage;
          ws.onclose = function () {
            if (finished || disposed) return;
            if (target && opened && retries < 10) {
              retries += 1;
              setStatus("reconnecting");
              setTimeout(function () { if (!disposed && !finished) connect(); }, 500 * retries);
            } else if (target && retries > 0 && retries < 10) {
              retries += 1;
              setTimeout(function () { if (!disposed && !finished) connect(); }, 500 * retries);
            } else {
              setStatus("connection closed");
            }
          };
        }
        function onMessage(ev) {
          if (typeof ev.data !== "string") {
            var data = new Uint8Array(ev.data);
            // Acknowledged once rendered: the master's credit window then lets the worker read on.
            term.write(data, function () { send({ type: "ack", bytes: data.length }); });
            return;
          }
          var m = JSON.parse(ev.data);
          if (m.type === "opened") {
            opened = true;
            retries = 0;
            typing = m.role !== "watch";
            target = { id: m.id, mode: typing ? "attach" : "watch" };
            var here = "#/slaveshell/session/" + encodeURIComponent(m.id) + "/" + target.mode;
            if (window.location.hash !== here) window.history.replaceState(window.history.state, "", here);
            // A resumed session takes this page's size.
            if (m.role === "owner") send({ type: "resize", cols: term.cols, rows: term.rows });
            setStatus(typing ? "connected" : "watching (read-only)");
            term.focus();
          } else if (m.type === "input_ack") {
            inFlight = Math.max(0, inFlight - m.bytes);
            pump();
          } else if (m.type === "waiting") {
            setStatus(printable(m.text));
          } else if (m.type === "exit") {
            finished = true;
            var line = "session ended: " + describeExit(m);
            term.write("\r\n\x1b[1m[" + line + "]\x1b[0m\r\n");
            setStatus(line);
          } else if (m.type === "error") {
            finished = true;
            if (m.confirm) {
              setStatus("click the button to join this session");
              setAsk("Join session " + target.id);
            } else {
              setStatus("refused: " + printable(m.message));
              if (m.login) setLogin(true);
            }
          }
        }
        term.onData(function (text) {
          if (!opened || !typing) return;
          var bytes = encoder.encode(text);
          for (var i = 0; i < bytes.length; i += INPUT_CHUNK) pending.push(bytes.slice(i, i + INPUT_CHUNK));
          pump();
        });
        term.onResize(function (size) {
          if (opened && typing) send({ type: "resize", cols: size.cols, rows: size.rows });
        });
        observer = new ResizeObserver(function () { try { fit.fit(); } catch (e) { /* hidden */ } });
        observer.observe(box.current);
        if (target || clickedHere) {
          connect();
        } else {
          setStatus("click the button to open a shell");
          setAsk("Open a shell on " + props.worker);
        }
      }, function (e) { setStatus("cannot load the terminal: " + e.message); });
      return function () {
        disposed = true;
        if (observer) observer.disconnect();
        if (ws) ws.close();
        if (term) term.dispose();
      };
    }, [props.worker, props.sessionId, props.mode, props.build]);
    var refused = status.indexOf("refused") === 0;
    var live = status === "connected" || status.indexOf("watching") === 0;
    var title = props.worker ? "Shell on " + props.worker + (props.build ? " in build " + props.build : "")
      : "Session " + props.sessionId;
    return h("div", { className: "slaveshell-page" },
      h("h4", null, title, " ",
        live && props.mode !== "watch" ? h("button", {
          className: "btn btn-outline-danger btn-sm slaveshell-end",
          onClick: function () { if (ctl.current.end) ctl.current.end(); },
        }, "End session") : null, " ",
        h("button", { className: "btn btn-outline-secondary btn-sm slaveshell-back",
          onClick: function () { go("#/slaveshell"); } }, live ? "Detach" : "Back")),
      h("div", { className: refused ? "alert alert-danger slaveshell-status" : "slaveshell-status",
                 "data-status": status }, status, login ? " " : null, login ? h(LoginAgain) : null),
      ask ? h("button", { className: "btn btn-primary slaveshell-start",
        onClick: function () { if (ctl.current.start) ctl.current.start(); } }, ask) : null,
      h("div", { ref: box, className: "slaveshell-terminal" }));
  }

  // The route's element is made once: follow the address ourselves, so that going from one session's address
  // to another's (or from watching to typing) changes the page.
  function useHash() {
    var st = React.useState(window.location.hash);
    React.useEffect(function () {
      function changed() { st[1](window.location.hash); }
      window.addEventListener("hashchange", changed);
      return function () { window.removeEventListener("hashchange", changed); };
    }, []);
    return st[0];
  }

  function TerminalPage() {
    useHash();
    var match = /\/slaveshell\/terminal\/([^/?]+)/.exec(window.location.hash);
    var worker = match ? decodeURIComponent(match[1]) : "";
    return h(TerminalView, { worker: worker, key: "w:" + worker });
  }

  function SessionPage() {
    useHash();
    var match = /\/slaveshell\/session\/([^/?]+)\/(attach|watch)/.exec(window.location.hash);
    var id = match ? decodeURIComponent(match[1]) : "", mode = match ? match[2] : "watch";
    return h(TerminalView, { sessionId: id, mode: mode, key: "s:" + id + "/" + mode });
  }

  // A socket for questions (master_side/www/lists.py): onReady(send) once open; each JSON answer, with the
  // binary frame that came before it (a transcript chunk), to onAnswer; a refusal or a lost socket to onFail.
  function questions(onReady, onAnswer, onFail) {
    var ws = new WebSocket(socketUrl()), data = null, over = false;
    ws.binaryType = "arraybuffer";
    function send(m) { if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(m)); }
    ws.onopen = function () { onReady(send); };
    ws.onmessage = function (ev) {
      if (typeof ev.data !== "string") { data = new Uint8Array(ev.data); return; }
      var m = JSON.parse(ev.data);
      if (m.type === "error") { over = true; onFail(printable(m.message), m); ws.close(); return; }
      var d = data;
      data = null;
      onAnswer(m, d, send);
    };
    ws.onclose = function () { if (!over) onFail("the master closed the connection"); over = true; };
    return function () { over = true; ws.close(); };
  }

  function when(iso) { return iso ? String(iso).replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z") : ""; }

  function outcome(r) {
    if (r.state === "running") return "running";
    if (r.exit_code !== null && r.exit_code !== undefined) return "exit " + r.exit_code;
    if (r.exit_signal) return "signal " + r.exit_signal;
    return printable(r.end_reason || r.state || "");
  }

  function HistoryPage() {
    var st = React.useState({ rows: null, error: null, worker: "", user: "" });
    var state = st[0], setState = st[1];
    var filters = React.useRef({ worker: "", user: "" });
    var ask = React.useCallback(function () {
      return questions(function (send) {
        send({ type: "history", worker: filters.current.worker, user: filters.current.user, limit: 200 });
      }, function (m) {
        if (m.type === "history") setState(function (old) { return Object.assign({}, old, { rows: m.sessions, error: null }); });
      }, function (why) {
        setState(function (old) { return old.rows && why.indexOf("closed") >= 0 ? old : Object.assign({}, old, { error: why }); });
      });
    }, []);
    React.useEffect(function () { return ask(); }, [ask]);
    function field(name, label) {
      return h("input", { className: "form-control form-control-sm slaveshell-filter-" + name, placeholder: label,
        style: { display: "inline-block", width: "14em", marginRight: "0.5em" },
        onChange: function (e) { filters.current[name] = e.target.value; } });
    }
    var body;
    if (state.error) body = h("div", { className: "alert alert-danger slaveshell-refused" }, "History: " + state.error);
    else if (!state.rows) body = h("p", null, "Loading the audit index...");
    else body = h("div", { className: "table-responsive" }, h("table", { className: "table table-sm slaveshell-history" },
      h("thead", null, h("tr", null, ["Session", "Worker", "Operator", "Command", "Started", "Ended", "Outcome",
        "Hidden input", ""].map(function (t) { return h("th", { key: t }, t); }))),
      h("tbody", null, state.rows.map(function (r) {
        return h("tr", { key: r.id, "data-session": r.id },
          h("td", null, r.id), h("td", null, r.worker), h("td", null, r.operator),
          h("td", null, r.command || (r.build_id ? "(build " + r.build_id + ")" : "(login shell)")),
          h("td", null, when(r.started)), h("td", null, when(r.ended)), h("td", null, outcome(r)),
          h("td", null, r.hidden_spans ? r.hidden_spans + (r.hidden_flag ? " (flagged)" : "") : ""),
          h("td", null, h("button", { className: "btn btn-secondary btn-sm slaveshell-replay",
            onClick: function () { go("#/slaveshell/replay/" + encodeURIComponent(r.id)); } }, "Replay")));
      }))));
    return h("div", { className: "slaveshell-page" },
      h("h4", null, "Shell sessions: history"),
      h("div", { style: { marginBottom: "0.5em" } }, field("worker", "worker"), field("user", "operator (web:name)"),
        h("button", { className: "btn btn-primary btn-sm slaveshell-filter",
          onClick: function () { setState(Object.assign({}, state, { rows: null })); ask(); } }, "Filter")),
      body);
  }

  var playerLoaded = null;
  function loadPlayer() {
    if (playerLoaded) return playerLoaded;
    var css = document.createElement("link");
    css.rel = "stylesheet";
    css.href = assetUrl("asciinema-player.css");
    document.head.appendChild(css);
    playerLoaded = new Promise(function (resolve, reject) {
      var s = document.createElement("script");
      s.src = assetUrl("asciinema-player.min.js");
      s.onload = resolve;
      s.onerror = function () { reject(new Error("cannot load the player")); };
      document.head.appendChild(s);
    });
    return playerLoaded;
  }

  // A transcript played in the page (asciinema-player): output only; typed input is not shown, hidden input is
  // only its marker in the transcript.
  function ReplayPage() {
    useHash();
    var match = /\/slaveshell\/replay\/([^/?]+)/.exec(window.location.hash);
    var id = match ? decodeURIComponent(match[1]) : "";
    var box = React.useRef(null);
    var st = React.useState("loading");
    var status = st[0], setStatus = st[1];
    React.useEffect(function () {
      var parts = [], player = null, disposed = false;
      var cancel = questions(function (send) { send({ type: "transcript", id: id, offset: 0 }); }, function (m, data, send) {
        if (m.type !== "transcript") return;
        if (data) parts.push(data);
        if (!m.eof) { send({ type: "transcript", id: id, offset: m.offset }); return; }
        cancel();
        var text = new TextDecoder().decode(concat(parts));
        loadPlayer().then(function () {
          if (disposed) return;
          player = AsciinemaPlayer.create({ data: text }, box.current, { fit: "width", preload: true });
          window.slaveshellReplay = { player: player, text: text };
          setStatus("ready");
        }, function (e) { setStatus("refused: " + e.message); });
      }, function (why) { if (!disposed && !player) setStatus("refused: " + why); });
      function concat(list) {
        var n = 0, i, out;
        for (i = 0; i < list.length; i++) n += list[i].length;
        out = new Uint8Array(n);
        n = 0;
        for (i = 0; i < list.length; i++) { out.set(list[i], n); n += list[i].length; }
        return out;
      }
      return function () { disposed = true; cancel(); if (player) player.dispose(); };
    }, [id]);
    return h("div", { className: "slaveshell-page" },
      h("h4", null, "Replay of session " + id, " ",
        h("button", { className: "btn btn-outline-secondary btn-sm", onClick: function () { go("#/slaveshell/history"); } },
          "History")),
      h("div", { className: status.indexOf("refused") === 0 ? "alert alert-danger slaveshell-status" : "slaveshell-status",
                 "data-status": status }, status === "ready" ? "" : status),
      h("div", { ref: box, className: "slaveshell-replay" }));
  }

  // A build held by HoldForShell (its step links here): what is held, a terminal in the build and a release
  // button.
  function BuildPage() {
    // The build this page was opened for (its terminal then names its session in the address).
    var build = React.useState(function () {
      var match = /\/slaveshell\/build\/(\d+)/.exec(window.location.hash);
      return match ? parseInt(match[1], 10) : 0;
    })[0];
    var st = React.useState({ hold: undefined, error: null, released: null, shell: false });
    var state = st[0], setState = st[1];
    function update(change) { setState(function (old) { return Object.assign({}, old, change); }); }
    React.useEffect(function () {
      return questions(function (send) { send({ type: "hold", build: build }); },
        function (m) { if (m.type === "hold") update({ hold: m.hold }); },
        function (why) { update({ error: why }); });
    }, [build]);
    function release() {
      questions(function (send) { send({ type: "release", build: build }); },
        function (m) { if (m.type === "release") update({ released: printable(m.message) }); },
        function (why) { if (why.indexOf("closed") < 0) update({ released: "refused: " + why }); });
    }
    var hold = state.hold;
    if (state.error) return h("div", { className: "slaveshell-page" },
      h("div", { className: "alert alert-danger slaveshell-refused" }, "Build " + build + ": " + state.error));
    if (hold === undefined) return h("div", { className: "slaveshell-page" }, "Loading build " + build + "...");
    if (hold === null && !state.released) return h("div", { className: "slaveshell-page" },
      h("p", { className: "slaveshell-not-held" }, "Build " + build + " is not held for a shell (or not on a worker you may act on)."));
    return h("div", { className: "slaveshell-page" },
      hold ? h("p", { className: "slaveshell-hold" }, "Build " + hold.builder + " #" + hold.number + " (id " + hold.build +
        ") is held on worker " + hold.worker + ", in " + hold.workdir + ". ",
        state.released ? null : h("button", { className: "btn btn-warning btn-sm slaveshell-release", onClick: release },
          "Release the build")) : null,
      state.released ? h("div", { className: "alert alert-info slaveshell-released" }, state.released) : null,
      hold && !state.shell ? h("button", { className: "btn btn-primary btn-sm slaveshell-open",
        onClick: function () { update({ shell: true }); } }, "Open a shell in this build") : null,
      hold && state.shell ? h(TerminalView, { worker: hold.worker, build: hold.build, armed: true,
        key: "b:" + hold.build }) : null);
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
    reg.registerRoute({
      route: "slaveshell/build/:build", group: "slaveshell",
      element: function () { return h(BuildPage); },
    });
    reg.registerRoute({
      route: "slaveshell/history", group: "slaveshell",
      element: function () { return h(HistoryPage); },
    });
    reg.registerRoute({
      route: "slaveshell/replay/:id", group: "slaveshell",
      element: function () { return h(ReplayPage); },
    });
    reg.registerRoute({
      route: "slaveshell/session/:id/:mode", group: "slaveshell",
      element: function () { return h(SessionPage); },
    });
  });
})();
