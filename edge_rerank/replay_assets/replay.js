"use strict";
// edge-rerank session replay: plays back simulator traces (simulator/replay.py) of two A/B arms side by side.
// No dependencies, no network. State at a step = every event with t <= the step's time, folded per arm.
(function () {
  const D = JSON.parse(document.getElementById("replay-data").textContent);
  const V = D.viewport_items || 4;
  const CATS = D.category_names || [];
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const fmtS = (ms) => (ms / 1000).toFixed(1) + " s";
  const n = (k, word) => k + " " + word + (k === 1 ? "" : "s");
  const REASONS = {click_return: "back from a detail page", skip_run: "a run of long skips",
    page_arrival: "a page arrived", page_boundary: "near the page boundary", scroll_idle: "the list rested",
    manual: "manual"};

  const state = {sel: 0, visible: [], steps: [], step: 0, playing: false, timer: null};
  document.documentElement.style.setProperty("--viewport-items", String(V));
  $("early-screens").textContent = String(D.left_early_screens || 3);
  $("run-info").textContent = D.sessions.length + " simulated sessions, " + D.arms.join(" vs ") +
    " on the same users, intents and random draws" + (D.title ? " · " + D.title : "");

  // ---- the arms' columns ----
  const tpl = $("arm-template");
  const cols = D.arms.slice(0, 2).map((name, j) => {
    const node = tpl.content.firstElementChild.cloneNode(true);
    node.dataset.arm = String(j);
    node.id = "arm-" + j;
    const title = node.querySelector(".arm-title");
    title.id = "arm-title-" + j;
    title.append(el("span", "tag", j === 0 ? "A" : "B"), el("span", "", name));
    node.querySelector(".phone").setAttribute("aria-labelledby", title.id);
    node.querySelector(".list").setAttribute("aria-label", name + ": items on the phone");
    node.querySelector(".next-list").setAttribute("aria-label", name + ": items not seen yet");
    $("phones").append(node);
    return node;
  });

  function itemName(row, id) {
    if (!row) return "item " + id;
    const cat = CATS[row[0]] !== undefined ? CATS[row[0]] : "category " + row[0];
    return cat + " · " + (D.domain === "feed" ? "source " : "brand ") + row[1];
  }
  function price(p) { return D.domain === "feed" ? "len " + (p + 1) : "¥".repeat(p + 1); }

  // ---- sessions and filters ----
  function sessionLabel(s) {
    const o = s.arms.map((a) => a.outcome);
    const part = (x) => n(x.clicks, "click") + ", " + n(x.orders, "order") + ", " + n(x.screens, "screen");
    return "#" + s.index + " " + s.query + " — A: " + part(o[0]) + " | B: " + part(o[1]);
  }
  function applyFilters(keep) {
    const fd = $("f-differs").checked, fo = $("f-orders").checked, fe = $("f-early").checked;
    state.visible = D.sessions.map((s, i) => i).filter((i) => {
      const s = D.sessions[i];
      return (!fd || s.outcome_differs) && (!fo || s.has_orders) && (!fe || s.left_early);
    });
    const sel = $("session");
    sel.textContent = "";
    for (const i of state.visible) {
      const opt = el("option", "", sessionLabel(D.sessions[i]));
      opt.value = String(i);
      sel.append(opt);
    }
    $("match-count").textContent = state.visible.length + " of " + D.sessions.length + " sessions";
    if (!state.visible.length) { sel.disabled = true; return; }
    sel.disabled = false;
    const next = keep && state.visible.includes(state.sel) ? state.sel : state.visible[0];
    sel.value = String(next);
    if (next !== state.sel || !keep) loadSession(next);
  }

  // ---- timeline: one step per distinct event time across both arms ----
  function loadSession(i) {
    pause();
    state.sel = i;
    const s = D.sessions[i];
    const times = new Set([0]);
    s.arms.forEach((a) => a.events.forEach((e) => times.add(e.t)));
    state.steps = Array.from(times).sort((x, y) => x - y);
    // the appeal bars are scaled over the session's items
    const us = Object.values(s.items).map((r) => r[5]);
    state.uMin = Math.min(...us); state.uMax = Math.max(...us);
    const scrub = $("scrub");
    scrub.max = String(state.steps.length - 1);
    cols.forEach((c, j) => {
      c.querySelector(".statusbar .q").textContent = "“" + s.query + "”";
      const o = s.arms[j].outcome;
      c.querySelector(".arm-stats").textContent = "whole session: " + n(o.clicks, "click") + ", " +
        n(o.orders, "order") + ", " + n(o.screens, "screen") + ", " + (o.exhausted ? "reached the end" : o.abandoned ? "left without a click" : "then left") +
        (o.reranks_applied ? " · " + n(o.reranks_applied, "rerank") + " applied, " + n(o.moved, "move") : "") +
        (s.arms[j].truncated ? " · trace truncated" : "");
    });
    if (history.replaceState) history.replaceState(null, "", "#session=" + encodeURIComponent(s.id));
    go(0);
  }

  function armState(arm, T) {
    const st = {ids: [], start: 0, screen: -1, clicked: {}, ordered: {}, detail: {}, dwell: {}, looked: {},
      lastRerank: null, reranks: {}, now: [], left: null, page: 0};
    const examined = new Set(arm.outcome.examined || []);
    for (const e of arm.events) {
      if (e.t > T) break;
      if (e.t === T) st.now.push(e);
      switch (e.k) {
        case "page": st.ids = st.ids.concat(e.added); st.page = e.page + 1; break;
        case "reveal": st.start = e.start; st.screen = Math.floor(e.start / V); break;
        case "click": st.clicked[e.pos] = true; break;
        case "order": st.ordered[e.pos] = true; break;
        case "detail": st.detail[e.pos] = e.ms; break;
        case "exposure":
          e.ids.forEach((id, k) => {
            const p = e.start + k;
            st.dwell[p] = e.dwell;
            if (examined.has(p)) st.looked[p] = true;
          });
          break;
        case "rerank": st.reranks[e.r] = e; break;
        case "outcome": {
          const req = st.reranks[e.r] || {};
          const info = {ev: e, req: req, t: e.t, moves: {}};
          if (e.order) {
            st.ids = st.ids.slice(0, e.start).concat(e.order);
            for (const m of e.moves) info.moves[m[0]] = {from: m[1], to: m[2]};
          }
          if (e.status === "applied" || e.status === "late") {
            info.prevReq = st.lastRerank ? st.lastRerank.req : null;
            st.lastRerank = info;
          }
          break;
        }
        case "leave": st.left = e.why; break;
      }
    }
    return st;
  }

  function scoreOf(req, id) {
    if (!req || !req.scores || !req.window) return null;
    const k = req.window.indexOf(id);
    return k >= 0 ? req.scores[k] : null;
  }

  function describe(e, s) {
    const nm = (id) => itemName(s.items[String(id)], id);
    switch (e.k) {
      case "page": return "page " + (e.page + 1) + " arrived (" + e.added.length + " items)";
      case "reveal": return "screen " + (Math.floor(e.start / V) + 1) + ": positions " + (e.start + 1) + "–" +
        (e.start + e.ids.length);
      case "exposure": return "screen exposed for " + fmtS(e.dwell) + " (positions " + (e.start + 1) + "–" +
        (e.start + e.ids.length) + ")";
      case "click": return "clicked #" + (e.pos + 1) + " " + nm(e.id);
      case "order": return "ordered from #" + (e.pos + 1) + " " + nm(e.id);
      case "detail": return "back from the detail page after " + fmtS(e.ms);
      case "trigger": return "trigger: " + (REASONS[e.reason] || e.reason);
      case "rerank": return "rerank " + (e.r + 1) + " requested (" + e.reason + ", " + e.window.length +
        " unseen items" + (e.latency_ms !== undefined && e.latency_ms !== null ? ", " + e.latency_ms.toFixed(1) +
        " ms on the device" : "") + ")";
      case "outcome": {
        let txt = "rerank " + (e.r + 1) + " " + e.status;
        if (e.order) txt += ": " + e.moved + " moved";
        if (e.why) txt += " (" + e.why + ")";
        return txt;
      }
      case "leave": return "left the results (" + e.why + ")";
    }
    return e.k;
  }

  function badge(cls, text, label) {
    const b = el("span", "badge " + cls, text);
    if (label) b.title = label;
    return b;
  }

  function renderArm(j, col, s, T) {
    const arm = s.arms[j];
    const st = armState(arm, T);
    const list = col.querySelector(".list");
    const moves = st.lastRerank ? st.lastRerank.moves : {};
    const req = st.lastRerank ? st.lastRerank.req : null;
    const prevReq = st.lastRerank ? st.lastRerank.prevReq : null;
    const fresh = st.lastRerank && st.lastRerank.t === T;
    list.textContent = "";
    const span = (st.screen >= 0 ? st.start : 0);
    st.ids.forEach((id, p) => {
      const row = s.items[String(id)];
      const li = el("li", "item");
      const vis = st.screen >= 0 && p >= span && p < span + V;
      li.dataset.id = String(id);
      li.dataset.pos = String(p);
      li.dataset.visible = vis ? "true" : "false";
      if (!vis) li.setAttribute("aria-hidden", "true");
      const pos = el("span", "pos", "#" + (p + 1));
      li.append(pos);
      li.append(el("span", "name", itemName(row, id)));
      const ap = el("span", "appeal");
      const u = row ? (row[5] - state.uMin) / Math.max(state.uMax - state.uMin, 1e-9) : 0;
      const bar = el("i");
      bar.style.width = Math.round(100 * u) + "%";
      ap.append(bar);
      ap.title = "appeal (hidden intent): " + (row ? row[5].toFixed(2) : "?");
      pos.append(ap);
      const meta = el("span", "meta", row ? price(row[2]) + " · " + row[4].toFixed(1) + " km · " : "");
      if (row) meta.append(el("span", "lbl", "cloud "), row[3].toFixed(2));
      li.append(meta);
      const bs = el("span", "badges");
      const m = moves[id];
      if (m && m.from !== m.to && p >= (st.lastRerank.ev.start || 0)) {
        li.classList.add("moved");
        const d = m.from - m.to;
        bs.append(badge(d > 0 ? "up" : "down", (d > 0 ? "↑" : "↓") + Math.abs(d), "moved from #" + (m.from + 1)));
      }
      if (st.clicked[p]) { li.classList.add("clicked"); bs.append(badge("click", "clicked")); }
      if (st.ordered[p]) bs.append(badge("order", "ordered"));
      if (st.detail[p] !== undefined) bs.append(badge("", "detail " + fmtS(st.detail[p])));
      if (st.looked[p] && !st.clicked[p]) bs.append(badge("looked", "looked", "the user examined it (ground truth)"));
      if (st.dwell[p] !== undefined) bs.append(badge("", "seen " + fmtS(st.dwell[p])));
      li.append(bs);
      const sc = scoreOf(req, id);
      li.setAttribute("aria-label", "position " + (p + 1) + ": " + itemName(row, id) +
        (m && m.from !== m.to ? ", moved from position " + (m.from + 1) : "") +
        (st.clicked[p] ? ", clicked" : "") + (st.ordered[p] ? ", ordered" : "") +
        (sc !== null ? ", score " + sc.toFixed(2) : ""));
      list.append(li);
    });
    list.style.setProperty("--start", String(span));  // the CSS scrolls by --start items (any item height)
    col.querySelector(".statusbar .where").textContent = (st.screen >= 0 ? "screen " + (st.screen + 1) : "loading") +
      " · page " + Math.max(st.page, 1) + " · " + fmtS(T);
    col.querySelector(".phone").classList.toggle("left", st.left !== null);
    col.dataset.lastRerankStatus = st.lastRerank ? st.lastRerank.ev.status : "";
    col.dataset.lastRerank = st.lastRerank ? String(st.lastRerank.ev.r) : "";
    col.dataset.lastRerankFresh = fresh ? "true" : "false";
    // banner: a rerank's outcome at this step
    const banner = col.querySelector(".banner");
    const outs = st.now.filter((e) => e.k === "outcome");
    banner.textContent = outs.length ? outs.map((e) => describe(e, s)).join("; ") :
      (st.lastRerank ? "last rerank " + (st.lastRerank.ev.r + 1) + " at " + fmtS(st.lastRerank.t) : "cloud order");
    banner.classList.toggle("show", outs.length > 0);
    // up next: the unseen items in the order they would come
    const nl = col.querySelector(".next-list");
    nl.textContent = "";
    const from = st.screen >= 0 ? span + V : 0;
    st.ids.slice(from, from + 8).forEach((id, k) => {
      const p = from + k;
      const row = s.items[String(id)];
      const li = el("li");
      li.dataset.id = String(id);
      li.append(el("span", "", "#" + (p + 1)), el("span", "nm", itemName(row, id)));
      const mv = moves[id];
      const sc = scoreOf(req, id);
      let txt = "";
      if (mv && mv.from !== mv.to) {
        li.classList.add("moved");
        txt = (mv.from > mv.to ? "↑" : "↓") + Math.abs(mv.from - mv.to);
      }
      const prev = scoreOf(prevReq, id);
      if (sc !== null) txt += " " + sc.toFixed(2);
      if (sc !== null && prev !== null) txt += " (" + (sc - prev >= 0 ? "+" : "−") + Math.abs(sc - prev).toFixed(2) + ")";
      const mvEl = el("span", "mv" + (mv && mv.from !== mv.to ? (mv.from > mv.to ? " up" : " down") : ""), txt);
      if (sc !== null) mvEl.title = "reranker score " + sc.toFixed(2) + (prev !== null ? ", " + prev.toFixed(2) +
        " at the rerank before" : "") + (row ? "; cloud score " + row[3].toFixed(2) : "");
      li.append(mvEl);
      nl.append(li);
    });
    if (!nl.children.length) nl.append(el("li", "", st.left ? "—" : "nothing loaded yet"));
    // this step's events, in words
    const evs = col.querySelector(".arm-events");
    evs.textContent = "";
    for (const e of st.now) {
      const li = el("li", e.k === "outcome" || e.k === "rerank" ? "rerank" : "", describe(e, s));
      if (e.k === "outcome") li.classList.add("status-" + e.status);
      evs.append(li);
    }
    return st;
  }

  function render() {
    const s = D.sessions[state.sel];
    const T = state.steps[state.step];
    const sts = cols.map((c, j) => renderArm(j, c, s, T));
    $("scrub").value = String(state.step);
    $("clock").textContent = fmtS(T) + " (" + (state.step + 1) + "/" + state.steps.length + ")";
    $("scrub").setAttribute("aria-valuetext", "step " + (state.step + 1) + " of " + state.steps.length + ", " + fmtS(T));
    const now = $("now");
    now.textContent = "";
    sts.forEach((st, j) => {
      if (!st.now.length) return;
      now.append(el("p", "", D.arms[j] + ": " + st.now.map((e) => describe(e, s)).join("; ")));
    });
    if (!now.children.length) now.append(el("p", "", fmtS(T) + ": nothing happens at this moment"));
    document.body.dataset.step = String(state.step);
    document.body.dataset.session = s.id;
  }

  function go(k) {
    state.step = Math.max(0, Math.min(state.steps.length - 1, k));
    render();
  }
  function rerankSteps() {
    const s = D.sessions[state.sel];
    const ts = new Set();
    s.arms.forEach((a) => a.events.forEach((e) => { if (e.k === "outcome") ts.add(e.t); }));
    return state.steps.map((t, k) => (ts.has(t) ? k : -1)).filter((k) => k >= 0);
  }
  function nextRerank(dir) {
    const ks = rerankSteps();
    const k = dir > 0 ? ks.find((x) => x > state.step) : ks.reverse().find((x) => x < state.step);
    if (k !== undefined) go(k);
  }

  // ---- playback ----
  function tick() {
    if (!state.playing) return;
    if (state.step >= state.steps.length - 1) { pause(); return; }
    const dt = state.steps[state.step + 1] - state.steps[state.step];
    const speed = Number($("speed").value) || 4;
    state.timer = setTimeout(() => { go(state.step + 1); tick(); }, Math.max(80, Math.min(1500, dt / speed)));
  }
  function play() {
    if (state.step >= state.steps.length - 1) go(0);
    state.playing = true;
    const b = $("b-play");
    b.setAttribute("aria-pressed", "true"); b.setAttribute("aria-label", "Pause (Space)"); b.textContent = "❚❚";
    tick();
  }
  function pause() {
    state.playing = false;
    clearTimeout(state.timer);
    const b = $("b-play");
    b.setAttribute("aria-pressed", "false"); b.setAttribute("aria-label", "Play (Space)"); b.textContent = "▶";
  }
  function toggle() { if (state.playing) pause(); else play(); }
  function speed(d) {
    const s = $("speed");
    s.selectedIndex = Math.max(0, Math.min(s.options.length - 1, s.selectedIndex + d));
  }
  function stepSession(d) {
    const k = state.visible.indexOf(state.sel) + d;
    if (k >= 0 && k < state.visible.length) { $("session").value = String(state.visible[k]); loadSession(state.visible[k]); }
  }

  $("b-start").addEventListener("click", () => { pause(); go(0); });
  $("b-back").addEventListener("click", () => { pause(); go(state.step - 1); });
  $("b-step").addEventListener("click", () => { pause(); go(state.step + 1); });
  $("b-play").addEventListener("click", toggle);
  $("b-next-rerank").addEventListener("click", () => { pause(); nextRerank(1); });
  $("scrub").addEventListener("input", (e) => { pause(); go(Number(e.target.value)); });
  $("session").addEventListener("change", (e) => loadSession(Number(e.target.value)));
  for (const id of ["f-differs", "f-orders", "f-early"]) $(id).addEventListener("change", () => applyFilters(true));
  document.addEventListener("keydown", (e) => {
    const tag = (e.target && e.target.tagName) || "";
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (["INPUT", "SELECT", "TEXTAREA"].includes(tag) && e.target.type !== "checkbox") return;
    const k = e.key;
    let done = true;
    if (k === " " || k === "k" || k === "K") { if (tag === "BUTTON" && k === " ") return; toggle(); }
    else if (k === "ArrowRight" || k === "l" || k === "L") { pause(); go(state.step + 1); }
    else if (k === "ArrowLeft" || k === "j" || k === "J") { pause(); go(state.step - 1); }
    else if (k === "n") { pause(); nextRerank(1); }
    else if (k === "N") { pause(); nextRerank(-1); }
    else if (k === "Home") { pause(); go(0); }
    else if (k === "End") { pause(); go(state.steps.length - 1); }
    else if (k === "+" || k === "=") speed(1);
    else if (k === "-" || k === "_") speed(-1);
    else if (k === "]") stepSession(1);
    else if (k === "[") stepSession(-1);
    else done = false;
    if (done) e.preventDefault();
  });

  // ---- start: the session named in the URL, else the first ----
  const m = /session=([^&]+)/.exec(location.hash);
  applyFilters(false);
  if (m) {
    const i = D.sessions.findIndex((s) => s.id === decodeURIComponent(m[1]));
    if (i >= 0) { $("session").value = String(i); loadSession(i); }
  }
  window.replay = {state: state, go: go, data: D};
})();
