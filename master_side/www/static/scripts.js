// slaveshell's page in Buildbot's web UI: a "Shells" menu with the fleet and a terminal (xterm.js + fit).
// Plain JavaScript on the globals the base UI exposes (React, BuildbotPluginSupport): no build step.
// The socket protocol is described in master_side/www/terminal_ws.py.
(function () {
  "use strict";
  var h = React.createElement;
  var BASE = "plugins/slaveshell/";
  var INPUT_WINDOW = 4 * 65536; // slaveshell.vocabulary.protocol.INPUT_WINDOW: input in flight before the worker acks it
  var INPUT_CHUNK = 4096;

  function assetUrl(name) {
    return new URL(BASE + name, document.baseURI).href;
  }

  function socketUrl() {
    var u = new URL(BASE + "ws", document.baseURI);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    return u.href;
  }

  // Text that a worker, a session or another user controls (names, commands, reasons, messages), shown in the
  // page: slaveshell/display.py's rule (`visible`), so that the page shows what a terminal table shows. Controls,
  // format characters (the bidirectional overrides among them), line and paragraph separators, lone surrogates
  // and unassigned code points are spelled as Python's repr() spells them, and so is a combining mark with no
  // character of its own before it. React escapes HTML; this makes the invisible visible.
  var HIDDEN_CHAR = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}\p{Cn}]/u, MARK = /\p{M}/u;
  var SHORT = { "\t": "\\t", "\n": "\\n", "\r": "\\r" };
  function escapedChar(c) {
    var code = c.codePointAt(0), hex = code.toString(16);
    if (SHORT[c]) return SHORT[c];
    if (code < 0x100) return "\\x" + ("0" + hex).slice(-2);
    if (code < 0x10000) return "\\u" + ("000" + hex).slice(-4);
    return "\\U" + ("0000000" + hex).slice(-8);
  }
  function printable(text) {
    var out = "", base = false;
    // Lone surrogates stay single code units in this iteration (for...of splits only well-formed pairs).
    for (var c of String(text === null || text === undefined ? "" : text)) {
      if (HIDDEN_CHAR.test(c) || (MARK.test(c) && !base)) { out += escapedChar(c); base = false; continue; }
      out += c;
      if (!MARK.test(c)) base = true;
    }
    return out;
  }

  // Buildbot's frontend configuration (its index page sets it): c['buildbotURL'] and the logged-in user.
  function frontend() { return window.buildbotFrontendConfig || {}; }

  // The site c['buildbotURL'] names, when this page was opened at another address (localhost for 127.0.0.1, a
  // name for its IP address...): the master refuses every socket from such a page (the Origin check), so the
  // page says so before trying, with the address to use. Null when the page is at the right site.
  function wrongSite() {
    var configured = frontend().buildbotURL;
    if (typeof configured !== "string" || !configured) return null;
    var site;
    try { site = new URL(configured); } catch (e) { return null; }
    if (site.protocol !== "http:" && site.protocol !== "https:") return null;
    if (site.origin === window.location.origin) return null;
    return { here: window.location.origin, site: site.origin,
             url: site.href.replace(/#.*$/, "") + window.location.hash };
  }

  // Not logged in on a site with a web login (on a site without one, c['www']['auth'] unset, there is nothing to
  // log in to: the master's refusal says what is missing).
  function anonymous() {
    var config = frontend(), user = config.user, auth = config.auth;
    if (auth && auth.name === "NoAuth") return false;
    return !!(user && user.anonymous);
  }

  // What the pages show instead of their content when no socket can serve them: the wrong site (see wrongSite)
  // or no login. Null when neither (the page then asks the master, which checks both again).
  function blockedNotice() {
    var wrong = wrongSite();
    if (wrong) {
      return h("div", { className: "alert alert-warning slaveshell-wrong-site" },
        "This page is at " + wrong.here + ", but c['buildbotURL'] is " + wrong.site + ": the master takes " +
        "shells only from pages at that address (their Origin must match c['buildbotURL']). Open ",
        h("a", { href: wrong.url, className: "slaveshell-site-link" }, wrong.url), ".");
    }
    if (anonymous()) {
      var back = window.location.hash.replace(/^#/, "") || "/slaveshell";
      return h("div", { className: "alert alert-info slaveshell-login" },
        "Shells need a login. ",
        h("a", { href: "auth/login?redirect=" + encodeURIComponent(back), className: "slaveshell-login-link" },
          "Log in"),
        " (or use the login menu at the top right), then come back to this page.");
    }
    return null;
  }

  // Why a socket closed without a word from the master.
  function closedWhy() {
    var wrong = wrongSite();
    if (wrong) return "the master refuses pages at " + wrong.here + " (their Origin does not match c['buildbotURL'], " + wrong.site + ")";
    return "the master closed the connection";
  }

  function setTitle(text) { document.title = text + " - Shells"; }

  // Makes the element fill the window's height below where it starts (the terminal, the player), and follow the
  // window's resizes.
  function useFillWindow(ref, bottomMargin) {
    React.useEffect(function () {
      function fill() {
        var el = ref.current;
        if (!el) return;
        var top = el.getBoundingClientRect().top + window.scrollY;
        el.style.height = Math.max(120, window.innerHeight - top - bottomMargin) + "px";
      }
      fill();
      var again = setTimeout(fill, 200); // after the layout above it (a notice, the header) settled
      window.addEventListener("resize", fill);
      return function () { clearTimeout(again); window.removeEventListener("resize", fill); };
    });
  }

  // How a session row is labelled, as `slaveshell history` does (slaveshell/client/labels.py): a fleet run's
  // script part runs SCRIPT_RUNNER (slaveshell/fleet/script.py), shown as the run's script.
  var SCRIPT_RUNNER = 'f=$(mktemp "${TMPDIR:-/tmp}/slaveshell-run.XXXXXXXX") || exit 127; ' +
    'trap \'rm -f "$f"\' EXIT; cat > "$f" && chmod 700 "$f" && "$f" </dev/null';
  function commandLabel(r) {
    if (r.command === SCRIPT_RUNNER) return r.run_id ? "(script of fleet run " + printable(r.run_id) + ")" : "(a fleet run's script)";
    if (r.command) return printable(r.command);
    return r.build_id ? "(login shell in build " + r.build_id + ")" : "(login shell)";
  }

  function outcome(r) {
    if (r.state === "running") return "running";
    return printable(r.end_reason || r.state || "");
  }

  function when(iso) { return iso ? String(iso).replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z") : ""; }

  // Links between slaveshell's pages and Buildbot's own. A worker's name leads to its view here (its live sessions,
  // its recent history, an Open shell button) and, when the master found its Buildbot id, to Buildbot's page for it
  // (#/workers/<id>); a session in a build leads to the build's page (#/builders/<builderid>/builds/<number>).
  // Ids come from the master (master_side/www/buildbot_pages.py) and are used only when they are integers.
  function workerView(name) { return "#/slaveshell/worker/" + encodeURIComponent(name); }
  function isId(n) { return typeof n === "number" && Number.isInteger(n) && n >= 0; }

  // Which master of a multi-master site holds a worker (lists.py's "master", "here", "masters"; for one no master
  // holds, the last that did or those it is configured on), as `slaveshell workers` says it
  // (slaveshell/client/labels.py); empty on a site of one master.
  function masterText(w) {
    var masters = Array.isArray(w.masters) ? w.masters : [];
    var disputed = Array.isArray(w.disputed) ? w.disputed : [];
    var claimers = disputed.map(function (d) { return d.master; }).join(", ");
    if (masters.length > 1) return printable("on " + masters.length + " masters: " + masters.join(", "));
    if (!w.master) {
      if (disputed.length) return printable("disputed: " + claimers + " (not routed): " + disputed[0].why);
      if (!w.site) return "";
      if (w.stale) return "nowhere (stale db row)";
      var configured = Array.isArray(w.configured_on) ? w.configured_on : [];
      if (typeof w.last_master === "string" && w.last_master) return printable("offline (last on " + w.last_master + ")");
      if (configured.length) return printable("offline (configured: " + configured.join(", ") + ")");
      return "nowhere";
    }
    return printable((w.here ? "here (master " + w.master + ")" : "on master " + w.master) +
      (disputed.length ? " (also claimed by " + claimers + ": disputed)" : ""));
  }

  function WorkerName(props) {
    var parts = [h("a", { key: "view", href: workerView(props.name), className: "slaveshell-worker-link",
      title: "Shells on this worker" }, printable(props.name))];
    if (isId(props.workerid)) {
      parts.push(" ", h("a", { key: "bb", href: "#/workers/" + props.workerid, className: "slaveshell-bb-worker",
        title: "This worker's page in Buildbot" }, "(Buildbot page)"));
    }
    return h(React.Fragment, null, parts);
  }

  function BuildCell(props) {
    var r = props.row;
    if (r.build_id === null || r.build_id === undefined) return null;
    var text = printable(r.builder && isId(r.build_number) ? r.builder + " #" + r.build_number : "build " + r.build_id);
    if (!isId(r.builderid) || !isId(r.build_number)) return h("span", { className: "slaveshell-build" }, text);
    return h("a", { href: "#/builders/" + r.builderid + "/builds/" + r.build_number,
      className: "slaveshell-build slaveshell-build-link", title: "This build's page in Buildbot" }, text);
  }

  // A link to a session's replay when this web user may replay it (its row is in the history they may read),
  // with what the audit index says of it; nothing otherwise.
  function ReplayLink(props) {
    var st = React.useState(null);
    var row = st[0], setRow = st[1];
    React.useEffect(function () {
      var cancel = questions(function (send) {
        send({ type: "history", session: props.id, limit: 1 });
      }, function (m) {
        if (m.type !== "history") return;
        cancel();
        if (m.sessions.length) setRow(m.sessions[0]);
      }, function () { /* no link */ });
      return cancel;
    }, [props.id]);
    if (!row) return null;
    return h("span", { className: "slaveshell-replay-link" },
      row.state === "running" ? "" : printable("Session " + row.id + " on " + row.worker + " (" + row.operator + ")") + " ended " +
        when(row.ended) + ": " + outcome(row) + ". ",
      h("a", { href: "#/slaveshell/replay/" + encodeURIComponent(row.id) }, "Replay it"));
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

  // One socket that asks for the lists of the fleet page (workers, live sessions, requests waiting for an
  // approval), then closes. `includeOffline`: the site's workers no master holds now too (`slaveshell workers
  // --include-offline`).
  function askLists(onAnswer, includeOffline) {
    var got = {}, cancel = null;
    cancel = questions(function (send) {
      send(includeOffline ? { type: "workers", include_offline: true } : { type: "workers" });
      send({ type: "sessions" });
      send({ type: "approvals" });
    }, function (m) {
      if (m.type !== "workers" && m.type !== "sessions" && m.type !== "approvals") return;
      got[m.type] = m[m.type];
      if (got.workers && got.sessions && got.approvals) { cancel(); onAnswer(got, null); }
    }, function (why, m) { onAnswer(null, why, m && m.login); });
    return cancel;
  }

  // Requests on four-eyes workers waiting for a moderator's approval (lists.py's "approvals", as `slaveshell
  // approvals` lists them): what each would do, escaped; Approve, and Deny with a reason, for a moderator (the master
  // decides who is one: another person than the operator, in the rule's groups or roles, with watch); the page's
  // user's own requests marked as theirs; a fleet run's part still waiting for a free place to be asked is marked so,
  // without the buttons. `props.changed(text)` says what was decided, and reloads the lists.
  function ApprovalRows(props) {
    var st = React.useState({ told: {}, reasons: {}, whole: {} }), state = st[0], setState = st[1];
    function showAll(r) { // all of what a long request would do (a listing of all cuts it)
      var cancel = questions(function (send) { send({ type: "approvals", id: r.id }); }, function (m) {
        if (m.type !== "approvals") return;
        cancel();
        if (m.approvals.length) set("whole", r.id, m.approvals[0].what);
      }, function (why) { set("told", r.id, "refused: " + why); });
    }
    function set(key, id, value) {
      setState(function (o) { var n = Object.assign({}, o); n[key] = Object.assign({}, o[key]); n[key][id] = value;
        return n; });
    }
    function decide(r, kind) {
      var cancel = questions(function (send) {
        var m = { type: kind, id: r.id };
        if (kind === "deny" && state.reasons[r.id]) m.reason = state.reasons[r.id];
        send(m);
      }, function (m) {
        if (m.type !== kind) return;
        cancel();
        set("told", r.id, printable(m.message));
        props.changed(printable(m.message));
      }, function (why) { set("told", r.id, "refused: " + why); });
    }
    return props.approvals.map(function (r) {
      var told = state.told[r.id], left = Math.max(0, Math.round(r.expires - Date.now() / 1000));
      var actions = told ? h("span", { className: "slaveshell-approval-told" }, told)
        : r.waits_for_place ? h("span", { className: "text-muted slaveshell-approval-place" },
          (r.mine ? "yours: " : "") + "fleet run " + printable(r.run) + "'s part: waits for a free place to be asked" +
          (!r.mine && r.may_approve ? " (yours to decide once it is)" : ""))
        : r.mine ? h("span", { className: "text-muted" }, "yours: waits for a moderator")
        : !r.may_approve ? h("span", { className: "text-muted" }, "not yours to decide")
        : h("span", null,
          h("button", { className: "btn btn-success btn-sm slaveshell-approve",
            onClick: function () { decide(r, "approve"); } }, "Approve"), " ",
          h("input", { className: "form-control form-control-sm slaveshell-deny-reason", type: "text", maxLength: 250,
            placeholder: "reason to deny", "aria-label": "reason to deny", value: state.reasons[r.id] || "",
            style: { display: "inline-block", width: "14em", marginRight: "0.5em" },
            onChange: function (e) { set("reasons", r.id, e.target.value.replace(/[\r\n]+/g, " ")); } }),
          h("button", { className: "btn btn-danger btn-sm slaveshell-deny",
            onClick: function () { decide(r, "deny"); } }, "Deny"));
      return h("tr", { key: r.id, "data-approval": r.id },
        h("td", null, printable(r.id)),
        h("td", null, h("a", { href: workerView(r.worker), className: "slaveshell-worker-link" }, printable(r.worker))),
        h("td", null, printable(r.operator)), h("td", null, printable(r.kind)),
        h("td", { className: "slaveshell-approval-what" }, printable(state.whole[r.id] || r.what),
          !state.whole[r.id] && r.what_chars > r.what.length ? [" ", h("button", { key: "all",
            className: "btn btn-outline-secondary btn-sm slaveshell-approval-all", onClick: function () { showAll(r); } },
            "... " + (r.what_chars - r.what.length) + " more characters: show all")] : null),
        h("td", null, printable(r.reason || "")), h("td", null, Math.floor(left / 60) + "m" + (left % 60) + "s"),
        h("td", null, actions));
    });
  }

  function go(hash) { window.location.hash = hash; }

  // A shell opens only on a deliberate click in a top-level page (master_side/www/framing.py, docs/web.md): the
  // click that led to a terminal (the fleet's buttons) is remembered for the page it opens, for a few seconds; a
  // terminal loaded from its address (a link, a reload, a frame) shows a button instead, except a reload of one's
  // own session (the master refuses an automatic attach to another's: "reattach").
  var clicked = null;
  // The reason for the next session this page opens (a ticket, an incident): typed in a ReasonField, sent in
  // the open message as `buildbot-shell --reason` sends it; one line of at most 500 characters (the master
  // checks it: slaveshell.vocabulary.checks.check_reason). A policy rule may require one on a worker.
  var reasonForNew = "";
  function ReasonField() {
    var st = React.useState(reasonForNew), value = st[0], setValue = st[1];
    return h("input", { className: "form-control form-control-sm slaveshell-reason", type: "text", maxLength: 500,
      placeholder: "reason for a new shell (ticket, incident)", value: value, "aria-label": "reason",
      style: { display: "inline-block", width: "24em", maxWidth: "100%", marginRight: "0.5em" },
      onChange: function (e) { reasonForNew = e.target.value.replace(/[\r\n]+/g, " "); setValue(reasonForNew); } });
  }
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

  // A session's state in the live lists. A four-eyes session (its policy rule's `moderated_by`) says whether its
  // operator's input is held until a moderator watches, and who moderates it, as `slaveshell sessions` does.
  function SessionState(props) {
    var s = props.session, by = s.moderated_by, mods = s.moderators || [];
    if (!by) return printable(s.state);
    var groups = " (moderated_by: " + printable(by.join(", ")) + ")";
    return [
      h("span", { key: "state", className: s.held ? "slaveshell-held" : "slaveshell-state" },
        s.held ? "held" : printable(s.state)),
      h("div", { key: "who", className: "slaveshell-moderation" }, s.held
        ? "input waits for a moderator" + groups
        : "moderated by " + printable(mods.join(", ")) + groups)];
  }

  function viewerLabel(s) {
    var mods = s.moderators || [];
    return s.viewers.map(function (v) {
      return printable(v) + (mods.indexOf(v) >= 0 ? " (moderator)" : "");
    }).join(", ");
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
      return h("tr", { key: s.id, "data-session": s.id, "data-state": s.state, "data-held": s.held ? "yes" : null },
        h("td", null, printable(s.id)),
        h("td", null, h("a", { href: workerView(s.worker), className: "slaveshell-worker-link" }, printable(s.worker))),
        props.site ? h("td", { className: "slaveshell-master" }, printable(s.master || "")) : null,
        h("td", null, printable(s.operator)),
        h("td", null, commandLabel(s)), h("td", { className: "slaveshell-reason-cell" }, printable(s.reason || "")),
        h("td", { className: "slaveshell-state-cell" }, h(SessionState, { session: s })),
        h("td", { className: "slaveshell-viewers" }, viewerLabel(s)), h("td", null, buttons));
    });
  }

  function Fleet() {
    var st = React.useState({ lists: null, error: null, login: false });
    var state = st[0], setState = st[1];
    var reloads = React.useState({ n: 0, decided: "" }), reloaded = reloads[0], setReloaded = reloads[1];
    function reload(decided) { setReloaded(function (o) { return { n: o.n + 1, decided: decided }; }); }
    // The site's offline workers too (`slaveshell workers --include-offline`): asked of the master, which lists
    // them from the shared database; kept in the address (?offline), so that a reload or a link keeps it.
    var includeOffline = /[?&]offline(=1)?(&|$)/.test(window.location.hash);
    function setIncludeOffline(on) {
      window.history.replaceState(window.history.state, "", on ? "#/slaveshell?offline=1" : "#/slaveshell");
      reload("");
    }
    React.useEffect(function () {
      var cancel = null, timer = null, live = true;
      setTitle("Workers");
      if (blockedNotice()) return undefined;
      function load() {
        cancel = askLists(function (lists, error, login) {
          if (!live) return;
          setState({ lists: lists, error: error, login: !!login });
          if (!error) timer = setTimeout(load, 5000);
        }, includeOffline);
      }
      load();
      return function () { live = false; clearTimeout(timer); if (cancel) cancel(); };
    }, [reloaded.n, includeOffline]);
    var blocked = blockedNotice();
    if (blocked) return h("div", { className: "slaveshell-page" }, blocked);
    if (state.error) {
      return h("div", { className: "slaveshell-page" },
        h("div", { className: "alert alert-danger slaveshell-refused" }, "Shells: " + state.error, " ",
          state.login ? h(LoginAgain) : null));
    }
    if (!state.lists) return h("div", { className: "slaveshell-page" }, "Loading the workers...");
    // The Master column, and the switch for the offline workers, on a multi-master site only (a site of one master
    // lists every worker configured on it, attached or not).
    var multi = state.lists.workers.some(function (w) { return w.site; });
    var offlineSwitch = multi || includeOffline ? h("label", { className: "slaveshell-include-offline-label",
      style: { marginLeft: "1em" } }, h("input", { type: "checkbox", className: "slaveshell-include-offline",
        checked: includeOffline, style: { marginRight: "0.3em" },
        onChange: function (e) { setIncludeOffline(e.target.checked); } }),
      "Include offline workers (no master holds them now)") : null;
    var rows = state.lists.workers.map(function (w) {
      var ready = w.allowed && w.connected && w.shell;
      var why = !w.allowed ? "not allowed" : !w.connected ? "not connected" : !w.shell ? "no slaveshell" : "";
      return h("tr", { key: w.name, "data-worker": w.name },
        h("td", null, h(WorkerName, { name: w.name, workerid: w.workerid })),
        h("td", null, w.connected ? "connected" : "disconnected"),
        multi ? h("td", { className: "slaveshell-master" }, masterText(w)) : null,
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
    // On a multi-master site each live session names its master (the others' are watched through this one).
    var siteSessions = sessions.some(function (s) { return !!s.master; });
    return h("div", { className: "slaveshell-page" },
      h("h4", null, "Shells ", h("button", { className: "btn btn-outline-secondary btn-sm slaveshell-history-link",
        onClick: function () { go("#/slaveshell/history"); } }, "History and replay"), " ",
        h("a", { className: "btn btn-outline-secondary btn-sm slaveshell-fleet-link", href: "#/slaveshell/fleet" },
          "Fleet: run a command, facts")),
      state.lists.workers.length === 0 && !offlineSwitch ? null : h("div", { style: { marginBottom: "0.5em" } },
        state.lists.workers.length === 0 ? null : h(ReasonField), offlineSwitch),
      state.lists.workers.length === 0 ? h("p", null, "No worker you may act on.") :
      h("div", { className: "slaveshell-scroll" }, h("table", { className: "table table-sm slaveshell-fleet" },
        h("thead", null, h("tr", null, h("th", null, "Worker"), h("th", null, "State"),
          multi ? h("th", null, "Master") : null, h("th", null, "Sessions"), h("th", null, ""))),
        h("tbody", null, rows))),
      reloaded.decided ? h("div", { className: "alert alert-info slaveshell-decided" }, reloaded.decided) : null,
      state.lists.approvals.length === 0 ? null : h("div", null, h("h5", null, "Waiting for a moderator's approval"),
        h("div", { className: "slaveshell-scroll" }, h("table", { className: "table table-sm slaveshell-approvals" },
          h("thead", null, h("tr", null, ["Request", "Worker", "Operator", "Kind", "What", "Reason", "Left", ""].map(
            function (t, i) { return h("th", { key: i }, t); }))),
          h("tbody", null, h(ApprovalRows, { approvals: state.lists.approvals, changed: reload }))))),
      h("h5", null, "Live sessions"),
      sessions.length === 0 ? h("p", { className: "slaveshell-no-sessions" }, "No live session you may watch.") :
      h("div", { className: "slaveshell-scroll" }, h("table", { className: "table table-sm slaveshell-sessions" },
        h("thead", null, h("tr", null, h("th", null, "Session"), h("th", null, "Worker"),
          siteSessions ? h("th", null, "Master") : null, h("th", null, "Operator"),
          h("th", null, "Command"), h("th", null, "Reason"), h("th", null, "State"), h("th", null, "Viewers"),
          h("th", null, ""))),
        h("tbody", null, h(SessionRows, { sessions: sessions, site: siteSessions })))));
  }

  // The end of a session. One this page ended says so in the audit index's words (its `end_reason`, as
  // `slaveshell history` and the history page show it): "closed by web:<name> (signal 1)"; one a moderator ended
  // from this page, "killed by web:<name> (moderator) (signal 1)".
  function describeExit(m, closedHere, killedHere) {
    var signal = m.signal !== null && m.signal !== undefined, code = m.code !== null && m.code !== undefined;
    if (closedHere || killedHere) {
      var user = frontend().user, name = user && user.username ? "web:" + user.username : "this page";
      var status = signal ? "signal " + m.signal : code ? "exit " + m.code : "";
      return printable((killedHere ? "killed by " + name + " (moderator)" : "closed by " + name) +
        (status ? " (" + status + ")" : ""));
    }
    if (code) return "exit status " + m.code;
    if (signal) return "killed by signal " + m.signal;
    return printable(m.reason || "ended");
  }

  // Above a four-eyes session's terminal: what moderation means for this page (the master's notices in the
  // terminal say when the input is held or released, and why a watcher does not moderate). A session another
  // master serves says that master's name: the note is its word about its own policy.
  function ModerationNote(props) {
    var m = props.moderation, by = " (moderated_by: " + printable(m.by.join(", ")) + ")";
    var on = props.master ? printable(" on master " + props.master) : "";
    return h("div", { className: "slaveshell-moderated", "data-moderator": m.moderator ? "yes" : null,
                      "data-master": props.master || null },
      m.typing ? "Four-eyes session" + on + by + ": what you type reaches the worker only while a moderator watches."
        : m.moderator ? "You moderate this four-eyes session" + on + by + ": the operator's input reaches the " +
          "worker while you watch; leaving holds it again."
        : "Four-eyes session" + on + by + ": you watch it without moderating it.");
  }

  // A terminal on one session: a new one on props.worker, or props.sessionId attached in props.mode ("attach":
  // resume one's own detached session or join another's; "watch": read-only). Once a session is open the address
  // names it, so that a reload reattaches; a socket lost without an end is reattached too (the master keeps the
  // session detached for its detach grace). A session that has ended, or that the master refuses, leaves no
  // terminal: the reason, and a link to its replay when this web user may replay it.
  function TerminalView(props) {
    var box = React.useRef(null);
    var st = React.useState("connecting");
    var status = st[0], setStatus = st[1];
    var shown = React.useState({ worker: props.worker || "", id: props.sessionId || "", opened: false, over: false });
    var session = shown[0], setSession = shown[1];
    // The button to press before a socket opens (its label), and whether the grant is gone (log in again).
    var asking = React.useState(null), ask = asking[0], setAsk = asking[1];
    var relogin = React.useState(false), login = relogin[0], setLogin = relogin[1];
    // A moderator's End session: asked to confirm first (null: not asked; "asked"; "sent").
    var ending = React.useState(null), endAsk = ending[0], setEndAsk = ending[1];
    var ctl = React.useRef({});
    var deliberate = React.useState(function () {
      return !!props.armed || tookClick(props.sessionId ? "session:" + props.sessionId + "/" + props.mode
        : "new:" + props.worker);
    })[0];
    var blocked = blockedNotice();
    useFillWindow(box, 12);
    React.useEffect(function () {
      if (blockedNotice()) return undefined;
      var disposed = false, ws = null, term = null, observer = null, finished = false, retries = 0, closing = false;
      var killing = false;
      var everOpened = false;
      var target = props.sessionId ? { id: props.sessionId, mode: props.mode } : null;
      function note(change) { setSession(function (old) { return Object.assign({}, old, change); }); }
      var clickedHere = deliberate;
      clicked = null;
      if (framed()) {
        setStatus("refused: this page is shown inside another page (a frame): open Buildbot in its own tab " +
          "to use shells");
        return function () { disposed = true; };
      }
      loadXterm().then(function () {
        if (disposed) return;
        // lineHeight: at 1.0 the underscore is drawn below the row's box and clipped at a device scale of 1.
        term = new Terminal({ scrollback: 5000, fontSize: 14, lineHeight: 1.2, disableStdin: props.mode === "watch" });
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
          end: function () { closing = true; send({ type: "close" }); },
          // A moderator ends the four-eyes session for everyone (the master checks that this watcher moderates it).
          kill: function () { killing = true; send({ type: "kill" }); },
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
              if (reasonForNew.trim()) open.reason = reasonForNew.trim();
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
              setStatus("connection closed: " + closedWhy());
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
            everOpened = true;
            retries = 0;
            typing = m.role !== "watch";
            target = { id: m.id, mode: typing ? "attach" : "watch" };
            var here = "#/slaveshell/session/" + encodeURIComponent(m.id) + "/" + target.mode;
            showAddress(here);
            // A resumed session takes this page's size.
            if (m.role === "owner") send({ type: "resize", cols: term.cols, rows: term.rows });
            note({ worker: String(m.worker), id: String(m.id), opened: true,
                   master: typeof m.master === "string" ? m.master : null,
                   moderation: Array.isArray(m.moderated_by) && m.moderated_by.length
                     ? { by: m.moderated_by.map(String), moderator: m.moderator === true, typing: typing } : null });
            setStatus(typing ? "connected" : "watching (read-only)");
            term.focus();
          } else if (m.type === "input_ack") {
            inFlight = Math.max(0, inFlight - m.bytes);
            pump();
          } else if (m.type === "waiting") {
            setStatus(printable(m.text));
          } else if (m.type === "killed") {
            // The kill's line: for a session another master serves, that master's answer.
            note({ killed: String(m.text) });
          } else if (m.type === "exit") {
            finished = true;
            var line = "session ended: " + describeExit(m, closing, killing);
            term.write("\r\n\x1b[1m[" + line + "]\x1b[0m\r\n");
            note({ over: true });
            setStatus(line);
          } else if (m.type === "error") {
            finished = true;
            if (m.confirm) {
              setStatus("click the button to join this session");
              setAsk(printable("Join session " + target.id));
              return;
            }
            note({ over: true });
            if (target && !everOpened && /^no live session/.test(String(m.message))) {
              setStatus(printable("ended: session " + target.id + " is not live (it ended, or there is no such session)"));
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
    var refused = status.indexOf("refused") === 0 || status.indexOf("connection closed") === 0;
    var live = status === "connected" || status.indexOf("watching") === 0;
    // A moderator's End session: for a session another master serves, when that master says this view moderates
    // it (the kill goes there, and that master decides again).
    var moderating = live && props.mode === "watch" && !!session.moderation && session.moderation.moderator;
    // Nothing to show in a terminal that never opened: no black box under the refusal.
    var empty = !session.opened && (session.over || refused);
    var where = session.worker ? (props.build ? " in build " + props.build : "") +
      (session.master ? " on master " + session.master : "") : "";
    var title = printable(session.worker ? "Shell on " + session.worker + where : "Session " + session.id);
    var titleWithId = session.worker && session.id ? title + printable(" (session " + session.id + ")") : title;
    React.useEffect(function () { setTitle(titleWithId); }, [titleWithId]);
    if (blocked) return h("div", { className: "slaveshell-page" }, h("h4", null, title), blocked);
    return h("div", { className: "slaveshell-page" },
      h("h4", null, title, session.worker && session.id
          ? h("small", { className: "text-muted slaveshell-session-id" }, printable(" session " + session.id)) : null, " ",
        live && props.mode !== "watch" ? h("button", {
          className: "btn btn-outline-danger btn-sm slaveshell-end",
          onClick: function () { if (ctl.current.end) ctl.current.end(); },
        }, "End session") : null, " ",
        moderating ? h("button", { className: "btn btn-outline-danger btn-sm slaveshell-moderator-end",
          disabled: endAsk !== null, onClick: function () { setEndAsk("asked"); } }, "End session") : null, " ",
        h("button", { className: "btn btn-outline-secondary btn-sm slaveshell-back",
          // Leaving detaches, here or on the master that serves it (resumed from the lists or a reload).
          onClick: function () { go("#/slaveshell"); } }, live ? "Detach" : "Back"), " ",
        // The worker's files (download, upload) in a tab of their own: this page keeps its session.
        live && session.worker ? h("a", { className: "btn btn-outline-secondary btn-sm slaveshell-files-link",
          href: workerView(session.worker), target: "_blank", rel: "noopener" }, "Files") : null),
      h("div", { className: refused ? "alert alert-danger slaveshell-status" : "slaveshell-status",
                 "data-status": status }, status, login ? " " : null, login ? h(LoginAgain) : null,
        session.over && session.id ? h("div", null, h(ReplayLink, { id: session.id })) : null),
      live && session.moderation ? h(ModerationNote, { moderation: session.moderation, master: session.master })
        : null,
      session.killed ? h("div", { className: "slaveshell-killed", "data-master": session.master || null },
        printable((session.master ? "master " + session.master + ": " : "") + session.killed)) : null,
      moderating && endAsk !== null ? h("div", { className: "alert alert-warning slaveshell-end-confirm" },
        printable("End session " + session.id + " on " + session.worker + " for its operator and every viewer? ") +
          "Its shell is hung up (then TERM, then KILL), as slaveshell kill does; " +
          (session.master ? printable("master " + session.master + " decides and records it in its audit index as ")
            : "the audit index records it as ") + "your kill, as moderator. ",
        h("button", { className: "btn btn-danger btn-sm slaveshell-end-yes", disabled: endAsk === "sent",
          onClick: function () { setEndAsk("sent"); if (ctl.current.kill) ctl.current.kill(); } }, "End it"), " ",
        h("button", { className: "btn btn-outline-secondary btn-sm slaveshell-end-no", disabled: endAsk === "sent",
          onClick: function () { setEndAsk(null); } }, "Cancel")) : null,
      ask && !props.sessionId ? h(ReasonField) : null,
      ask ? h("button", { className: "btn btn-primary slaveshell-start",
        onClick: function () { if (ctl.current.start) ctl.current.start(); } }, ask) : null,
      h("div", { ref: box, className: "slaveshell-terminal", style: empty ? { display: "none" } : null }));
  }

  // The page's address, followed whichever way it changes. The route's element is made once, and Buildbot's router
  // does not see every change: a link of another page or script that changes the address by history.pushState
  // (as a client-side router's links do) fires neither popstate nor hashchange. Each change of address (typed,
  // followed, pushed, back and forward, or the same address again) is a visit: a number that changes, for a
  // terminal's key, so that the address reached shows a fresh terminal (its old socket closed) as loading it
  // did, never the previous session's screen. The address a terminal shows once open (`showAddress`) is no visit.
  // Where the browser has the Navigation API (Chromium, and the others since 2025-2026) its currententrychange
  // tells every change, pushState's included; elsewhere the router's location (its own navigations), popstate
  // (Chromium and Firefox fire it even to the same address) and a hashchange to another address than the last
  // visit's (not the one that brought the page here, which comes after it) do.
  var showingAddress = false;
  function showAddress(here) {
    if (window.location.hash === here) return;
    showingAddress = true;
    try { window.history.replaceState(window.history.state, "", here); } finally { showingAddress = false; }
  }
  function navigationApi() {
    var nav = window.navigation;
    return nav && typeof nav.addEventListener === "function" ? nav : null;
  }
  // The router's location when the page is in Buildbot's router (its key changes at each of its navigations), else
  // null. Whether it is stays the same for a component's life: the hook is called always or never.
  var routerHooks = window.ReactRouterDOM && typeof ReactRouterDOM.useLocation === "function" &&
    typeof ReactRouterDOM.useInRouterContext === "function" ? ReactRouterDOM : null;
  function useRouterLocation() {
    if (!routerHooks || !routerHooks.useInRouterContext()) return null;
    return routerHooks.useLocation();
  }
  function useAddress() {
    var st = React.useState(0);
    var routed = useRouterLocation();
    React.useEffect(function () {
      var popped = false, seen = window.location.hash;
      function visit() { seen = window.location.hash; st[1](function (n) { return n + 1; }); }
      var nav = navigationApi();
      if (nav) {
        var changed = function () { if (!showingAddress) visit(); };
        nav.addEventListener("currententrychange", changed);
        return function () { nav.removeEventListener("currententrychange", changed); };
      }
      function popstate() { popped = true; visit(); }
      function hashchange() { if (!popped && window.location.hash !== seen) visit(); popped = false; }
      window.addEventListener("popstate", popstate);
      window.addEventListener("hashchange", hashchange);
      return function () {
        window.removeEventListener("popstate", popstate);
        window.removeEventListener("hashchange", hashchange);
      };
    }, []);
    // With the Navigation API the router's navigations are visits already (its pushState): its key would only
    // count one twice in the key, which changes once all the same.
    return { hash: window.location.hash, visit: st[0] + ":" + (routed && !navigationApi() ? routed.key : "") };
  }
  function useHash() { return useAddress().hash; }

  function fromAddress(text) {
    try { return decodeURIComponent(text); } catch (e) { return text; } // a malformed %-escape: as it is
  }

  // A terminal's address, new (#/slaveshell/terminal/<worker>) or a session's (#/slaveshell/session/<id>/<mode>),
  // or null for another address.
  function terminalAddress(hash) {
    var match = /^#\/slaveshell\/terminal\/([^/?]+)/.exec(hash);
    if (match) return { worker: fromAddress(match[1]) };
    match = /^#\/slaveshell\/session\/([^/?]+)\/(attach|watch)/.exec(hash);
    if (match) return { sessionId: fromAddress(match[1]), mode: match[2] };
    return null;
  }

  // Both terminal routes: whichever terminal address the page is at now (a pushState may have gone from one form
  // to the other without the router), a fresh view at each visit. At another address that the router has not
  // followed, the terminal is left (its socket closed) and the router is told to go there.
  function TerminalRoute() {
    var address = useAddress();
    var at = terminalAddress(address.hash);
    var navigate = routerHooks && routerHooks.useInRouterContext() ? routerHooks.useNavigate() : null;
    React.useEffect(function () {
      if (!at && navigate && /^#\//.test(window.location.hash)) navigate(window.location.hash.slice(1), { replace: true });
    }, [at === null, address.visit]);
    if (!at) return null;
    if (at.worker !== undefined) return h(TerminalView, { worker: at.worker, key: "w:" + at.worker + ":" + address.visit });
    return h(TerminalView, { sessionId: at.sessionId, mode: at.mode,
      key: "s:" + at.sessionId + "/" + at.mode + ":" + address.visit });
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
    ws.onclose = function () { if (!over) onFail(closedWhy()); over = true; };
    return function () { over = true; ws.close(); };
  }

  // Rows of the audit index (lists.py's "history" answer): each with its replay button, its worker (to its view
  // here and to Buildbot's page) and, for a session in a build, the build (to Buildbot's page).
  // On a multi-master site, also the master that recorded each session (its name in the site; Buildbot's when it is
  // not on the router now), as `slaveshell history` does.
  function HistoryTable(props) {
    var site = props.rows.some(function (r) { return r.site_master; });
    return h("div", { className: "slaveshell-scroll" }, h("table", { className: "table table-sm slaveshell-history" },
      h("thead", null, h("tr", null, ["Session", "Worker"].concat(site ? ["Master"] : [], ["Build", "Operator",
        "Command", "Reason", "Started", "Ended", "Outcome", "Hidden input"]).map(function (t) {
        return h("th", { key: t }, t); }))),
      h("tbody", null, props.rows.map(function (r) {
        // The replay button first: in view however narrow the window (the other columns wrap, then scroll).
        return h("tr", { key: r.id, "data-session": r.id },
          h("td", { className: "slaveshell-session" }, printable(r.id), h("br"), h("button", {
            className: "btn btn-secondary btn-sm slaveshell-replay",
            onClick: function () { go("#/slaveshell/replay/" + encodeURIComponent(r.id)); } }, "Replay")),
          h("td", { className: "slaveshell-worker" }, h(WorkerName, { name: r.worker, workerid: r.workerid })),
          site ? h("td", { className: "slaveshell-master" }, printable(r.site_master || "(away)")) : null,
          h("td", null, h(BuildCell, { row: r })),
          h("td", null, printable(r.operator)),
          h("td", { className: "slaveshell-command" }, commandLabel(r)),
          h("td", { className: "slaveshell-reason-cell" }, printable(r.reason || "")),
          h("td", null, when(r.started)), h("td", null, when(r.ended)), h("td", { className: "slaveshell-outcome" }, outcome(r)),
          h("td", null, r.hidden_spans ? r.hidden_spans + (r.hidden_flag ? " (flagged)" : "") : ""));
      }))));
  }

  function HistoryPage() {
    var st = React.useState({ rows: null, error: null, mayReplay: true });
    var state = st[0], setState = st[1];
    var filters = React.useRef({ worker: "", user: "", reason: "" });
    var blocked = blockedNotice();
    var ask = React.useCallback(function () {
      if (blockedNotice()) return undefined;
      return questions(function (send) {
        send({ type: "history", worker: filters.current.worker, user: filters.current.user,
               reason: filters.current.reason, limit: 200 });
      }, function (m) {
        if (m.type === "history") setState(function (old) {
          return Object.assign({}, old, { rows: m.sessions, error: null, mayReplay: m.may_replay !== false });
        });
      }, function (why) {
        setState(function (old) { return old.rows && why.indexOf("closed") >= 0 ? old : Object.assign({}, old, { error: why }); });
      });
    }, []);
    React.useEffect(function () { setTitle("History"); return ask(); }, [ask]);
    function field(name, label) {
      return h("input", { className: "form-control form-control-sm slaveshell-filter-" + name, placeholder: label,
        style: { display: "inline-block", width: "14em", maxWidth: "100%", marginRight: "0.5em" },
        onChange: function (e) { filters.current[name] = e.target.value; } });
    }
    var body;
    if (blocked) body = blocked;
    else if (state.error) body = h("div", { className: "alert alert-danger slaveshell-refused" }, "History: " + state.error);
    else if (!state.rows) body = h("p", null, "Loading the audit index...");
    else if (!state.rows.length) body = h("p", { className: "slaveshell-no-history" }, state.mayReplay
      ? "No session matches (the history lists the sessions on workers where you have the replay right)."
      : "No history to show: the master's policy does not give you the replay right on any worker (you may " +
        "watch live sessions; the history and replays need the replay right).");
    else body = h(HistoryTable, { rows: state.rows });
    return h("div", { className: "slaveshell-page" },
      h("h4", null, "Shell sessions: history"),
      blocked ? null : h("div", { style: { marginBottom: "0.5em" } }, field("worker", "worker"), field("user", "operator (web:name)"),
        field("reason", "reason contains"),
        h("button", { className: "btn btn-primary btn-sm slaveshell-filter",
          onClick: function () { setState(Object.assign({}, state, { rows: null })); ask(); } }, "Filter")),
      body);
  }


  // The Fleet page (#/slaveshell/fleet): the workers this web user may act on with their facts (filtered by name,
  // grouped by a fact), a command or a script run on the chosen ones (slaveshell run's options: --where, --batch,
  // --timeout, --reason) over a socket of its own (master_side/www/fleet_page.py), each worker's progress live, then
  // the gathered answer as `slaveshell run` prints it, with a link to each session's replay. Everything the master
  // sends that a worker controls is text (React escapes it; `printable` makes controls visible): never HTML.
  var FACT_COLUMNS = 6; // facts shown as columns beside a worker (the others: the group-by choice and the view)
  var FLEET_SELECT_MOST = 64; // fleet_page.MAX_PATTERNS: names sent as --workers patterns
  function globEscape(name) { return name.replace(/[[*?]/g, function (c) { return "[" + c + "]"; }); }
  function ageText(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    if (seconds < 60) return Math.round(seconds) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h";
    var d = Math.floor(seconds / 86400);
    return d + (d === 1 ? " day" : " days");
  }
  function replayHref(session) { return "#/slaveshell/replay/" + encodeURIComponent(session); }

  // The run's -e NAME=VALUE lines (one a line; empty lines skipped), checked as `slaveshell run` checks -e (a
  // NAME=VALUE with a name) and as the master checks a request's variables (the name's form, their number): an
  // object, or {error} with the refusal's text. The master checks them again.
  var ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/, ENV_MOST = 128; // slaveshell.vocabulary.checks.MAX_ENV
  function parseEnv(text) {
    // No prototype: a variable named __proto__ is a name like any other.
    var env = Object.create(null), count = 0, lines = text.split("\n");
    for (var i = 0; i < lines.length; i++) {
      var line = lines[i].replace(/\r$/, "");
      if (!line.trim()) continue;
      var at = line.indexOf("=");
      if (at <= 0) return { error: "-e " + line + ": expected NAME=VALUE" };
      var name = line.slice(0, at);
      if (!ENV_NAME.test(name)) return { error: "-e " + line + ": bad environment variable name " + JSON.stringify(name) };
      if (!Object.prototype.hasOwnProperty.call(env, name)) count += 1;
      env[name] = line.slice(at + 1);
    }
    if (count > ENV_MOST) return { error: "at most " + ENV_MOST + " environment variables" };
    return { env: env, count: count };
  }
  function workerState(w) {
    return !w.connected ? "not connected" : !w.opted_in ? "not opted in" : "connected";
  }

  // A fleet run on a socket of its own: onEvent(message) for each of run_started, progress, run_end, error; the
  // returned object's stop() sends the Stop (Ctrl-C), close() leaves (what runs is ended).
  function startRun(request, onEvent) {
    var ws = new WebSocket(socketUrl()), over = false;
    window.slaveshellFleetSocket = ws; // for tests: drop it as a lost network would
    ws.onopen = function () { ws.send(JSON.stringify(Object.assign({ type: "run" }, request))); };
    ws.onmessage = function (ev) {
      if (typeof ev.data !== "string") return;
      var m = JSON.parse(ev.data);
      if (m.type === "run_end" || m.type === "error") over = true;
      onEvent(m);
      if (m.type === "run_end") ws.close();
    };
    ws.onclose = function () { if (!over) { over = true; onEvent({ type: "error", message: closedWhy() }); } };
    return {
      stop: function () { if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "stop" })); },
      close: function () { over = true; ws.close(); },
    };
  }

  function FleetRunView(props) {
    var run = props.run, rows = run.rows, order = run.order;
    var now = Date.now();
    var live = order.map(function (name) {
      var r = rows[name] || { phase: "waiting" };
      var o = r.outcome;
      var elapsed = o ? o.duration : r.phase === "running" || r.phase === "ending"
        ? r.elapsed + (now - r.at) / 1000 : null;
      var state = o ? o.state : r.phase;
      return h("tr", { key: name, "data-worker": name, "data-state": state, className: "slaveshell-run-row" },
        h("td", null, h("a", { href: workerView(name), className: "slaveshell-worker-link" }, printable(name))),
        h("td", { className: "slaveshell-run-state slaveshell-state-" + state.replace(/ /g, "-") }, printable(state)),
        h("td", null, elapsed === null || elapsed === undefined ? "" : elapsed.toFixed(elapsed < 10 ? 2 : 1) + " s"),
        h("td", null, o && o.exit_status !== null && o.exit_status !== undefined ? String(o.exit_status) : ""),
        h("td", { className: "slaveshell-last-line" }, !o && !r.last_line && r.note
          ? h("span", { className: "slaveshell-run-note" }, printable(r.note))
          : printable(o && o.reason && !r.last_line ? o.reason : r.last_line || "")),
        h("td", null, (o && o.session) || r.session ? h("a", { className: "slaveshell-transcript",
          href: replayHref((o && o.session) || r.session) }, "transcript") : null));
    });
    var end = run.end, result = null;
    if (end) {
      var sessions = {};
      order.forEach(function (n) { var r = rows[n]; if (r && r.outcome && r.outcome.session) sessions[n] = r.outcome.session; });
      result = h("div", { className: "slaveshell-run-result" },
        end.groups.map(function (g) {
          var out = run.outputs[g.digest] || { lines: ["[output not received]"] };
          return h("div", { key: g.digest, className: "slaveshell-run-group", "data-workers": g.workers.join(" ") },
            h("div", { className: "slaveshell-group-header" }, h("strong", { className: "slaveshell-group-nodes" },
              printable(g.header)),
              h("span", { className: "slaveshell-group-links" }, " transcripts: ",
                g.workers.map(function (n, i) {
                  var link = sessions[n] ? h("a", { className: "slaveshell-group-transcript", href: replayHref(sessions[n]),
                    title: printable("The transcript of " + n + "'s session") }, printable(n)) : printable(n);
                  return h(React.Fragment, { key: n }, i ? ", " : "", link);
                }))),
            h("pre", { className: "slaveshell-group-output" },
              out.size === 0 ? "[no output]" : out.lines.map(printable).join("\n")),
            out.cut ? h("div", { className: "text-muted slaveshell-cut" }, "[output cut: " + out.kept + " of " + out.size +
              " bytes shown; the transcripts hold all]") : null);
        }),
        end.exits.map(function (e) {
          return h("div", { key: "x" + e.status, className: "slaveshell-run-exit" },
            "exit status " + e.status + ": " + printable(e.workers));
        }),
        end.not_ran.map(function (n) {
          return h("div", { key: "n" + n.state, className: "slaveshell-run-notran", "data-state": n.state },
            printable(n.state + ": " + n.workers),
            n.reasons.map(function (r, i) { return h("div", { key: i, className: "slaveshell-notran-reason" }, printable(r)); }));
        }),
        h("div", { className: "slaveshell-run-summary " + (end.exit_status === 0 ? "text-success" : "text-danger") },
          printable(end.summary)));
    }
    var running = !end && !run.error;
    var pending = order.some(function (n) { var r = rows[n]; return r && r.outcome && r.outcome.state === "pending"; });
    return h("div", { className: "slaveshell-run", "data-run": run.id || "", "data-over": end || run.error ? "1" : "" },
      h("h5", null, run.id ? "Run " + printable(run.id) : "Starting the run...", " ",
        end ? h("small", { className: "text-muted" }, end.state === "interrupted" ? "(stopped) " : "(ended) ") : null,
        running ? h("button", { className: "btn btn-outline-danger btn-sm slaveshell-stop",
          disabled: run.stopping, onClick: props.onStop }, run.stopping ? "Stopping..." : "Stop") : null,
        run.id ? h("a", { className: "btn btn-outline-secondary btn-sm slaveshell-run-history", style: { marginLeft: "0.5em" },
          href: "#/slaveshell/history" }, "History") : null,
        pending && run.id && !run.cancelled ? h("button", { className: "btn btn-outline-warning btn-sm slaveshell-cancel-pending",
          style: { marginLeft: "0.5em" }, onClick: props.onCancel }, "Cancel what is pending") : null),
      run.cancelled ? h("div", { className: "alert alert-info slaveshell-cancelled" }, printable(run.cancelled)) : null,
      run.error ? h("div", { className: "alert alert-danger slaveshell-run-error" }, "Refused: " + printable(run.error)) : null,
      run.id ? h("p", { className: "text-muted" }, printable(run.command), run.targets
        ? " on " + run.targets + " worker" + (run.targets === 1 ? "" : "s") + ", at most " + run.batch + " at once"
        : ": no worker to run on") : null,
      order.length ? h("div", { className: "slaveshell-scroll" }, h("table", { className: "table table-sm slaveshell-run-table" },
        h("thead", null, h("tr", null, ["Worker", "State", "Time", "Exit", "Last line", ""].map(function (t) {
          return h("th", { key: t }, t); }))),
        h("tbody", null, live))) : null,
      result);
  }

  function FleetPage() {
    var st = React.useState({ fleet: null, error: null, login: false, refreshing: false, note: null });
    var state = st[0], setState = st[1];
    function update(change) { setState(function (old) { return Object.assign({}, old, change); }); }
    var form = React.useState({ filter: "", group: "", where: "", command: "", script: "", useScript: false,
      reason: "", batch: "", timeout: "", offline: false, until: "", pause: false, env: "", cwd: "" });
    var f = form[0], setForm = form[1];
    function field(name) { return function (e) { var v = e.target.value; setForm(function (o) { var n = Object.assign({}, o); n[name] = v; return n; }); }; }
    var sel = React.useState({}), selected = sel[0], setSelected = sel[1];
    var runState = React.useState(null), run = runState[0], setRun = runState[1];
    var tick = React.useState(0), setTick = tick[1];
    var current = React.useRef(null);
    var blocked = blockedNotice();

    var ask = React.useCallback(function (refresh) {
      if (blockedNotice()) return undefined;
      if (refresh) update({ refreshing: true, note: null });
      var cancel = questions(function (send) { send({ type: "fleet", refresh: !!refresh }); }, function (m) {
        if (m.type !== "fleet") return;
        cancel();
        update({ fleet: m, error: null, refreshing: false,
                 note: refresh ? "Facts taken again on " + m.workers.length + " worker" + (m.workers.length === 1 ? "" : "s") + "." : null });
      }, function (why, m) {
        setState(function (old) {
          if (old.fleet && !refresh && why.indexOf("closed") >= 0) return old;
          return Object.assign({}, old, refresh && old.fleet ? { refreshing: false, note: "Refresh refused: " + why }
            : { error: why, login: !!(m && m.login), refreshing: false });
        });
      });
      return cancel;
    }, []);
    React.useEffect(function () { setTitle("Fleet"); return ask(false); }, [ask]);
    React.useEffect(function () {
      if (!run || run.end || run.error) return undefined;
      var t = setInterval(function () { setTick(function (n) { return n + 1; }); }, 1000);
      return function () { clearInterval(t); };
    }, [run && run.end, run && run.error, run === null]);
    React.useEffect(function () { return function () { if (current.current) current.current.close(); }; }, []);

    function changeRun(fn) { setRun(function (old) { return old ? fn(Object.assign({}, old)) : old; }); }
    function onEvent(m) {
      changeRun(function (r) {
        if (m.type === "run_started") {
          r.id = m.run; r.batch = m.batch; r.targets = m.targets.length;
          r.order = m.targets.concat(m.listed.map(function (o) { return o.worker; }));
          r.rows = Object.assign({}, r.rows);
          m.listed.forEach(function (o) { r.rows[o.worker] = { phase: "done", outcome: o, last_line: "" }; });
        } else if (m.type === "progress") {
          r.rows = Object.assign({}, r.rows);
          var old = r.rows[m.worker] || {};
          // `note`: why the part waits before it starts (a four-eyes worker's request waiting for a moderator's
          // approval, in the words of the master that holds the worker), until it starts.
          r.rows[m.worker] = { phase: m.phase, session: m.session || old.session, elapsed: m.elapsed, at: Date.now(),
            last_line: m.last_line || old.last_line || "", outcome: m.outcome || old.outcome,
            note: typeof m.note === "string" ? m.note : m.phase === old.phase ? old.note : "" };
          if (r.order.indexOf(m.worker) < 0) r.order = r.order.concat([m.worker]);
          if (m.outcome && m.outcome.lines && m.outcome.digest) {
            r.outputs = Object.assign({}, r.outputs);
            r.outputs[m.outcome.digest] = { lines: m.outcome.lines, cut: m.outcome.cut, size: m.outcome.output_bytes,
              kept: m.outcome.kept_bytes };
          }
        } else if (m.type === "run_end") {
          r.end = m;
        } else if (m.type === "error") {
          r.error = m.message;
        }
        return r;
      });
      if (m.type === "run_end") ask(false); // the workers' states may have changed
    }
    function start(workers) {
      if (current.current) current.current.close();
      var request = { workers: workers.map(globEscape) };
      var where = f.where.trim();
      if (where) request.where = where.split(/\s+/);
      if (f.useScript) request.script = f.script; else request.command = f.command;
      if (f.reason.trim()) request.reason = f.reason.trim();
      if (f.batch.trim()) request.batch = f.batch.trim();
      var env = parseEnv(f.env);
      if (env.error) { setRun({ order: [], rows: {}, outputs: {}, error: env.error }); return; }
      if (env.count) request.env = env.env;
      if (f.cwd.trim()) request.cwd = f.cwd;
      if (f.timeout.trim()) {
        var t = Number(f.timeout.trim());
        if (!isFinite(t)) { setRun({ order: [], rows: {}, outputs: {}, error: "the timeout is a number of seconds" }); return; }
        request.timeout = t;
      }
      if (f.offline) {
        request.include_offline = true;
        if (f.pause) request.pause = true;
        if (f.until.trim()) {
          var days = Number(f.until.trim());
          if (!isFinite(days) || days <= 0) { setRun({ order: [], rows: {}, outputs: {}, error: "pending for a number of days" }); return; }
          request.until = days * 86400;
        }
      }
      var label = (f.useScript ? "(script, " + f.script.length + " characters)" : f.command) +
        (request.cwd ? " (in " + request.cwd + ")" : "") +
        (env.count ? " (with " + Object.keys(env.env).join(", ") + ")" : "");
      setRun({ id: null, order: [], rows: {}, outputs: {}, end: null, error: null, command: label, batch: 0 });
      current.current = startRun(request, onEvent);
    }

    var heading = h("h4", null, "Fleet ",
      h("button", { className: "btn btn-outline-secondary btn-sm slaveshell-refresh-facts", disabled: state.refreshing || !!blocked,
        onClick: function () { ask(true); } }, state.refreshing ? "Taking facts..." : "Refresh facts"), " ",
      h("a", { className: "btn btn-outline-secondary btn-sm", href: "#/slaveshell" }, "Shells"), " ",
      h("a", { className: "btn btn-outline-secondary btn-sm", href: "#/slaveshell/history" }, "History"));
    if (blocked) return h("div", { className: "slaveshell-page" }, heading, blocked);
    if (state.error) {
      return h("div", { className: "slaveshell-page" }, heading,
        h("div", { className: "alert alert-danger slaveshell-refused" }, "Fleet: " + state.error, " ",
          state.login ? h(LoginAgain) : null));
    }
    if (!state.fleet) return h("div", { className: "slaveshell-page" }, heading, "Loading the fleet...");
    var fleet = state.fleet, workers = fleet.workers;
    var multi = workers.some(function (w) { return w.site; }); // the Master column on a multi-master site only
    var columns = fleet.facts.filter(function (n) { return ["memory", "disk_free", "cpus"].indexOf(n) < 0; })
      .slice(0, FACT_COLUMNS);
    var needle = f.filter.trim().toLowerCase();
    var shown = workers.filter(function (w) { return !needle || w.name.toLowerCase().indexOf(needle) >= 0; });
    var groups = [];
    if (f.group) {
      var by = {};
      shown.forEach(function (w) {
        var v = w.facts && w.facts[f.group] !== undefined ? w.facts[f.group] : "(missing)";
        (by[v] = by[v] || []).push(w);
      });
      groups = Object.keys(by).sort(function (a, b) { return by[b].length - by[a].length || (a < b ? -1 : 1); })
        .map(function (v) { return { value: v, workers: by[v] }; });
    } else {
      groups = [{ value: null, workers: shown }];
    }
    var chosen = workers.filter(function (w) { return selected[w.name]; }).map(function (w) { return w.name; });
    function toggle(names, on) {
      setSelected(function (old) { var n = Object.assign({}, old); names.forEach(function (x) { if (on) n[x] = true; else delete n[x]; }); return n; });
    }
    var rows = [];
    groups.forEach(function (g) {
      if (g.value !== null) {
        var names = g.workers.map(function (w) { return w.name; });
        var all = names.every(function (n) { return selected[n]; });
        rows.push(h("tr", { key: "g:" + g.value, className: "slaveshell-fact-group table-light" },
          h("td", null, h("input", { type: "checkbox", checked: all, "aria-label": "select the group",
            onChange: function (e) { toggle(names, e.target.checked); } })),
          h("td", { colSpan: columns.length + (multi ? 5 : 4) }, h("b", null, printable(f.group) + " = " + printable(g.value)),
            " (" + g.workers.length + " worker" + (g.workers.length === 1 ? "" : "s") + ")")));
      }
      g.workers.forEach(function (w) {
        rows.push(h("tr", { key: w.name, "data-worker": w.name, className: "slaveshell-fleet-worker" },
          h("td", null, h("input", { type: "checkbox", className: "slaveshell-select", checked: !!selected[w.name],
            "aria-label": printable("select " + w.name), onChange: function (e) { toggle([w.name], e.target.checked); } })),
          h("td", null, h(WorkerName, { name: w.name, workerid: w.workerid })),
          h("td", null, workerState(w)),
          multi ? h("td", { className: "slaveshell-master" }, masterText(w)) : null,
          h("td", { className: w.may_run ? "slaveshell-may-run" : "text-muted slaveshell-no-run" },
            w.may_run ? "yes" : printable(w.refusal || "no")),
          columns.map(function (c) {
            return h("td", { key: c, className: "slaveshell-fact" }, w.facts && w.facts[c] !== undefined ? printable(w.facts[c]) : "");
          }),
          h("td", { className: w.stale ? "text-warning slaveshell-facts-age" : "slaveshell-facts-age" }, ageText(w.age))));
      });
    });
    var mayRunSome = workers.some(function (w) { return w.may_run; });
    var target = chosen.length ? chosen.length + " selected worker" + (chosen.length === 1 ? "" : "s")
      : "every worker listed";
    var tooMany = chosen.length > FLEET_SELECT_MOST;
    var empty = f.useScript ? !f.script.trim() : !f.command.trim();
    var running = run && !run.end && !run.error;
    function input(name, label, width, extra) {
      return h("input", Object.assign({ className: "form-control form-control-sm slaveshell-run-" + name, placeholder: label,
        "aria-label": label, value: f[name], onChange: field(name),
        style: { display: "inline-block", width: width, maxWidth: "100%", marginRight: "0.5em" } }, extra || {}));
    }
    return h("div", { className: "slaveshell-page slaveshell-fleet-page" }, heading,
      state.note ? h("div", { className: "alert alert-info slaveshell-facts-note" }, printable(state.note)) : null,
      mayRunSome ? null : h("div", { className: "alert alert-warning slaveshell-no-run-right" },
        "The master's policy gives you no run right on these workers: a run here is refused on each of them" +
        (workers.length ? " (" + printable(workers[0].refusal || "") + ")" : "") + "."),
      h("div", { style: { marginBottom: "0.5em" } },
        input("filter", "filter by name", "14em", { className: "form-control form-control-sm slaveshell-filter-name" }),
        h("select", { className: "form-select form-select-sm slaveshell-group-by", value: f.group, onChange: field("group"),
          "aria-label": "group by a fact", style: { display: "inline-block", width: "14em" } },
          h("option", { value: "" }, "no grouping"),
          fleet.facts.map(function (n) { return h("option", { key: n, value: n }, "group by " + printable(n)); }))),
      workers.length === 0 ? h("p", null, "No worker you may act on.") :
      h("div", { className: "slaveshell-scroll" }, h("table", { className: "table table-sm slaveshell-fleet-facts" },
        h("thead", null, h("tr", null, h("th", null, h("input", { type: "checkbox", "aria-label": "select all shown",
            checked: shown.length > 0 && shown.every(function (w) { return selected[w.name]; }),
            onChange: function (e) { toggle(shown.map(function (w) { return w.name; }), e.target.checked); } })),
          h("th", null, "Worker"), h("th", null, "State"), multi ? h("th", null, "Master") : null, h("th", null, "May run"),
          columns.map(function (c) { return h("th", { key: c }, printable(c)); }), h("th", null, "Facts taken"))),
        h("tbody", null, rows))),
      h("div", { className: "slaveshell-run-form card card-body", style: { marginBottom: "1em" } },
        h("div", { className: "slaveshell-form-row" }, h("b", { style: { marginRight: "0.5em" } }, "Run on " + target),
          chosen.length ? h("button", { className: "btn btn-link btn-sm slaveshell-clear", onClick: function () { setSelected({}); } },
            "clear") : null,
          " ", input("where", "--where FACT=VALUE ...", "18em")),
        h("div", { className: "slaveshell-form-row" },
          h("label", { style: { marginRight: "1em", whiteSpace: "nowrap" } }, h("input", { type: "checkbox", className: "slaveshell-use-script",
            checked: f.useScript, onChange: function (e) { var v = e.target.checked; setForm(function (o) { return Object.assign({}, o, { useScript: v }); }); } }),
            " script"),
          f.useScript
            ? h("textarea", { className: "form-control form-control-sm slaveshell-run-script", rows: 5, value: f.script,
                onChange: field("script"), placeholder: "#!/bin/sh\n...", "aria-label": "script",
                style: { fontFamily: "monospace" } })
            : input("command", "command (run by the worker's shell)", "40em",
                { onKeyDown: function (e) { if (e.key === "Enter" && !empty && !running && !tooMany) start(chosen); } })),
        h("div", { className: "slaveshell-form-row" },
          h("textarea", { className: "form-control form-control-sm slaveshell-run-env", rows: 3, value: f.env,
            onChange: field("env"), placeholder: "-e NAME=VALUE (one a line)", "aria-label": "environment variables",
            style: { fontFamily: "monospace", flex: "1 1 18em", maxWidth: "30em", marginRight: "0.5em" } }),
          input("cwd", "-C DIR (working directory)", "18em")),
        h("div", { className: "slaveshell-form-row" },
          input("reason", "reason (ticket, incident)", "18em", { maxLength: 500 }),
          input("batch", "batch (N or P%)", "9em", { maxLength: 16 }),
          input("timeout", "timeout (s)", "8em"),
          h("button", { className: "btn btn-primary btn-sm slaveshell-run-start", disabled: empty || running || tooMany,
            onClick: function () { start(chosen); } }, "Run")),
        h("div", { className: "slaveshell-form-row" },
          h("label", { style: { marginRight: "1em", whiteSpace: "nowrap" } }, h("input", { type: "checkbox",
            className: "slaveshell-run-offline", checked: f.offline,
            onChange: function (e) { var v = e.target.checked; setForm(function (o) { return Object.assign({}, o, { offline: v }); }); } }),
            " include offline workers (a pending run each, when it attaches)"),
          f.offline ? h("span", { style: { marginRight: "0.3em" } }, "for") : null,
          f.offline ? input("until", "7", "5em", { "aria-label": "days pending" }) : null,
          f.offline ? h("span", { style: { marginRight: "1em" } }, "days") : null,
          f.offline ? h("label", { style: { whiteSpace: "nowrap" } }, h("input", { type: "checkbox", className: "slaveshell-run-pause",
            checked: f.pause, onChange: function (e) { var v = e.target.checked; setForm(function (o) { return Object.assign({}, o, { pause: v }); }); } }),
            " pause it in Buildbot until its run succeeds") : null),
        tooMany ? h("div", { className: "text-danger" }, "Select at most " + FLEET_SELECT_MOST + " workers, or none and a --where.") : null),
      run ? h(FleetRunView, { run: run, onCancel: function () {
        var cancel = questions(function (send) { send({ type: "cancel_run", run: run.id }); }, function (m) {
          if (m.type !== "cancel_run") return;
          cancel();
          changeRun(function (r) { r.cancelled = m.message; return r; });
        }, function (why) { changeRun(function (r) { r.cancelled = "Cancel refused: " + why; return r; }); });
      }, onStop: function () {
        if (current.current) current.current.stop();
        changeRun(function (r) { r.stopping = true; return r; });
      } }) : null);
  }

  // A worker's facts in its view (#/slaveshell/worker/<name>), as the Fleet page has them.
  function WorkerFacts(props) {
    var w = props.worker;
    if (!w) return null;
    if (!w.facts) return h("p", { className: "text-muted slaveshell-worker-facts" }, "No facts yet: ",
      h("a", { href: "#/slaveshell/fleet" }, "Refresh facts on the Fleet page"), ".");
    return h("div", { className: "slaveshell-worker-facts" },
      h("h5", null, "Facts ", h("small", { className: w.stale ? "text-warning" : "text-muted" }, "taken " + ageText(w.age) + " ago"), " ",
        h("a", { className: "btn btn-outline-secondary btn-sm", href: "#/slaveshell/fleet" }, "Fleet")),
      h("table", { className: "table table-sm", style: { width: "auto" } }, h("tbody", null,
        Object.keys(w.facts).map(function (k) {
          return h("tr", { key: k }, h("th", null, printable(k)), h("td", { className: "slaveshell-fact" }, printable(w.facts[k])));
        }))));
  }

  // A worker's recent fleet runs in its view (fleet_page.py's "worker_runs" answer: the runs this web user may
  // see, each with the worker's outcome there), with links to each session's replay and to the Fleet page. The
  // commands, reasons and operators are text the index holds as typed: shown through `printable`.
  function runLabel(r) {
    if (r.kind === "facts") return "(facts probe)";
    if (r.command !== null && r.command !== undefined) return printable(r.command);
    return "(script" + (r.script_sha256 ? ", sha256 " + String(r.script_sha256).slice(0, 12) + "..." : "") + ")";
  }
  function WorkerRuns(props) {
    var runs = props.runs;
    var heading = h("h5", { style: { marginTop: "1em" } }, "Recent fleet runs ",
      h("a", { className: "btn btn-outline-secondary btn-sm slaveshell-fleet-link", href: "#/slaveshell/fleet" }, "Fleet"));
    if (runs === null) return h("div", null, heading, h("p", null, "Loading the fleet runs..."));
    if (runs.error) return h("div", null, heading, h("p", { className: "text-danger slaveshell-runs-refused" },
      "Fleet runs: " + runs.error));
    if (!runs.length) return h("div", null, heading, h("p", { className: "slaveshell-no-runs" },
      "No fleet run on this worker that you may see (your own, or runs on workers where you have the replay right)."));
    return h("div", null, heading, h("div", { className: "slaveshell-scroll" },
      h("table", { className: "table table-sm slaveshell-worker-runs" },
        h("thead", null, h("tr", null, ["Run", "Started", "Operator", "Command", "Reason", "Outcome", "Exit", "Time", ""]
          .map(function (t, i) { return h("th", { key: i }, t); }))),
        h("tbody", null, runs.map(function (r) {
          var why = r.why && r.state !== "ok" && r.state !== "failed" ? ": " + r.why : "";
          return h("tr", { key: r.id, "data-run": r.id, "data-state": r.state },
            h("td", { className: "slaveshell-run-id" }, printable(r.id)),
            h("td", null, when(r.started)),
            h("td", { className: "slaveshell-run-operator" }, printable(r.operator)),
            h("td", { className: "slaveshell-command" }, runLabel(r)),
            h("td", { className: "slaveshell-run-reason" }, printable(r.reason || "")),
            h("td", { className: "slaveshell-run-outcome slaveshell-state-" + String(r.state).replace(/[^a-z]+/g, "-") },
              printable(r.state + why)),
            h("td", null, r.exit_status === null || r.exit_status === undefined ? "" : String(r.exit_status)),
            h("td", null, typeof r.duration === "number" ? r.duration.toFixed(r.duration < 10 ? 2 : 1) + " s" : ""),
            h("td", null, r.session ? h("a", { className: "slaveshell-run-transcript", href: replayHref(r.session) },
              "transcript") : null, r.session ? " " : null,
              h("a", { className: "slaveshell-run-fleet", href: "#/slaveshell/fleet",
                title: "The Fleet page: run again, pending runs" }, "Fleet")));
        })))));
  }

  // One worker (#/slaveshell/worker/<name>, linked from its name in these pages and, through the worker's
  // `access_uri`, from Buildbot's worker page: docs/web.md): an Open shell button (the fleet's click-to-open flow),
  // its live sessions, its recent history and a link to Buildbot's page for it. A worker the web user may not act
  // on is not listed by the master, and the page says so, with no button.
  // Copy in the browser (master_side/www/copy_ws.py): one file per socket, to or from the worker, through the
  // master's `slaveshell cp` path. The page speaks the transfer's events (slaveshell/vocabulary/copying.py) within
  // its credit window: an upload sends at most COPY_WINDOW unacknowledged, a download acknowledges what it has
  // stored. A download is held whole (a Blob) until the browser saves it.
  var COPY_WINDOW = 12 * 256 * 1024, COPY_ENTRY_COST = 1024, COPY_CHUNK = 65536;
  var MAX_WEB_COPY = 1024 * 1024 * 1024; // copy_ws.MAX_WEB_DOWNLOAD and MAX_WEB_UPLOAD: the master checks them too

  // The name the browser saves a worker's file under: its last part, escaped as the page shows worker text, no
  // character a file system or a download dialog takes for something else, no leading dot.
  function saveName(path) {
    var name = printable(String(path).split("/").pop()).replace(/[\\/:*?"<>|]/g, "_").replace(/^\.+/, "_");
    return name.slice(0, 200) || "download";
  }

  function saveBlob(blob, name) {
    var url = URL.createObjectURL(blob), a = document.createElement("a");
    a.href = url;
    a.download = name;
    a.style.display = "none";
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 60000);
  }

  function megabytes(n) { return (n / 1048576).toFixed(n < 10485760 ? 1 : 0) + " MiB"; }

  // One transfer: `request` is the copy message, `file` the File of an upload. `on.progress(done, total)`,
  // `on.done(text)`, `on.failed(text)`, `on.waiting(text)` (the master's line while it waits to start: a moderator's
  // approval, printable already). Returns the cancel function.
  function copyFile(request, file, on) {
    var ws = new WebSocket(socketUrl());
    ws.binaryType = "arraybuffer";
    var over = false, started = false, total = 0, done = 0, parts = [], entry = null, sha = "";
    var credit = COPY_WINDOW, offset = 0, reading = false, ended = false;
    function send(m) { if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(m)); }
    function end(ok, text) {
      if (over) return;
      over = true;
      parts = [];
      (ok ? on.done : on.failed)(text);
    }
    function pump() {
      if (over || reading || ended) return;
      if (offset >= file.size) {
        if (credit < COPY_ENTRY_COST) return;
        credit -= COPY_ENTRY_COST;
        send({ type: "done_file", sha256: "" }); // the master hashes what it relays
        send({ type: "finish" });
        ended = true;
        return;
      }
      var n = Math.min(COPY_CHUNK, file.size - offset);
      if (credit < n) return;
      reading = true;
      file.slice(offset, offset + n).arrayBuffer().then(function (buf) {
        reading = false;
        if (over || ws.readyState !== WebSocket.OPEN) return;
        credit -= buf.byteLength;
        offset += buf.byteLength;
        ws.send(buf);
        on.progress(offset, file.size);
        pump();
      }, function (e) {
        reading = false;
        send({ type: "abort", reason: "the page could not read the file" });
        end(false, "cannot read " + printable(file.name) + ": " + e.message);
      });
    }
    ws.onopen = function () { send(request); };
    ws.onmessage = function (ev) {
      if (typeof ev.data !== "string") {
        var n = ev.data.byteLength;
        if (!entry || over) return;
        parts.push(ev.data);
        done += n;
        if (n) send({ type: "ack", n: n });
        on.progress(done, total);
        return;
      }
      var m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      if (m.type === "copying") {
        started = true;
        if (request.direction === "up") {
          total = file.size;
          credit -= COPY_ENTRY_COST;
          send({ type: "entry", kind: "file", path: request.name, mode: 420, size: file.size,
                 mtime: Math.max(0, Math.floor((file.lastModified || 0) / 1000)) });
          pump();
        } else {
          total = m.total;
        }
        on.progress(0, total);
      } else if (m.type === "entry") {
        if (entry || m.kind !== "file" || !(m.size <= MAX_WEB_COPY)) {
          send({ type: "result", ok: false, reason: "the page takes one file of at most 1024 MiB" });
          end(false, "the worker sent more than one file of at most 1024 MiB");
          return;
        }
        entry = m;
        total = m.size;
        send({ type: "ack", n: COPY_ENTRY_COST });
      } else if (m.type === "done_file") {
        sha = String(m.sha256);
        send({ type: "ack", n: COPY_ENTRY_COST });
      } else if (m.type === "finish") {
        var blob = new Blob(parts, { type: "application/octet-stream" }), name = saveName(entry ? entry.path : "");
        send({ type: "result", ok: true, reason: "" });
        saveBlob(blob, name);
        end(true, "downloaded " + printable(entry ? entry.path : "") + " (" + String(blob.size) + " bytes, sha256 " +
          printable(sha) + "), saved as " + name);
      } else if (m.type === "ack") {
        credit += m.n;
        pump();
      } else if (m.type === "result") {
        if (m.ok) end(true, "uploaded " + printable(request.name) + " (" + String(total) + " bytes) to " +
          printable(request.dest));
        else end(false, "failed: " + printable(m.reason));
      } else if (m.type === "error") {
        end(false, "refused: " + printable(m.message));
      } else if (m.type === "waiting" && !started && on.waiting) {
        on.waiting(printable(m.text)); // a four-eyes worker: it waits for a moderator's approval
      }
    };
    ws.onclose = function () { end(false, started ? "the connection to the master was lost" : closedWhy()); };
    return function cancel() {
      if (over) return;
      if (!started) { // not started yet (waiting for an approval): closing the socket withdraws the request
        ws.close();
        end(false, "cancelled in the page before it started");
        return;
      }
      send({ type: "cancel", reason: "cancelled in the page" });
    };
  }

  // A worker's files: download a path, upload a file (chosen, or dropped on the panel) into a directory.
  function FilesPanel(props) {
    var name = props.worker;
    var st = React.useState({ phase: "idle", text: "", done: 0, total: 0 }), state = st[0], setState = st[1];
    var paths = React.useState({ down: "", dest: "." }), fields = paths[0], setFields = paths[1];
    var cancel = React.useRef(null), chosen = React.useRef(null), mounted = React.useRef(true);
    React.useEffect(function () { mounted.current = true; return function () {
      mounted.current = false; if (cancel.current) cancel.current(); }; }, []);
    function run(request, file) {
      if (state.phase === "running") return;
      if (reasonForNew) request.reason = reasonForNew;
      setState({ phase: "running", text: "starting...", done: 0, total: file ? file.size : 0 });
      cancel.current = copyFile(request, file, {
        progress: function (done, total) {
          if (mounted.current) setState({ phase: "running", text: megabytes(done) + " of " + megabytes(total),
                                          done: done, total: total });
        },
        waiting: function (text) {
          if (mounted.current) setState({ phase: "running", text: text, done: 0, total: file ? file.size : 0 });
        },
        done: function (text) { cancel.current = null; if (mounted.current) setState({ phase: "done", text: text }); },
        failed: function (text) { cancel.current = null; if (mounted.current) setState({ phase: "failed", text: text }); },
      });
    }
    function download() {
      if (!fields.down) return;
      run({ type: "copy", direction: "down", worker: name, path: fields.down }, null);
    }
    function upload(file) {
      if (!file) return;
      if (file.size > MAX_WEB_COPY) {
        setState({ phase: "failed", text: "refused: " + printable(file.name) + " is larger than the 1024 MiB a " +
          "page uploads (slaveshell cp has no such bound)" });
        return;
      }
      run({ type: "copy", direction: "up", worker: name, dest: fields.dest || ".", name: file.name, size: file.size },
        file);
    }
    var running = state.phase === "running";
    function field(key, label, cls) {
      return h("input", { className: "form-control form-control-sm " + cls, type: "text", value: fields[key],
        placeholder: label, "aria-label": label, maxLength: 900,
        style: { display: "inline-block", width: "24em", maxWidth: "100%", marginRight: "0.5em" },
        onChange: function (e) { var v = e.target.value; setFields(function (o) {
          var n = Object.assign({}, o); n[key] = v; return n; }); } });
    }
    return h("div", { className: "slaveshell-files", "data-phase": state.phase,
        onDragOver: function (e) { e.preventDefault(); },
        onDrop: function (e) {
          e.preventDefault();
          var files = e.dataTransfer && e.dataTransfer.files;
          if (files && files.length === 1) upload(files[0]);
          else setState({ phase: "failed", text: "drop one file at a time" });
        } },
      h("h5", null, "Files"),
      h("div", { className: "slaveshell-files-row" },
        field("down", "worker path to download (absolute, or in its base directory)", "slaveshell-download-path"),
        h("button", { className: "btn btn-outline-primary btn-sm slaveshell-download", disabled: running,
          onClick: download }, "Download")),
      h("div", { className: "slaveshell-files-row" },
        h("input", { className: "slaveshell-upload-file", type: "file", "aria-label": "file to upload",
          style: { marginRight: "0.5em" }, onChange: function (e) { chosen.current = e.target.files[0] || null; } }),
        field("dest", "worker directory to upload into", "slaveshell-upload-dest"),
        h("button", { className: "btn btn-outline-primary btn-sm slaveshell-upload", disabled: running,
          onClick: function () { upload(chosen.current); } }, "Upload")),
      h("div", { className: "slaveshell-drop text-muted" }, "or drop a file here to upload it into that directory"),
      state.phase === "idle" ? null : h("div", { className: "slaveshell-copy" },
        running ? h("progress", { className: "slaveshell-progress", max: Math.max(state.total, 1),
          value: state.done }) : null,
        h("span", { className: "slaveshell-copy-status " + (state.phase === "failed" ? "text-danger" : ""),
          "data-status": state.phase }, state.text),
        running ? h("button", { className: "btn btn-outline-danger btn-sm slaveshell-cancel",
          onClick: function () { if (cancel.current) cancel.current(); } }, "Cancel") : null));
  }

  function WorkerPage() {
    useHash();
    var match = /\/slaveshell\/worker\/([^/?]+)/.exec(window.location.hash), name = "";
    name = match ? fromAddress(match[1]) : "";
    return h(WorkerView, { name: name, key: "w:" + name });
  }

  function WorkerView(props) {
    var name = props.name;
    var st = React.useState({ lists: null, error: null, login: false });
    var state = st[0], setState = st[1];
    var hs = React.useState({ rows: null, mayReplay: true });
    var past = hs[0], setPast = hs[1];
    var fs = React.useState(null), facts = fs[0], setFacts = fs[1];
    var rs = React.useState(null), runs = rs[0], setRuns = rs[1];
    React.useEffect(function () {
      setTitle(printable("Worker " + name));
      if (blockedNotice()) return undefined;
      // One socket at a time (a user without a right has one): the lists every 5 s, the history with the first.
      var cancel = null, timer = null, live = true, first = true;
      function load() {
        var got = {}, withHistory = first;
        first = false;
        cancel = questions(function (send) {
          // An offline worker of the site too (linked from the list with its offline workers).
          send({ type: "workers", include_offline: true });
          send({ type: "sessions" });
          if (withHistory) send({ type: "history", worker: name, limit: 20 });
        }, function (m) {
          if (m.type === "history") got.history = m;
          else if (m.type === "workers" || m.type === "sessions") got[m.type] = m[m.type];
          if (!got.workers || !got.sessions || (withHistory && !got.history)) return;
          cancel();
          if (!live) return;
          setState({ lists: got, error: null, login: false });
          if (got.history) setPast({ rows: got.history.sessions, mayReplay: got.history.may_replay !== false });
          // Its facts and its recent fleet runs, once, when the master lists it (a user with a right: a second
          // socket is within their bound).
          if (withHistory && got.workers.some(function (x) { return x.name === name; })) {
            var answered = {};
            var closeFacts = questions(function (send) {
              send({ type: "fleet" });
              send({ type: "worker_runs", worker: name });
            }, function (m) {
              if (m.type !== "fleet" && m.type !== "worker_runs") return;
              answered[m.type] = true;
              if (answered.fleet && answered.worker_runs) closeFacts();
              if (!live) return;
              if (m.type === "fleet") setFacts(m.workers.filter(function (x) { return x.name === name; })[0] || null);
              else setRuns(m.runs);
            }, function (why) { if (live) setRuns(function (old) { return old || { error: why }; }); });
          }
          timer = setTimeout(load, 5000);
        }, function (why, m) { if (live) setState({ lists: null, error: why, login: !!(m && m.login) }); });
      }
      load();
      return function () { live = false; clearTimeout(timer); if (cancel) cancel(); };
    }, [name]);
    var blocked = blockedNotice();
    var heading = h("h4", null, "Worker ", h("span", { className: "slaveshell-worker-name" }, printable(name)), " ",
      h("button", { className: "btn btn-outline-secondary btn-sm", onClick: function () { go("#/slaveshell"); } },
        "All workers"));
    if (blocked) return h("div", { className: "slaveshell-page" }, heading, blocked);
    if (state.error) {
      return h("div", { className: "slaveshell-page" }, heading,
        h("div", { className: "alert alert-danger slaveshell-refused" }, "Shells: " + state.error, " ",
          state.login ? h(LoginAgain) : null));
    }
    if (!state.lists) return h("div", { className: "slaveshell-page" }, heading, "Loading the worker...");
    var w = state.lists.workers.filter(function (x) { return x.name === name; })[0];
    if (!w) {
      return h("div", { className: "slaveshell-page" }, heading,
        h("p", { className: "slaveshell-no-worker" }, printable("No worker " + name + " that you may act on " +
          "(Buildbot's authz gives you no shell action on it, or the master has no such worker).")));
    }
    var ready = w.allowed && w.connected && w.shell;
    var why = !w.allowed ? "the master's policy gives you no shell right on it" : !w.connected ? "it is not connected"
      : !w.shell ? "it runs without slaveshell" : "";
    var sessions = state.lists.sessions.filter(function (s) { return s.worker === name; });
    var history;
    if (!past.rows) history = h("p", null, "Loading the audit index...");
    else if (!past.rows.length) history = h("p", { className: "slaveshell-no-history" }, past.mayReplay
      ? "No session on this worker in the history you may read." : "No history to show: the master's policy does " +
        "not give you the replay right on any worker.");
    else history = h(HistoryTable, { rows: past.rows });
    return h("div", { className: "slaveshell-page slaveshell-worker-view", "data-worker": name }, heading,
      h("p", { className: "slaveshell-worker-state" },
        (w.connected ? "Connected" : "Not connected") + (masterText(w) ? " (" + masterText(w) + ")" : "") + ", " +
          String(w.sessions) + " live session" + (w.sessions === 1 ? "" : "s") + ". ",
        isId(w.workerid) ? h("a", { href: "#/workers/" + w.workerid, className: "slaveshell-bb-worker" },
          "Buildbot's page for this worker") : null),
      ready ? h(ReasonField) : null,
      ready
        ? h("button", { className: "btn btn-primary slaveshell-open",
            onClick: function () { goClicked("new:" + name, "#/slaveshell/terminal/" + encodeURIComponent(name)); } },
            "Open shell")
        : h("p", { className: "text-muted slaveshell-why" }, "No shell here: " + why + "."),
      w.copy && w.connected && w.shell ? h(FilesPanel, { worker: name }) : null,
      h(WorkerFacts, { worker: facts }),
      h(WorkerRuns, { runs: runs }),
      h("h5", { style: { marginTop: "1em" } }, "Shell sessions"),
      sessions.length === 0 ? h("p", { className: "slaveshell-no-sessions" }, "No live session you may watch.") :
      h("div", { className: "slaveshell-scroll" }, h("table", { className: "table table-sm slaveshell-sessions" },
        h("thead", null, h("tr", null, h("th", null, "Session"), h("th", null, "Worker"), h("th", null, "Operator"),
          h("th", null, "Command"), h("th", null, "Reason"), h("th", null, "State"), h("th", null, "Viewers"),
          h("th", null, ""))),
        h("tbody", null, h(SessionRows, { sessions: sessions })))),
      h("h5", null, "Recent sessions ", h("a", { className: "btn btn-outline-secondary btn-sm slaveshell-history-link",
        href: "#/slaveshell/history" }, "All history")),
      history);
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
  // only its marker in the transcript. The player fits the window (its controls in view).
  function ReplayPage() {
    useHash();
    var match = /\/slaveshell\/replay\/([^/?]+)/.exec(window.location.hash);
    var id = match ? fromAddress(match[1]) : "";
    var box = React.useRef(null);
    var st = React.useState("loading");
    var status = st[0], setStatus = st[1];
    var rowState = React.useState(null);
    var row = rowState[0], setRow = rowState[1];
    var blocked = blockedNotice();
    useFillWindow(box, 12);
    React.useEffect(function () {
      if (blockedNotice()) return undefined;
      // The two answers come in either order: the socket closes once both are in (closing it at the
      // transcript's end lost a row that came after it, and the page never named the session's worker).
      var parts = [], player = null, disposed = false, rowIn = false, castIn = false;
      var cancel = questions(function (send) {
        send({ type: "history", session: id, limit: 1 });
        send({ type: "transcript", id: id, offset: 0 });
      }, function (m, data, send) {
        if (m.type === "history") {
          rowIn = true;
          if (m.sessions.length) setRow(m.sessions[0]);
          if (castIn) cancel();
          return;
        }
        if (m.type !== "transcript") return;
        if (data) parts.push(data);
        if (!m.eof) { send({ type: "transcript", id: id, offset: m.offset }); return; }
        castIn = true;
        if (rowIn) cancel();
        var text = new TextDecoder().decode(concat(parts));
        loadPlayer().then(function () {
          if (disposed) return;
          player = AsciinemaPlayer.create({ data: text }, box.current, { fit: "both", preload: true });
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
    var title = printable(row ? "Replay: " + row.operator + " on " + row.worker + ", " + when(row.started) : "Replay of session " + id);
    React.useEffect(function () { setTitle(printable(row ? "Replay: " + row.worker + ", session " + id : "Replay of session " + id)); },
      [row, id]);
    return h("div", { className: "slaveshell-page" },
      h("h4", null, title, row ? h("small", { className: "text-muted slaveshell-session-id" }, " session " + printable(id)) : null, " ",
        h("button", { className: "btn btn-outline-secondary btn-sm", onClick: function () { go("#/slaveshell/history"); } },
          "History")),
      blocked,
      h("div", { className: status.indexOf("refused") === 0 ? "alert alert-danger slaveshell-status" : "slaveshell-status",
                 "data-status": status }, status === "ready" ? (row ? commandLabel(row) + ": " + outcome(row) : "") : status),
      h("div", { ref: box, className: "slaveshell-replay", style: blocked ? { display: "none" } : null }));
  }

  // A build held by HoldForShell (its step links here): what is held, a terminal in the build and a release
  // button. After the release the page says so (the build then finishes with its original result), the focus goes
  // back to the terminal (or to the notice when no shell is open).
  function BuildPage() {
    // The build this page was opened for (its terminal then names its session in the address).
    var build = React.useState(function () {
      var match = /\/slaveshell\/build\/(\d+)/.exec(window.location.hash);
      return match ? parseInt(match[1], 10) : 0;
    })[0];
    var st = React.useState({ hold: undefined, error: null, released: null, shell: false, gone: false });
    var state = st[0], setState = st[1];
    var notice = React.useRef(null), page = React.useRef(null);
    var blocked = blockedNotice();
    function update(change) { setState(function (old) { return Object.assign({}, old, change); }); }
    React.useEffect(function () {
      setTitle("Build " + build);
      if (blockedNotice()) return undefined;
      return questions(function (send) { send({ type: "hold", build: build }); },
        function (m) { if (m.type === "hold") update({ hold: m.hold }); },
        function (why) { update({ error: why }); });
    }, [build]);
    React.useEffect(function () {
      if (state.hold) setTitle(printable("Build " + state.hold.builder + " #" + state.hold.number + " on " + state.hold.worker));
    }, [state.hold]);
    // Released elsewhere (`slaveshell release`, ~r, another page), timed out or stopped: asked again every 10 s
    // while the page shows a hold.
    var watching = !!state.hold && !state.released && !state.gone;
    React.useEffect(function () {
      if (!watching) return undefined;
      var cancel = null;
      var timer = setInterval(function () {
        if (cancel) cancel();
        cancel = questions(function (send) { send({ type: "hold", build: build }); },
          function (m) { if (m.type === "hold" && m.hold === null) update({ gone: true }); }, function () { /* next time */ });
      }, 10000);
      return function () { clearInterval(timer); if (cancel) cancel(); };
    }, [watching, build]);
    React.useEffect(function () {
      if (!state.released && !state.gone) return;
      var input = page.current && page.current.querySelector(".xterm-helper-textarea");
      if (input && window.slaveshellTerminal) window.slaveshellTerminal.focus();
      else if (notice.current) notice.current.focus();
    }, [state.released, state.gone]);
    function release() {
      questions(function (send) { send({ type: "release", build: build }); },
        function (m) { if (m.type === "release") update({ released: printable(m.message) }); },
        function (why) { if (why.indexOf("closed") < 0) update({ released: "refused: " + why }); });
    }
    var hold = state.hold;
    if (blocked) return h("div", { className: "slaveshell-page" }, blocked);
    if (state.error) return h("div", { className: "slaveshell-page" },
      h("div", { className: "alert alert-danger slaveshell-refused" }, "Build " + build + ": " + state.error));
    if (hold === undefined) return h("div", { className: "slaveshell-page" }, "Loading build " + build + "...");
    if (hold === null && !state.released) return h("div", { className: "slaveshell-page" },
      h("p", { className: "slaveshell-not-held" }, "Build " + build + " is not held for a shell (or not on a worker you may act on)."));
    var released = (state.released && state.released.indexOf("refused") !== 0) || state.gone;
    return h("div", { className: "slaveshell-page", ref: page },
      hold ? h("p", { className: "slaveshell-hold" }, printable("Build " + hold.builder + " #" + hold.number + " (id " + hold.build +
        ") " + (released ? "was held" : "is held") + " on worker " + hold.worker + ", in " + hold.workdir + ". "),
        released ? (state.gone ? "It is not held any more (released, timed out or stopped): it finishes with its original result; "
          : "It is released: it finishes with its original result; ") + "a shell open in it goes on until you end it." : null,
        released ? null : h("button", { className: "btn btn-warning btn-sm slaveshell-release", onClick: release },
          "Release the build")) : null,
      state.released ? h("div", { className: "alert alert-info slaveshell-released", ref: notice, tabIndex: -1 },
        state.released) : null,
      hold && !state.shell && !released ? h(ReasonField) : null,
      hold && !state.shell && !released ? h("button", { className: "btn btn-primary btn-sm slaveshell-open",
        onClick: function () { update({ shell: true }); } }, "Open a shell in this build") : null,
      hold && state.shell ? h(TerminalView, { worker: hold.worker, build: hold.build, armed: true,
        key: "b:" + hold.build }) : null);
  }

  BuildbotPluginSupport.buildbotSetupPlugin(function (reg) {
    reg.registerMenuGroup({
      name: "slaveshell", caption: "Shells", icon: h("span", { className: "slaveshell-icon" }, ">_"),
      order: 15, route: "/slaveshell", parentName: null,
    });
    reg.registerMenuGroup({ name: "slaveshell-workers", parentName: "slaveshell", caption: "Workers", order: 1,
      route: "/slaveshell" });
    reg.registerMenuGroup({ name: "slaveshell-fleet", parentName: "slaveshell", caption: "Fleet", order: 2,
      route: "/slaveshell/fleet" });
    reg.registerMenuGroup({ name: "slaveshell-history", parentName: "slaveshell", caption: "History", order: 3,
      route: "/slaveshell/history" });
    reg.registerRoute({ route: "slaveshell", group: "slaveshell", element: function () { return h(Fleet); } });
    reg.registerRoute({ route: "slaveshell/fleet", group: "slaveshell", element: function () { return h(FleetPage); } });
    reg.registerRoute({
      route: "slaveshell/terminal/:worker", group: "slaveshell",
      element: function () { return h(TerminalRoute); },
    });
    reg.registerRoute({
      route: "slaveshell/build/:build", group: "slaveshell",
      element: function () { return h(BuildPage); },
    });
    reg.registerRoute({
      route: "slaveshell/worker/:worker", group: "slaveshell",
      element: function () { return h(WorkerPage); },
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
      element: function () { return h(TerminalRoute); },
    });
  });
})();
