/* Ember console: helpers every page uses. No framework; everything talks to the API through /ui/proxy
   with the session's CSRF token (the API key itself never reaches the browser). */
"use strict";
const Ember = (() => {
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  async function api(path, opts = {}) {
    const headers = Object.assign({"X-CSRF-Token": csrf()}, opts.headers || {});
    if (opts.body !== undefined && typeof opts.body !== "string" && !(opts.body instanceof FormData)) {
      opts.body = JSON.stringify(opts.body); headers["Content-Type"] = "application/json";
    }
    return fetch("/ui/proxy" + path, Object.assign({}, opts, {headers, credentials: "same-origin"}));
  }

  async function errorText(resp) {
    try { const j = await resp.json(); return (j.error && j.error.message) || JSON.stringify(j); }
    catch (e) { return resp.status + " " + resp.statusText; }
  }

  /* Server-Sent Events from a fetch Response (POST bodies and headers, which EventSource cannot send). */
  async function readSSE(resp, onData, signal) {
    const reader = resp.body.getReader(), dec = new TextDecoder();
    let buf = "";
    while (true) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += dec.decode(value, {stream: true});
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i); buf = buf.slice(i + 2);
        const data = block.split("\n").filter(l => l.startsWith("data:")).map(l => l.slice(5).trimStart()).join("\n");
        if (data === "[DONE]") return;
        if (data) onData(JSON.parse(data));
      }
      if (signal && signal.aborted) return;
    }
  }

  const NS = "http://www.w3.org/2000/svg";
  function el(tag, attrs, text) {
    const e = document.createElementNS(NS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  const COLORS = ["#ea580c", "#2563eb", "#16a34a", "#9333ea", "#db2777", "#0891b2"];
  const fmt = v => Math.abs(v) >= 1000 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toPrecision(3);

  /* A small line chart: series = [{name, points: [[x, y], ...]}]. Hand-drawn SVG, no library. */
  function lineChart(svg, series, opts = {}) {
    // Drawn at the element's own pixel width (styled first), so text stays its real size on any screen.
    svg.classList.add("chart");
    const W = Math.max(300, Math.round(svg.getBoundingClientRect().width) || 640), H = opts.height || 220;
    const L = 52, R = 12, T = 12, B = 30;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`); svg.classList.add("chart");
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const pts = series.flatMap(s => s.points);
    if (!pts.length) { svg.appendChild(el("text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, opts.empty || "no data yet")); return; }
    let [x0, x1] = [Math.min(...pts.map(p => p[0])), Math.max(...pts.map(p => p[0]))];
    let [y0, y1] = [Math.min(...pts.map(p => p[1])), Math.max(...pts.map(p => p[1]))];
    if (opts.zero) y0 = Math.min(0, y0);
    if (x1 === x0) x1 = x0 + 1; if (y1 === y0) { y1 = y0 + 1; }
    const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R), sy = y => H - B - (y - y0) / (y1 - y0) * (H - T - B);
    for (let i = 0; i <= 4; i++) {
      const y = y0 + (y1 - y0) * i / 4;
      svg.appendChild(el("line", {x1: L, x2: W - R, y1: sy(y), y2: sy(y), stroke: "currentColor", "stroke-opacity": .12}));
      svg.appendChild(el("text", {x: L - 6, y: sy(y) + 4, "text-anchor": "end"}, fmt(y)));
    }
    svg.appendChild(el("text", {x: L, y: H - 8}, opts.xfmt ? opts.xfmt(x0) : fmt(x0)));
    svg.appendChild(el("text", {x: W - R, y: H - 8, "text-anchor": "end"}, opts.xfmt ? opts.xfmt(x1) : fmt(x1)));
    if (opts.xlabel) svg.appendChild(el("text", {x: (W + L) / 2, y: H - 8, "text-anchor": "middle"}, opts.xlabel));
    series.forEach((s, i) => {
      if (!s.points.length) return;
      const d = s.points.map((p, j) => (j ? "L" : "M") + sx(p[0]).toFixed(1) + " " + sy(p[1]).toFixed(1)).join(" ");
      svg.appendChild(el("path", {d, fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 2}));
      if (s.points.length < 40) s.points.forEach(p => svg.appendChild(el("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: COLORS[i % COLORS.length]})));
      if (series.length > 1 || s.name) {
        const t = el("text", {x: W - R - 6 - 150 * (series.length - 1 - i), y: T + 10, "text-anchor": "end"}, "● " + (s.name || ""));
        t.style.fill = COLORS[i % COLORS.length];  // a style, so the stylesheet's muted text colour does not win
        svg.appendChild(t);
      }
    });
    const label = opts.label || series.map(s => s.name).join(", ");
    svg.setAttribute("role", "img"); svg.setAttribute("aria-label", label);
  }

  /* Grouped bars: groups = [{label, values: [a, b]}], names = ["A", "B"]. */
  function barChart(svg, groups, names) {
    svg.classList.add("chart", "bars");
    const W = Math.max(300, Math.round(svg.getBoundingClientRect().width) || 640), H = 18 * names.length + 14 + groups.length * 46, L = 170, R = 60, top = 18 * names.length;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`); svg.classList.add("chart", "bars");
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const max = Math.max(1e-9, ...groups.flatMap(g => g.values.map(v => Math.abs(v || 0))));
    names.forEach((n, i) => { const t = el("text", {x: L, y: 14 + 18 * i}, "■ " + n); t.style.fill = COLORS[i]; svg.appendChild(t); });
    groups.forEach((g, gi) => {
      const y = top + 8 + gi * 46;
      svg.appendChild(el("text", {x: L - 8, y: y + 18, "text-anchor": "end"}, g.label));
      g.values.forEach((v, i) => {
        if (v === null || v === undefined) return;
        const w = Math.abs(v) / max * (W - L - R);
        svg.appendChild(el("rect", {x: L, y: y + i * 18, width: Math.max(1, w), height: 15, rx: 3, fill: COLORS[i]}));
        svg.appendChild(el("text", {x: L + w + 5, y: y + i * 18 + 12}, fmt(v)));
      });
    });
  }

  document.addEventListener("click", ev => {
    const b = ev.target.closest("[data-copy]");
    if (!b) return;
    const src = document.getElementById(b.dataset.copy);
    navigator.clipboard.writeText(src.value !== undefined ? src.value : src.textContent).then(
      () => { const t = b.textContent; b.textContent = "Copied"; setTimeout(() => b.textContent = t, 1200); },
      () => { b.textContent = "Select and copy"; });
  });

  return {api, errorText, readSSE, lineChart, barChart, csrf};
})();
