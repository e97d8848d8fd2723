/* Keys page: tokens per key and model as bars (from /api/usage rows). */
"use strict";
(() => {
  const data = document.getElementById("usage-data");
  if (!data) return;
  const totals = {};
  JSON.parse(data.textContent).forEach(r => {
    const k = `${r.key_name || r.key_id || "no key"} · ${r.model}`;
    totals[k] = totals[k] || [0, 0];
    totals[k][0] += r.prompt_tokens || 0; totals[k][1] += r.completion_tokens || 0;
  });
  const groups = Object.entries(totals).map(([label, v]) => ({label: label.slice(0, 24), values: v}));
  Ember.barChart(document.getElementById("usage-chart"), groups, ["prompt tokens", "completion tokens"]);
})();
