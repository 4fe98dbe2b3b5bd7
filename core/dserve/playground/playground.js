// dserve playground: runs a request with `stream_canvas: true` and draws, per denoising step, the
// positions the engine committed (docs/playground.md). Plain browser JavaScript, no dependencies;
// it talks only to the server that served it.
"use strict";

(() => {
  const KEY_STORAGE = "dserve.apiKey"; // sessionStorage: the key lives as long as the tab
  const $ = (id) => document.getElementById(id);
  const state = { algorithms: [], fields: {}, modelId: null, panes: [], controllers: [] };

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }

  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = apiKey();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && body.error) return `${response.status}: ${body.error.message}`;
    } catch (_) {
      /* not JSON */
    }
    return `${response.status} ${response.statusText}`;
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  // ---- what the server offers ------------------------------------------------------------

  async function loadServer() {
    const response = await fetch("/generation/algorithms", { headers: headers() });
    if (response.status === 401) {
      const why = apiKey() ? ` (${await errorMessage(response)})` : "";
      $("model").textContent = `This server needs an API key: type it above.${why}`;
      $("api-key").focus();
      $("run").disabled = true;
      return;
    }
    if (!response.ok) {
      $("model").textContent = "Could not list the algorithms: " + (await errorMessage(response));
      return;
    }
    const listing = await response.json();
    state.algorithms = listing.algorithms;
    state.fields = Object.fromEntries(listing.fields.map((f) => [f.name, f]));
    state.modelId = listing.model;
    $("model").textContent = "Model: " + (listing.model || "(none loaded)");
    setupRequestFields();
    buildPanes();
    $("run").disabled = false;
  }

  function setupRequestFields() {
    const maxTokens = $("max-tokens");
    const field = state.fields.max_tokens || {};
    if (field.minimum !== undefined) maxTokens.min = field.minimum;
    if (field.maximum !== undefined) maxTokens.max = field.maximum;
    maxTokens.value = field.server_default ?? "";
    maxTokens.title = field.description || "";
  }

  function engines() {
    return [...new Set(state.algorithms.map((a) => a.engine))];
  }

  function algorithmsOf(engine) {
    return state.algorithms.filter((a) => a.engine === engine);
  }

  function find(engine, algorithm) {
    return state.algorithms.find((a) => a.engine === engine && a.algorithm === algorithm);
  }

  function initialChoices() {
    const available = state.algorithms.filter((a) => a.available);
    const first = available.find((a) => a.default) || available[0];
    const second =
      available.find((a) => a !== first && a.engine !== first.engine) || available.find((a) => a !== first) || first;
    return [first, second];
  }

  // ---- one pane: an algorithm, its parameters, its canvas ----------------------------------

  function buildPanes() {
    const host = $("panes");
    host.replaceChildren();
    state.panes = initialChoices().map((choice, i) => makePane(i, choice));
    for (const pane of state.panes) host.append(pane.root);
    toggleCompare();
  }

  function makePane(index, choice) {
    const id = (suffix) => `p${index}-${suffix}`;
    const letter = "AB"[index];
    const engineSelect = el("select", { id: id("engine") });
    for (const name of engines()) engineSelect.append(el("option", { value: name, text: name }));
    const algorithmSelect = el("select", { id: id("algorithm") });
    const description = el("p", { class: "description", id: id("description") });
    const params = el("div", { class: "params" });
    const counters = {
      step: el("b", { text: "0" }),
      block: el("b", { text: "–" }),
      nfe: el("b", { text: "0" }),
      tps: el("b", { text: "–" }),
      committed: el("b", { text: "0/0" }),
    };
    const counterList = el("dl", { class: "counters" });
    for (const [name, label] of [
      ["step", "step"],
      ["block", "block"],
      ["nfe", "NFE"],
      ["tps", "tokens/s"],
      ["committed", "committed"],
    ]) {
      counterList.append(el("div", {}, el("dt", { text: label }), el("dd", {}, counters[name])));
    }
    const canvas = el("div", { class: "canvas", id: id("canvas"), role: "group", "aria-label": `Canvas ${letter}` });
    const replay = el("input", { type: "range", id: id("replay"), min: 0, max: 0, value: 0, disabled: true });
    const answer = el("output", { class: "answer", id: id("answer"), for: id("canvas") });
    const finish = el("span", { class: "finish", id: id("finish") });
    const root = el(
      "section",
      { class: "pane", id: id("pane"), "aria-labelledby": id("title"), dataset: { state: "idle" } },
      el("h2", { id: id("title"), text: `Algorithm ${letter}` }),
      el(
        "div",
        { class: "row" },
        el("div", { class: "field" }, el("label", { for: id("engine"), text: "Engine" }), engineSelect),
        el("div", { class: "field" }, el("label", { for: id("algorithm"), text: "Algorithm" }), algorithmSelect),
      ),
      description,
      el("details", { class: "param-box" }, el("summary", { text: "Parameters" }), params),
      counterList,
      canvas,
      el("div", { class: "field replay" }, el("label", { for: id("replay"), text: "Replay step" }), replay),
      el("div", { class: "answer-box" }, el("span", { class: "answer-label", text: "Answer " }), finish, answer),
    );
    const pane = { index, id, root, engineSelect, algorithmSelect, description, params, counters, canvas, replay, answer, finish };
    engineSelect.value = choice.engine;
    fillAlgorithms(pane, choice.algorithm);
    engineSelect.addEventListener("change", () => fillAlgorithms(pane, null));
    algorithmSelect.addEventListener("change", () => fillParams(pane));
    replay.addEventListener("input", () => showStep(pane, Number(replay.value)));
    canvas.addEventListener("keydown", (event) => moveFocus(pane, event));
    return pane;
  }

  function fillAlgorithms(pane, selected) {
    const select = pane.algorithmSelect;
    select.replaceChildren();
    for (const a of algorithmsOf(pane.engineSelect.value)) {
      const label = a.available ? a.algorithm : `${a.algorithm} (needs ${a.missing_capabilities.join(", ")})`;
      select.append(el("option", { value: a.algorithm, text: label, disabled: !a.available }));
    }
    const firstAvailable = algorithmsOf(pane.engineSelect.value).find((a) => a.available);
    select.value = selected || (firstAvailable ? firstAvailable.algorithm : "");
    fillParams(pane);
  }

  // A parameter's form control, from its JSON schema in /generation/algorithms.
  function paramControl(pane, name, schema) {
    const inputId = pane.id(`param-${name}`);
    const hintId = inputId + "-hint";
    const common = { id: inputId, name, "aria-describedby": hintId, dataset: { param: name } };
    let control;
    if (schema.enum || schema.type === "boolean") {
      const values = schema.enum || [true, false];
      control = el("select", common);
      if (schema.nullable || schema.default === null || schema.default === undefined) {
        control.append(el("option", { value: "", text: "(default)" }));
      }
      for (const v of values) control.append(el("option", { value: JSON.stringify(v), text: String(v) }));
      control.value = schema.default === null || schema.default === undefined ? "" : JSON.stringify(schema.default);
    } else if (schema.type === "integer" || schema.type === "number") {
      control = el("input", {
        ...common,
        type: "number",
        step: schema.type === "integer" ? 1 : "any",
        min: schema.minimum ?? schema.exclusiveMinimum,
        max: schema.maximum ?? schema.exclusiveMaximum,
        placeholder: schema.nullable ? "default" : null,
        inputmode: schema.type === "integer" ? "numeric" : "decimal",
      });
      control.value = schema.default ?? "";
      control.addEventListener("input", () => checkExclusive(control, schema));
    } else {
      control = el("input", { ...common, type: "text", placeholder: schema.nullable ? "default" : null });
      control.value = schema.default ?? "";
    }
    control.dataset.kind = schema.enum || schema.type === "boolean" ? "json" : schema.type || "string";
    // only fields the user changed are sent: the others keep the server's resolution order
    control.addEventListener("input", () => (control.dataset.touched = "1"));
    control.addEventListener("change", () => (control.dataset.touched = "1"));
    const bounds = [];
    if (schema.minimum !== undefined) bounds.push(`≥ ${schema.minimum}`);
    if (schema.exclusiveMinimum !== undefined) bounds.push(`> ${schema.exclusiveMinimum}`);
    if (schema.maximum !== undefined) bounds.push(`≤ ${schema.maximum}`);
    if (schema.exclusiveMaximum !== undefined) bounds.push(`< ${schema.exclusiveMaximum}`);
    const hint = [schema.description, bounds.join(", "), `default: ${schema.default ?? "the server's"}`]
      .filter(Boolean)
      .join(" · ");
    return el(
      "div",
      { class: "field param" },
      el("label", { for: inputId, text: name }),
      control,
      el("small", { id: hintId, text: hint }),
    );
  }

  function checkExclusive(control, schema) {
    const v = Number(control.value);
    let message = "";
    if (control.value !== "" && schema.exclusiveMinimum !== undefined && !(v > schema.exclusiveMinimum)) {
      message = `must be greater than ${schema.exclusiveMinimum}`;
    } else if (control.value !== "" && schema.exclusiveMaximum !== undefined && !(v < schema.exclusiveMaximum)) {
      message = `must be less than ${schema.exclusiveMaximum}`;
    }
    control.setCustomValidity(message);
  }

  function fillParams(pane) {
    const alg = find(pane.engineSelect.value, pane.algorithmSelect.value);
    pane.params.replaceChildren();
    pane.description.textContent = alg ? alg.description : "";
    if (!alg) return;
    for (const [name, schema] of Object.entries(alg.parameters)) pane.params.append(paramControl(pane, name, schema));
  }

  function paramValues(pane) {
    const out = {};
    for (const control of pane.params.querySelectorAll("[data-param]")) {
      if (control.dataset.touched !== "1" || control.value === "") continue;
      const kind = control.dataset.kind;
      out[control.dataset.param] =
        kind === "json" ? JSON.parse(control.value) : kind === "integer" || kind === "number" ? Number(control.value) : control.value;
    }
    return out;
  }

  function toggleCompare() {
    const compare = $("compare").checked;
    state.panes.forEach((pane, i) => (pane.root.hidden = i > 0 && !compare));
    $("panes").classList.toggle("single", !compare);
  }

  // ---- a run --------------------------------------------------------------------------------

  function requestBody(pane) {
    const raw = $("mode").value === "raw";
    const body = {
      model: state.modelId,
      stream: true,
      stream_canvas: true,
      stream_options: { include_usage: true },
      engine: pane.engineSelect.value,
      generation_algorithm: pane.algorithmSelect.value,
      ...paramValues(pane),
    };
    if ($("max-tokens").value !== "") body.max_tokens = Number($("max-tokens").value);
    if ($("ignore-eos").checked) body.ignore_eos = true;
    if (raw) body.prompt = $("prompt").value;
    else body.messages = [{ role: "user", content: $("prompt").value }];
    return [raw ? "/v1/completions" : "/v1/chat/completions", body];
  }

  function resetPane(pane) {
    pane.run = { steps: [], cells: [], blocks: [], length: 0, started: performance.now(), committed: 0, text: "" };
    pane.canvas.replaceChildren();
    pane.canvas.removeAttribute("data-length");
    pane.answer.textContent = "";
    pane.finish.textContent = "";
    pane.replay.disabled = true;
    pane.replay.max = 0;
    pane.replay.value = 0;
    for (const [name, value] of Object.entries({ step: "0", block: "–", nfe: "0", tps: "–", committed: "0/0" })) {
      pane.counters[name].textContent = value;
    }
    pane.root.dataset.state = "running";
  }

  function visibleControl(text) {
    return text.replace(/ /g, "␣").replace(/\n/g, "⏎").replace(/\t/g, "⇥") || "∅";
  }

  function stepColour(step) {
    const hue = (step * 137.508) % 360; // golden angle: neighbouring steps get distant hues
    return `hsl(${hue.toFixed(1)} 75% 82%)`;
  }

  function buildCanvas(pane, canvas) {
    const run = pane.run;
    run.length = canvas.length;
    run.blockStarts = canvas.block_starts;
    pane.canvas.dataset.length = String(canvas.length);
    const starts = canvas.block_starts.concat([canvas.length]);
    for (let b = 0; b + 1 < starts.length; b++) {
      const block = el("div", { class: "block", dataset: { block: String(b) } });
      for (let p = starts[b]; p < starts[b + 1]; p++) {
        const cell = el("span", {
          class: "cell masked",
          tabindex: -1,
          title: `position ${p}: masked`,
          "aria-label": `position ${p}: masked`,
          dataset: { position: String(p), state: "masked" },
          text: "▒",
        });
        run.cells.push(cell);
        block.append(cell);
      }
      run.blocks.push(block);
      pane.canvas.append(block);
    }
    if (run.cells.length) run.cells[0].tabIndex = 0;
  }

  function label(cell, text) {
    cell.title = text;
    cell.setAttribute("aria-label", text);
  }

  function paintCell(cell, item, step) {
    const special = /^<\|?([^<>\s|]+)\|?>$/.exec(item.text); // <|eot_id|>, <eos>: shown by name
    cell.className = special ? "cell committed special" : "cell committed";
    cell.dataset.state = "committed";
    cell.dataset.step = String(step);
    cell.textContent = special ? special[1] : visibleControl(item.text);
    cell.style.background = stepColour(step);
    label(cell, `position ${item.position}: ${JSON.stringify(item.text)} (token ${item.token_id}), step ${step}`);
  }

  function maskCell(cell, position) {
    cell.className = "cell masked";
    cell.dataset.state = "masked";
    delete cell.dataset.step;
    cell.textContent = "▒";
    cell.style.background = "";
    label(cell, `position ${position}: masked`);
  }

  // Arrow keys move between cells (one tab stop for the whole canvas); a cell's title says its step and token.
  function moveFocus(pane, event) {
    const cells = pane.run ? pane.run.cells : [];
    const at = cells.indexOf(document.activeElement);
    if (at < 0) return;
    const to = { ArrowRight: at + 1, ArrowDown: at + 1, ArrowLeft: at - 1, ArrowUp: at - 1, Home: 0, End: cells.length - 1 }[event.key];
    if (to === undefined || to < 0 || to >= cells.length) return;
    event.preventDefault();
    cells[at].tabIndex = -1;
    cells[to].tabIndex = 0;
    cells[to].focus();
  }

  function markBlock(pane, block) {
    pane.run.blocks.forEach((b, i) => b.classList.toggle("current", i === block));
  }

  function onCanvas(pane, canvas) {
    const run = pane.run;
    if (!run.length) buildCanvas(pane, canvas);
    run.steps.push(canvas);
    for (const item of canvas.committed) {
      const cell = run.cells[item.position];
      if (cell) paintCell(cell, item, canvas.step);
    }
    run.committed += canvas.committed.length;
    const seconds = (performance.now() - run.started) / 1000;
    pane.counters.step.textContent = String(canvas.step);
    pane.counters.block.textContent = String(canvas.block);
    pane.counters.nfe.textContent = String(canvas.nfe);
    pane.counters.tps.textContent = seconds > 0 ? (run.committed / seconds).toFixed(1) : "–";
    pane.counters.committed.textContent = `${run.committed}/${run.length}`;
    markBlock(pane, canvas.block);
  }

  // The canvas as it was after `k` steps (0: all masked), for the replay slider.
  function showStep(pane, k) {
    const run = pane.run;
    run.cells.forEach((cell, p) => maskCell(cell, p));
    let committed = 0;
    for (const canvas of run.steps.slice(0, k)) {
      for (const item of canvas.committed) {
        if (run.cells[item.position]) paintCell(run.cells[item.position], item, canvas.step);
      }
      committed += canvas.committed.length;
    }
    const last = run.steps[k - 1];
    pane.replay.setAttribute("aria-valuetext", `after step ${k} of ${run.steps.length}`);
    pane.counters.step.textContent = String(last ? last.step : 0);
    pane.counters.block.textContent = last ? String(last.block) : "–";
    pane.counters.nfe.textContent = String(last ? last.nfe : 0);
    pane.counters.committed.textContent = `${committed}/${run.length}`;
    markBlock(pane, last ? last.block : -1);
    if (k === run.steps.length) markUnused(pane);
  }

  function markUnused(pane) {
    pane.run.cells.forEach((cell, p) => {
      if (cell.dataset.state === "masked") {
        cell.classList.add("unused");
        label(cell, `position ${p}: not decoded (the answer ended before it)`);
      }
    });
  }

  function finishPane(pane, outcome) {
    const run = pane.run;
    pane.root.dataset.state = outcome;
    markBlock(pane, -1);
    if (outcome === "done") markUnused(pane);
    if (run.steps.length) {
      pane.replay.max = String(run.steps.length);
      pane.replay.value = String(run.steps.length);
      pane.replay.disabled = false;
      pane.replay.setAttribute("aria-valuetext", `after step ${run.steps.length} of ${run.steps.length}`);
    }
    const seconds = (performance.now() - run.started) / 1000;
    if (run.completionTokens !== undefined && seconds > 0) {
      pane.counters.tps.textContent = (run.completionTokens / seconds).toFixed(1);
    }
  }

  function handleChunk(pane, chunk) {
    if (chunk.error) throw new Error(chunk.error.message || "generation failed");
    if (chunk.canvas) onCanvas(pane, chunk.canvas);
    for (const choice of chunk.choices || []) {
      const text = choice.delta ? choice.delta.content : choice.text;
      if (text) {
        pane.run.text += text;
        pane.answer.textContent = pane.run.text;
      }
      if (choice.finish_reason) pane.finish.textContent = `(finish_reason: ${choice.finish_reason}) `;
    }
    if (chunk.usage) {
      pane.run.completionTokens = chunk.usage.completion_tokens;
      pane.counters.nfe.textContent = String(chunk.usage.nfe);
    }
  }

  async function runPane(pane, signal) {
    resetPane(pane);
    const [path, body] = requestBody(pane);
    try {
      const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
      if (!response.ok) throw new Error(await errorMessage(response));
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data: ")) continue;
            const data = line.slice(6);
            if (data === "[DONE]") continue;
            handleChunk(pane, JSON.parse(data));
          }
        }
      }
      finishPane(pane, "done");
    } catch (err) {
      pane.finish.textContent = signal.aborted ? "(stopped) " : `(error: ${err.message}) `;
      finishPane(pane, signal.aborted ? "stopped" : "error");
    }
  }

  async function run(event) {
    event.preventDefault();
    const form = $("run-form");
    const panes = state.panes.filter((p) => !p.root.hidden);
    if (!form.checkValidity()) {
      for (const pane of panes) pane.root.querySelector("details").open = true; // so the browser can show the field
      form.reportValidity();
      return;
    }
    $("run").disabled = true;
    $("stop").disabled = false;
    setStatus("Running…");
    state.controllers = panes.map(() => new AbortController());
    const started = performance.now();
    await Promise.all(panes.map((pane, i) => runPane(pane, state.controllers[i].signal)));
    const failed = panes.filter((p) => p.root.dataset.state === "error").length;
    setStatus(
      failed
        ? `${failed} of ${panes.length} failed (see below).`
        : `Done in ${((performance.now() - started) / 1000).toFixed(2)} s. Use the replay sliders to step through.`,
    );
    $("run").disabled = false;
    $("stop").disabled = true;
  }

  function stop() {
    for (const controller of state.controllers) controller.abort();
  }

  function init() {
    $("api-key").value = apiKey();
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
      loadServer();
    });
    $("run-form").addEventListener("submit", run);
    $("stop").addEventListener("click", stop);
    $("compare").addEventListener("change", toggleCompare);
    $("run").disabled = true;
    loadServer().catch((err) => ($("model").textContent = "Could not reach the server: " + err.message));
  }

  document.addEventListener("DOMContentLoaded", init);
})();
