/* Server page: samples /ui/server/stats (the /metrics counters) every 2 s; plots throughput and TTFT. */
"use strict";
(() => {
  const samples = [];
  const series = {tput: {}, ttft: {}};
  const t0 = Date.now() / 1000;
  async function tick() {
    let s;
    try { const r = await fetch("/ui/server/stats", {credentials: "same-origin"}); if (!r.ok) return; s = await r.json(); }
    catch (e) { return; }
    const prev = samples[samples.length - 1];
    samples.push(s);
    s.models.forEach(m => {
      const row = document.querySelector(`tr[data-model="${CSS.escape(m.model)}"]`);
      if (row) { row.querySelector(".running").textContent = m.running; row.querySelector(".waiting").textContent = m.waiting;
        row.querySelector(".cache").textContent = (100 * m.cache_usage).toFixed(0) + "%"; }
      const p = prev && prev.models.find(x => x.model === m.model);
      if (!p) return;
      const dt = s.t - prev.t, x = s.t - t0;
      (series.tput[m.model] = series.tput[m.model] || []).push([x, Math.max(0, (m.generation_tokens - p.generation_tokens) / dt)]);
      const dc = m.ttft_count - p.ttft_count;
      if (dc > 0) (series.ttft[m.model] = series.ttft[m.model] || []).push([x, (m.ttft_sum - p.ttft_sum) / dc]);
    });
    document.getElementById("mem-rss").textContent = ((s.memory.VmRSS || 0) / 1048576).toFixed(0) + " MiB";
    for (const k of ["tput", "ttft"]) for (const m in series[k]) series[k][m] = series[k][m].filter(p => p[0] > s.t - t0 - 600);
    const xfmt = x => `${Math.round(x)} s`;
    Ember.lineChart(document.getElementById("tput-chart"), Object.entries(series.tput).map(([name, points]) => ({name, points})),
      {zero: true, xfmt, height: 180, empty: "collecting… (two samples needed)", label: "tokens per second"});
    Ember.lineChart(document.getElementById("ttft-chart"), Object.entries(series.ttft).map(([name, points]) => ({name, points})),
      {zero: true, xfmt, height: 180, empty: "no requests answered since this page opened", label: "seconds to first token"});
  }
  tick(); setInterval(tick, 2000);
})();
