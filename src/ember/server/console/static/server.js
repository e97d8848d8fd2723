/* Server page: the /metrics counters sampled by the server every 5 s (last 10 minutes), refreshed every 3 s;
   throughput and mean time to first token are computed between consecutive samples. */
"use strict";
(() => {
  async function tick() {
    let s;
    try { const r = await fetch("/ui/server/stats", {credentials: "same-origin"}); if (!r.ok) return; s = await r.json(); }
    catch (e) { return; }
    const samples = s.history.concat([s.now]);
    s.now.models.forEach(m => {
      const row = document.querySelector(`tr[data-model="${CSS.escape(m.model)}"]`);
      if (!row) return;
      row.querySelector(".running").textContent = m.running; row.querySelector(".waiting").textContent = m.waiting;
      row.querySelector(".cache").textContent = (100 * m.cache_usage).toFixed(0) + "%";
      row.querySelector(".requests").textContent = m.requests;  // since the server started
      row.querySelector(".ttft").textContent = m.ttft_count ? (m.ttft_sum / m.ttft_count).toFixed(2) + " s" : "–";
    });
    const tput = {}, ttft = {}, now = s.now.t;
    for (let i = 1; i < samples.length; i++) {
      const a = samples[i - 1], b = samples[i], dt = b.t - a.t;
      if (dt <= 0.5) continue;
      b.models.forEach(m => {
        const p = a.models.find(x => x.model === m.model);
        if (!p) return;
        const x = b.t - now;
        (tput[m.model] = tput[m.model] || []).push([x, Math.max(0, (m.generation_tokens - p.generation_tokens) / dt)]);
        const dc = m.ttft_count - p.ttft_count;
        if (dc > 0) (ttft[m.model] = ttft[m.model] || []).push([x, (m.ttft_sum - p.ttft_sum) / dc]);
      });
    }
    document.getElementById("mem-rss").textContent = ((s.memory.VmRSS || 0) / 1048576).toFixed(0) + " MiB";
    const xfmt = x => x > -1 ? "now" : `${Math.round(-x)} s ago`;
    Ember.lineChart(document.getElementById("tput-chart"), Object.entries(tput).map(([name, points]) => ({name, points})),
      {zero: true, xfmt, height: 180, empty: "collecting… (samples every 5 s)", label: "generated tokens per second"});
    Ember.lineChart(document.getElementById("ttft-chart"), Object.entries(ttft).map(([name, points]) => ({name, points})),
      {zero: true, xfmt, height: 180, empty: "no request answered in the last 10 minutes", label: "mean seconds to first token"});
  }
  tick(); setInterval(tick, 3000);
})();
