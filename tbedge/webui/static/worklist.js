/* The worklist: newest first, filtered, searched, paged; polls the server so new films appear by themselves. */
"use strict";
(() => {
  const words = TB.data.words || {};
  const PAGE = 50, POLL_MS = 2000;
  const state = { filter: "all", q: "", offset: 0, version: null, seen: new Set(), siteVersion: null };
  const $ = (id) => document.getElementById(id);

  function chip(cls, code) { return TB.el("span", { class: "chip " + cls, title: words[code] || code, text: code }); }

  function row(r) {
    const tr = TB.el("tr", { "data-id": r.id, "data-key": r.key, "data-status": r.status, "data-triage": r.triage || "" });
    const key = TB.el("td", { class: "key" }, TB.el("a", { href: "/film/" + r.id, class: "mono", title: r.key, text: r.short_key }));
    if (r.patient) key.append(TB.el("span", { class: "patient", text: [r.patient.name, r.patient.id].filter(Boolean).join(" · ") }));
    const score = r.tb_score === null ? "–" : r.tb_score.toFixed(1);
    const flags = TB.el("td", { class: "flags" }, ...r.qa_flags.map((f) => chip("flag", f)));
    if (r.duplicate_of) flags.append(TB.el("span", { class: "chip dup", title: "same content as " + r.duplicate_of, text: "duplicate" }));
    tr.append(
      TB.el("td", { class: "time", title: r.time || "", text: TB.when(r.time) || "–" }), key,
      TB.el("td", {}, TB.el("span", { class: "score " + TB.band(r.tb_score, r.triage), text: score })),
      TB.el("td", {}, r.triage ? TB.el("span", { class: "triage triage-" + r.triage, text: r.triage.toUpperCase() }) : r.status),
      flags, TB.el("td", {}, r.reason ? chip("rsn", r.reason) : ""));
    if (state.version !== null && !state.seen.has(r.id)) tr.classList.add("new");
    tr.addEventListener("click", (ev) => { if (ev.target.tagName !== "A") location.href = "/film/" + r.id; });
    return tr;
  }

  function render(w) {
    $("rows").replaceChildren(...w.rows.map(row));
    for (const r of w.rows) state.seen.add(r.id);
    state.version = w.version;
    $("empty").hidden = w.total > 0;
    const last = Math.min(w.offset + w.rows.length, w.total);
    $("count").textContent = w.total ? `${w.offset + 1}–${last} of ${w.total}` + (w.total !== w.all ? ` (${w.all} in all)` : "") : "";
    $("newer").disabled = w.offset === 0;
    $("older").disabled = last >= w.total;
    document.body.dataset.version = w.version;
  }

  async function refresh(force) {
    const p = new URLSearchParams({ filter: state.filter, q: state.q, offset: state.offset, limit: PAGE });
    try {
      const w = await TB.json("/api/worklist?" + p);
      $("live").classList.remove("stale");
      if (force || w.version !== state.version) render(w);
      if (w.version !== state.siteVersion) { state.siteVersion = w.version; site(); }
    } catch (e) { $("live").classList.add("stale"); }
  }

  function countsTable(c) {
    const cols = ["films", "refer", "clear", "rejected", "flagged"];
    const t = TB.el("table", { class: "counts", id: "counts-table" },
      TB.el("tr", {}, TB.el("th", { text: "" }), ...cols.map((k) => TB.el("th", { text: k }))));
    for (const p of ["today", "week"]) {
      t.append(TB.el("tr", { "data-period": p }, TB.el("td", { text: p === "week" ? "7 days" : "today" }),
        ...cols.map((k) => TB.el("td", { "data-count": k, text: c[p][k] }))));
    }
    return t;
  }

  function referral(r) {
    const box = TB.el("div", {});
    const g = TB.el("div", { class: "gauge", title: `expected ${TB.pct(r.low)}–${TB.pct(r.high)}` });
    const range = TB.el("div", { class: "range" });
    range.style.left = 100 * r.low + "%"; range.style.width = 100 * (r.high - r.low) + "%";
    g.append(range);
    if (r.referral_rate !== null && r.referral_rate !== undefined) {
      const m = TB.el("div", { class: "mark" }); m.style.left = `calc(${100 * r.referral_rate}% - 1px)`; g.append(m);
    }
    box.append(TB.el("p", {}, TB.el("strong", { id: "referral-rate", text: TB.pct(r.referral_rate) }),
      ` referred over the last ${r.films} films · expected ${TB.pct(r.low)}–${TB.pct(r.high)} · `,
      TB.el("span", { id: "referral-state", class: "state-" + r.state, text: r.state.replace("_", " ") })), g,
      TB.el("p", { class: "small", text: r.message + (r.source === "watch" ? " (tbedge watch's check)" : " (computed by the viewer)") }));
    return box;
  }

  function histogram(h, thrScore, val) {
    const svg = $("histogram"); svg.replaceChildren();
    const W = 320, H = 170, L = 28, B = 30, n = h.counts.length, bw = (W - L - 4) / n;
    // The bundle's validation films without TB, scaled to this site's film count: most films a site
    // screens have no TB, so that is the shape its histogram should have.
    const site = h.counts.reduce((a, b) => a + b, 0), vn = val ? val.not_tb.reduce((a, b) => a + b, 0) : 0;
    const ref = vn && site ? val.not_tb.map((c) => c * site / vn) : null;
    const max = Math.max(1, ...h.counts, ...(ref || []));
    h.counts.forEach((c, i) => {
      const bh = (H - B - 10) * c / max, x = L + i * bw;
      const above = thrScore !== null && h.edges[i] >= thrScore;
      const rect = TB.svg("rect", { class: "bar" + (above ? " above" : ""), x: x + 1, y: H - B - bh, width: bw - 2, height: bh, "data-count": c });
      rect.append(TB.svg("title", {})); rect.firstChild.textContent = `${h.edges[i]}–${h.edges[i + 1]}: ${c} films`;
      svg.append(rect);
      const t = TB.svg("text", { x: x, y: H - B + 11, "text-anchor": "middle" }); t.textContent = h.edges[i]; svg.append(t);
    });
    if (ref) {
      const pts = ref.flatMap((c, i) => { const y = H - B - (H - B - 10) * c / max; return [`${L + i * bw},${y}`, `${L + (i + 1) * bw},${y}`]; });
      const line = TB.svg("polyline", { class: "valref", id: "validation-outline", points: pts.join(" "), "data-counts": val.not_tb.join(",") });
      line.append(TB.svg("title", {})); line.firstChild.textContent = `validation films without TB (${vn}), scaled to ${site} films`;
      svg.append(line);
    }
    const yl = TB.svg("text", { x: L - 4, y: 12, "text-anchor": "end" }); yl.textContent = Math.round(max); svg.append(yl);
    const xl = TB.svg("text", { x: W / 2, y: H - 4, "text-anchor": "middle" }); xl.textContent = "TB score (bins widen to the right)"; svg.append(xl);
    if (thrScore !== null) {
      let i = h.edges.findIndex((e, k) => k < n && thrScore >= e && thrScore < h.edges[k + 1]);
      if (i < 0) i = n - 1;
      const x = L + (i + (thrScore - h.edges[i]) / (h.edges[i + 1] - h.edges[i])) * bw;
      svg.append(TB.svg("line", { class: "thr", id: "threshold-line", x1: x, x2: x, y1: 4, y2: H - B }));
      const tl = TB.svg("text", { x: x + 3, y: 12 }); tl.textContent = "threshold " + thrScore; svg.append(tl);
    }
  }

  function validation(v) {
    if (!v) return TB.el("p", { class: "small", text: "No validation figures for this threshold in the bundle (a site threshold, or another bundle)." });
    const t = TB.el("table", { class: "valid", id: "validation-table" },
      TB.el("tr", {}, ...["validation", "films", "TB", "sens.", "spec.", "referred"].map((h) => TB.el("th", { text: h }))));
    for (const r of v.rows) t.append(TB.el("tr", {}, TB.el("td", { text: r.set }), TB.el("td", { text: r.films }), TB.el("td", { text: r.tb }),
      TB.el("td", { text: r.sensitivity.toFixed(2) }), TB.el("td", { text: r.specificity.toFixed(2) }), TB.el("td", { text: TB.pct(r.referral_rate) })));
    return TB.el("div", {}, TB.el("h3", { text: "At this threshold on validation films" }), t,
      TB.el("p", { class: "small", text: "Out-of-site films the threshold was locked on; a site's referral rate also depends on how many of its patients have TB." }));
  }

  function report(r) {
    if (!r) return TB.el("p", { class: "small", text: "No set-threshold report: label this site's films and run tbedge set-threshold --report (docs/watch.md)." });
    const d = TB.el("div", { id: "threshold-report" }, TB.el("h3", { text: "Site threshold check (set-threshold)" }),
      TB.el("p", { text: `${r.n_tb} TB and ${r.n_not_tb} non-TB labelled films. Threshold ${r.value.toFixed(6)}: sensitivity ${r.at_new.sensitivity.toFixed(2)}, specificity ${r.at_new.specificity.toFixed(2)}; previous ${r.previous.value.toFixed(6)}: ${r.at_previous.sensitivity.toFixed(2)} / ${r.at_previous.specificity.toFixed(2)}.` }));
    if (r.has_roc) d.append(TB.el("img", { class: "roc", src: "/site/roc.png?v=" + state.siteVersion, alt: "ROC on this site's labelled films" }));
    return d;
  }

  async function site() {
    let s;
    try { s = await TB.json("/api/site"); } catch (e) { return; }
    $("counts").replaceChildren(s.counts ? countsTable(s.counts) : TB.el("p", { class: "small", text: "screen results carry no time: no day counts." }));
    $("referral").replaceChildren(referral(s.referral));
    histogram(s.histogram, s.threshold_score, s.validation_histogram);
    $("validation").replaceChildren(validation(s.validation));
    $("report").replaceChildren(report(s.report));
    $("engine").replaceChildren(s.engine ? TB.el("p", { class: "small", id: "engine-line",
      text: [s.engine.bundle && "bundle " + s.engine.bundle, s.engine.backend, s.engine.fallback].filter(Boolean).join(" · ") }) : "");
  }

  for (const b of document.querySelectorAll("[data-filter]")) {
    b.addEventListener("click", () => {
      state.filter = b.dataset.filter; state.offset = 0;
      for (const o of document.querySelectorAll("[data-filter]")) o.setAttribute("aria-pressed", String(o === b));
      refresh(true);
    });
  }
  let timer;
  $("search").addEventListener("input", (e) => { clearTimeout(timer); timer = setTimeout(() => { state.q = e.target.value; state.offset = 0; refresh(true); }, 200); });
  $("newer").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); refresh(true); });
  $("older").addEventListener("click", () => { state.offset += PAGE; refresh(true); });

  render(TB.data.worklist);
  performance.mark("tbedge-worklist");  /* the first page is on screen (docs/ui.md measures to here) */
  const day = new Date(); const iso = `${day.getFullYear()}-${String(day.getMonth() + 1).padStart(2, "0")}-${String(day.getDate()).padStart(2, "0")}`;
  $("csv-today").href = "/export/worklist.csv?day=" + iso;
  state.siteVersion = TB.data.worklist.version; site();
  setInterval(refresh, POLL_MS);
})();
