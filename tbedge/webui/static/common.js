/* tbedge ui: helpers shared by the pages (no framework, no network but this server). */
"use strict";
const TB = {
  data: JSON.parse(document.getElementById("data").textContent || "{}"),

  el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") e.textContent = v; else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  },

  svg(tag, attrs) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  },

  async json(url) {
    const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (!r.ok) throw new Error(url + ": " + r.status);
    return r.json();
  },

  /* Local date and time of an ISO time; the date only when it is not today. */
  when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (isNaN(d)) return iso;
    const t = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return d.toDateString() === new Date().toDateString() ? t : d.toLocaleDateString() + " " + t;
  },

  band(score, triage) {
    if (score === null || score === undefined) return "band-none";
    if (triage === "refer") return score >= 50 ? "band-high" : "band-refer";
    return "band-clear";
  },

  pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(1) + " %"; },

  /* The JET colour map of the overlays (outputs/files.render_overlay), v in [0, 1]. */
  jet(v) {
    const c = (x) => Math.round(255 * Math.min(1, Math.max(0, x)));
    return [c(1.5 - Math.abs(4 * v - 3)), c(1.5 - Math.abs(4 * v - 2)), c(1.5 - Math.abs(4 * v - 1))];
  },
};

/* Times are written in UTC; show them in the viewer's local time. */
for (const e of document.querySelectorAll("[data-time]")) if (e.dataset.time) e.textContent = new Date(e.dataset.time).toLocaleString();
