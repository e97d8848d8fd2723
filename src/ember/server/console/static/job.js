/* A job's page: follows /ui/jobs/ID/stream (Server-Sent Events) for state, events and the loss curve. */
"use strict";
(() => {
  const box = document.getElementById("job");
  if (!box) return;
  const $ = id => document.getElementById(id);
  const train = [], valid = [];
  const draw = () => Ember.lineChart($("loss-chart"), [{name: "training loss", points: train}, {name: "validation loss", points: valid}],
    {xlabel: "step", empty: "the loss curve appears with the first training steps", label: "loss by step"});
  draw();
  const src = new EventSource(`/ui/jobs/${encodeURIComponent(box.dataset.id)}/stream`);
  src.addEventListener("log", m => {
    const e = JSON.parse(m.data), d = e.data || {};
    if (e.type === "metrics" && d.step !== undefined) {
      if (d.train_loss !== undefined && d.train_loss !== null) train.push([d.step, d.train_loss]);
      if (d.valid_loss !== undefined && d.valid_loss !== null) valid.push([d.step, d.valid_loss]);
      draw();
    }
    const tr = document.createElement("tr");
    [new Date((e.created_at || 0) * 1000).toLocaleTimeString(), e.level, e.type, e.message].forEach(t => {
      const td = document.createElement("td"); td.textContent = t || ""; tr.appendChild(td);
    });
    $("events").prepend(tr);
  });
  src.addEventListener("job", m => {
    const j = JSON.parse(m.data);
    $("job-state").textContent = j.state; $("job-state").className = "state-" + j.state;
    $("job-error").textContent = j.error || "";
    if (j.finished_at) $("job-finished").textContent = new Date(j.finished_at * 1000).toISOString().slice(0, 16).replace("T", " ") + " UTC";
    if (j.result_ref) {
      const [n, v] = j.result_ref.split(":"); const a = document.createElement("a");
      a.href = `/ui/models/${n}/${v}`; a.textContent = j.result_ref; $("job-result").replaceChildren(a);
    }
    if (["succeeded", "failed", "cancelled"].includes(j.state) && $("cancel-form")) $("cancel-form").hidden = true;
  });
  const end = () => { src.close(); $("live").textContent = "(finished)"; };
  src.addEventListener("end", end);
  src.addEventListener("gone", end);
})();
