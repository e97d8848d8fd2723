/* Chat playground: streams /v1/chat/completions (SSE over fetch), Stop aborts it, token view colours each
   token by its probability with the top alternatives (logprobs) on hover or focus. */
"use strict";
(() => {
  const $ = id => document.getElementById(id);
  const form = $("chat");
  if (!form) return;
  let controllers = [];

  function body(model) {
    const b = {model, messages: [], stream: true, max_tokens: +$("max_tokens").value || 128};
    if ($("system").value.trim()) b.messages.push({role: "system", content: $("system").value});
    b.messages.push({role: "user", content: $("prompt").value});
    b.temperature = +$("temperature").value;
    if ($("top_p").value !== "" && +$("top_p").value < 1) b.top_p = +$("top_p").value;
    if ($("seed").value !== "") b.seed = parseInt($("seed").value, 10);
    const beams = parseInt($("beams").value, 10) || 1;
    if (beams > 1) { b.use_beam_search = true; b.best_of = beams; }
    else { b.logprobs = true; b.top_logprobs = 5; }
    return b;
  }

  function snippets() {
    const b = body($("model").value); delete b.logprobs; delete b.top_logprobs;
    const json = JSON.stringify(b, null, 2);
    $("snippet-curl").textContent = `curl ${location.origin}/v1/chat/completions \\\n  -H "Authorization: Bearer $EMBER_API_KEY" \\\n  -H "Content-Type: application/json" \\\n  -d '${json.replace(/'/g, "'\\''")}'`;
    const extra = {}; ["use_beam_search", "best_of"].forEach(k => { if (b[k] !== undefined) extra[k] = b[k]; });
    const args = Object.entries(b).filter(([k]) => !(k in extra) && k !== "stream").map(([k, v]) => `    ${k}=${JSON.stringify(v).replace(/\btrue\b/g, "True").replace(/\bfalse\b/g, "False")},`);
    if (Object.keys(extra).length) args.push(`    extra_body=${JSON.stringify(extra).replace(/\btrue\b/g, "True")},`);
    $("snippet-py").textContent = `import os\nfrom openai import OpenAI\n\nclient = OpenAI(base_url="${location.origin}/v1", api_key=os.environ["EMBER_API_KEY"])\nstream = client.chat.completions.create(\n${args.join("\n")}\n    stream=True,\n)\nfor chunk in stream:\n    print(chunk.choices[0].delta.content or "", end="", flush=True)`;
  }

  const colour = p => `hsla(${Math.round(120 * p)}, 75%, 45%, 0.35)`;
  function renderTokens(pane, lps) {
    const box = $("tokens-" + pane);
    box.textContent = "";
    lps.forEach(lp => {
      const s = document.createElement("span");
      const p = Math.exp(lp.logprob);
      s.className = "tok"; s.tabIndex = 0; s.textContent = lp.token;
      s.style.background = colour(p);
      s.dataset.p = p.toFixed(4);
      s.setAttribute("aria-label", `${JSON.stringify(lp.token)} probability ${(100 * p).toFixed(1)}%`);
      s._alts = lp.top_logprobs || [];
      box.appendChild(s);
    });
    if (!lps.length) box.innerHTML = '<span class="muted">No token probabilities (beam search does not return them).</span>';
  }

  function showTip(ev) {
    const t = ev.target.closest(".tok"); const tip = $("tip");
    if (!t) { tip.hidden = true; return; }
    const rows = t._alts.map(a => `<tr><td><code></code></td><td>${(100 * Math.exp(a.logprob)).toFixed(1)}%</td></tr>`).join("");
    tip.innerHTML = `<b>${(100 * +t.dataset.p).toFixed(1)}%</b> for this token<table>${rows}</table>`;
    tip.querySelectorAll("code").forEach((c, i) => c.textContent = JSON.stringify(t._alts[i].token));
    const r = t.getBoundingClientRect();
    tip.style.left = Math.min(r.left, innerWidth - 290) + "px"; tip.style.top = (r.bottom + 6) + "px"; tip.hidden = false;
  }
  ["mouseover", "focusin"].forEach(e => document.addEventListener(e, showTip));
  document.addEventListener("mouseout", ev => { if (ev.target.closest(".tok")) $("tip").hidden = true; });

  async function run(pane, model) {
    const ans = $("answer-" + pane), status = $("status-" + pane);
    $("title-" + pane).textContent = model;
    ans.textContent = ""; ans.classList.add("streaming"); status.textContent = "waiting for the first token…";
    const ctrl = new AbortController(); controllers.push(ctrl);
    const lps = []; const t0 = performance.now(); let first = null, n = 0, finish = "";
    try {
      const resp = await Ember.api("/v1/chat/completions", {method: "POST", body: body(model), signal: ctrl.signal});
      if (!resp.ok) throw new Error(await Ember.errorText(resp));
      await Ember.readSSE(resp, chunk => {
        const c = chunk.choices && chunk.choices[0];
        if (!c) return;
        if (c.delta && c.delta.content) {
          if (first === null) first = performance.now() - t0;
          ans.textContent += c.delta.content;
        }
        if (c.logprobs && c.logprobs.content) { lps.push(...c.logprobs.content); n = lps.length; }
        if (c.finish_reason) finish = c.finish_reason;
      }, ctrl.signal);
      status.textContent = `done (${finish || "stop"}) · first token ${first === null ? "–" : (first / 1000).toFixed(2) + " s"} · ${((performance.now() - t0) / 1000).toFixed(2)} s`;
      status.dataset.state = "done";
    } catch (e) {
      if (e.name === "AbortError") { status.textContent = "stopped"; status.dataset.state = "stopped"; }
      else { status.textContent = "error: " + e.message; status.dataset.state = "error"; status.classList.add("fail"); }
    } finally {
      ans.classList.remove("streaming");
      renderTokens(pane, lps);
    }
  }

  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    if (!$("prompt").value.trim()) { $("prompt").focus(); return; }
    controllers = [];
    $("send").disabled = true; $("stop").disabled = false;
    const b = $("model-b").value;
    $("pane-b").hidden = !b;
    ["a", "b"].forEach(p => { $("status-" + p).dataset.state = "running"; $("status-" + p).classList.remove("fail"); });
    await Promise.all([run("a", $("model").value), b ? run("b", b) : null]);
    $("send").disabled = false; $("stop").disabled = true;
  });
  $("stop").addEventListener("click", () => controllers.forEach(c => c.abort()));
  $("prompt").addEventListener("keydown", ev => { if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) form.requestSubmit(); });
  $("show-tokens").addEventListener("change", () => {
    const on = $("show-tokens").checked;
    ["a", "b"].forEach(p => { $("tokens-" + p).hidden = !on; $("answer-" + p).hidden = on; });
    $("legend").hidden = !on;
  });
  form.addEventListener("input", snippets);
  snippets();
})();
