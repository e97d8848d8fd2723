/* Evaluations page: the compare chart (one pair of bars per task/metric). */
"use strict";
(() => {
  const data = document.getElementById("compare-data");
  if (!data) return;
  const c = JSON.parse(data.textContent);
  const groups = c.rows.map(r => ({label: r.task.replace(/^builtin:/, "") === r.metric ? r.metric : `${r.task.replace(/^builtin:/, "")} ${r.metric}`, values: [r.a, r.b]}));
  Ember.barChart(document.getElementById("compare-chart"), groups, ["A " + c.a, "B " + c.b]);
})();
