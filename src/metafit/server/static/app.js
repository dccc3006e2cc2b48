// metafit's page: adapt the served run to a few examples per class, then classify new
// inputs with it. Plain JavaScript: no framework, no build step, nothing from another
// host. The API key lives in this page's memory (and in sessionStorage when the user asks
// for it) and is only ever sent in the X-API-Key header, never in a URL. Everything the
// server or the user supplies is shown with textContent, never parsed as HTML.
"use strict";

(() => {
  const KEY_STORE = "metafit.apiKey";
  const IMAGE_TYPES = ["image/png", "image/jpeg"];
  const ID_PATTERN = /^[0-9a-f]{32}$/;
  // fields a prediction may carry to say "none of these classes" (another issue designs
  // it): shown when present, never computed here
  const state = {
    key: "",
    kind: null, // "image" or "text", from /healthz
    mode: null, // "run" (adapts) or "model" (predicts only)
    classes: [], // {label: input, files: File[], thumbs, texts: textarea}
    queryFiles: [],
    adaptations: [], // descriptions from POST or GET /v1/adaptations, newest first
    classCount: 0,
  };

  const $ = (id) => document.getElementById(id);

  /** A new element with attributes (``text``: its textContent) and children. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value);
    }
    node.append(...children);
    return node;
  }

  function setStatus(id, text, kind = "") {
    const node = $(id);
    node.textContent = text;
    node.className = kind;
  }

  // --- the API ----------------------------------------------------------------------

  function describeError(status, body) {
    if (status === 401) return "the server refused the API key (401): enter a valid key in step 1";
    const detail = body && body.detail;
    let text = "";
    if (Array.isArray(detail)) {
      text = detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    } else if (typeof detail === "string") {
      text = detail;
    }
    return `error ${status}${text ? `: ${text}` : ""}`;
  }

  /** ``method path`` with the key in a header; the JSON answer, or an Error saying why. */
  async function api(method, path, body) {
    const headers = {};
    if (state.key) headers["X-API-Key"] = state.key;
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body instanceof FormData) {
      init.body = body; // the browser sets multipart/form-data and its boundary
    } else if (body !== undefined) {
      init.body = JSON.stringify(body);
      headers["Content-Type"] = "application/json";
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new Error(`the server did not answer (${e.message})`);
    }
    const type = response.headers.get("content-type") || "";
    const data = type.includes("json") ? await response.json().catch(() => null) : null;
    if (!response.ok) throw new Error(describeError(response.status, data));
    return data;
  }

  // --- the key ----------------------------------------------------------------------

  function setupKey() {
    const input = $("api-key");
    const remember = $("remember");
    const saved = sessionStorage.getItem(KEY_STORE);
    if (saved) {
      state.key = saved;
      input.value = saved;
      remember.checked = true;
    }
    const store = () => {
      state.key = input.value.trim();
      if (remember.checked && state.key) sessionStorage.setItem(KEY_STORE, state.key);
      else sessionStorage.removeItem(KEY_STORE);
    };
    const confirm = () => {
      store();
      setStatus("key-status", state.key
        ? `Key set${remember.checked ? " (kept for this tab)" : ""}: sent in the X-API-Key header of each request.`
        : "No key: requests are sent without one (a server with keys refuses them).", "ok");
    };
    input.addEventListener("input", store);
    input.addEventListener("keydown", (e) => { if (e.key === "Enter") confirm(); });
    remember.addEventListener("change", confirm);
    $("use-key").addEventListener("click", confirm);
  }

  // --- files ------------------------------------------------------------------------

  /** The PNG and JPEG files of ``files``; the others are named in status ``statusId``. */
  function acceptImages(files, statusId) {
    const all = Array.from(files || []);
    const kept = all.filter((f) => IMAGE_TYPES.includes(f.type));
    const skipped = all.filter((f) => !kept.includes(f)).map((f) => f.name);
    if (skipped.length) {
      setStatus(statusId, `Skipped ${skipped.join(", ")}: only PNG and JPEG images are sent.`, "error");
    }
    return kept;
  }

  /** A zone to drop images on, or click to pick them; ``onFiles`` gets the images. */
  function dropZone(text, statusId, onFiles) {
    const input = el("input", { type: "file", multiple: "", accept: IMAGE_TYPES.join(","), class: "file-input" });
    const zone = el("label", { class: "drop" }, el("span", { text }), input);
    input.addEventListener("change", () => {
      onFiles(acceptImages(input.files, statusId));
      input.value = "";
    });
    zone.addEventListener("dragover", (e) => {
      e.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      onFiles(acceptImages(e.dataTransfer.files, statusId));
    });
    return zone;
  }

  function thumbnail(file) {
    const img = el("img", { alt: file.name, title: file.name });
    const url = URL.createObjectURL(file);
    img.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
    img.src = url;
    return img;
  }

  /** Draw ``files`` as thumbnails in ``box``, each with a button removing it. */
  function drawThumbs(box, files) {
    box.replaceChildren(...files.map((file, i) => {
      const remove = el("button", { type: "button", class: "unpick", title: `remove ${file.name}`, text: "\u00d7" });
      remove.addEventListener("click", () => {
        files.splice(i, 1);
        drawThumbs(box, files);
      });
      return el("span", { class: "thumb" }, thumbnail(file), remove);
    }));
    const count = box.parentElement && box.parentElement.querySelector(".count");
    if (count) count.textContent = files.length ? `${files.length} image${files.length > 1 ? "s" : ""}` : "";
  }

  // --- step 2: the support set --------------------------------------------------------

  function addClass(name = "") {
    state.classCount += 1;
    const n = state.classCount;
    const entry = { files: [] };
    entry.label = el("input", { type: "text", class: "label", maxlength: "200", placeholder: `class ${n}`, "aria-label": `name of class ${n}`, spellcheck: "false" });
    entry.label.value = name;
    const remove = el("button", { type: "button", class: "secondary small", text: "Remove" });
    const card = el("div", { class: "class-card" }, el("div", { class: "class-head" }, entry.label, el("span", { class: "count muted" }), remove));
    if (state.kind === "image") {
      entry.thumbs = el("div", { class: "thumbs" });
      card.append(dropZone("Drop images here, or click to pick", "adapt-status", (files) => {
        entry.files.push(...files);
        drawThumbs(entry.thumbs, entry.files);
      }), entry.thumbs);
    } else {
      entry.texts = el("textarea", { rows: "4", class: "texts", placeholder: "one example sentence per line", "aria-label": `sentences of class ${n}` });
      card.append(entry.texts);
    }
    remove.addEventListener("click", () => {
      state.classes = state.classes.filter((c) => c !== entry);
      card.remove();
    });
    state.classes.push(entry);
    $("classes").append(card);
  }

  function lines(text) {
    return text.split("\n").map((s) => s.trim()).filter((s) => s.length > 0);
  }

  /** The support set as a request body (a form for images, JSON for text); or throws. */
  function supportBody() {
    const groups = [];
    for (const [i, c] of state.classes.entries()) {
      const label = c.label.value.trim();
      const examples = state.kind === "image" ? c.files : lines(c.texts.value);
      if (!label && !examples.length) continue;
      if (!label) throw new Error(`class ${i + 1} needs a name`);
      if (!examples.length) throw new Error(`class "${label}" has no examples`);
      groups.push({ label, examples });
    }
    if (groups.length < 2) throw new Error("give at least two classes, each with a name and examples");
    const steps = $("steps").value.trim();
    const calibrate = $("calibrate").checked;
    const reject = $("reject").checked;
    if (state.kind === "image") {
      const form = new FormData();
      for (const g of groups) {
        for (const file of g.examples) {
          form.append("label", g.label);
          form.append("file", file, file.name);
        }
      }
      if (steps) form.append("steps", steps);
      if (calibrate) form.append("calibrate", "true");
      if (reject) form.append("reject", "{}");
      return form;
    }
    const body = { examples: groups.flatMap((g) => g.examples.map((text) => ({ text, label: g.label }))) };
    if (steps) body.steps = Number(steps);
    if (calibrate) body.calibrate = true;
    if (reject) body.reject = {};
    return body;
  }

  async function adapt() {
    let body;
    try {
      body = supportBody();
    } catch (e) {
      setStatus("adapt-status", e.message, "error");
      return;
    }
    const button = $("adapt");
    button.disabled = true;
    setStatus("adapt-status", "Adapting...", "busy");
    try {
      const made = await api("POST", "/v1/adaptations", body);
      remember(made);
      let how = made.steps ? `${made.algorithm}, ${made.steps} inner steps` : made.algorithm;
      if (made.temperature !== null && made.temperature !== 1) how += `, temperature ${made.temperature.toFixed(2)}`;
      if (made.reject && made.reject.threshold !== null) how += `, none of these: ${made.reject.score} below ${made.reject.threshold.toPrecision(3)}`;
      setStatus("adapt-status", `Adapted to ${made.labels.length} classes from ${made.examples} examples`
        + ` in ${made.seconds} s (${how}): adaptation ${made.id}.`, "ok");
    } catch (e) {
      setStatus("adapt-status", `Adaptation failed: ${e.message}`, "error");
    } finally {
      button.disabled = false;
    }
  }

  async function loadById() {
    const id = $("adaptation-id").value.trim().toLowerCase();
    if (!ID_PATTERN.test(id)) {
      setStatus("adapt-status", "An adaptation id is 32 hex digits.", "error");
      return;
    }
    try {
      const found = await api("GET", `/v1/adaptations/${id}`);
      remember(found);
      setStatus("adapt-status", `Using adaptation ${found.id}: ${found.labels.join(", ")}.`, "ok");
    } catch (e) {
      setStatus("adapt-status", `Cannot use it: ${e.message}`, "error");
    }
  }

  function remember(description) {
    state.adaptations = [description, ...state.adaptations.filter((a) => a.id !== description.id)];
    drawModels(description.id);
  }

  function drawModels(selected) {
    const select = $("model");
    const options = state.adaptations.map((a) => new Option(`${a.labels.join(", ")} (adaptation ${a.id.slice(0, 8)})`, a.id));
    const served = state.mode === "model" ? "the served model" : "the served model (if started with --model)";
    options.push(new Option(served, ""));
    select.replaceChildren(...options);
    select.value = selected || options[0].value;
  }

  // --- step 3: classify ---------------------------------------------------------------

  function buildQueries() {
    const box = $("queries");
    if (state.kind === "image") {
      const thumbs = el("div", { class: "thumbs" });
      const clear = el("button", { type: "button", class: "secondary small", text: "Clear" });
      clear.addEventListener("click", () => {
        state.queryFiles.length = 0;
        drawThumbs(thumbs, state.queryFiles);
      });
      box.replaceChildren(
        el("div", { class: "class-head" }, el("span", { text: "Images to classify" }), el("span", { class: "count muted" }), clear),
        dropZone("Drop images to classify here, or click to pick", "classify-status", (files) => {
          state.queryFiles.push(...files);
          drawThumbs(thumbs, state.queryFiles);
        }),
        thumbs);
    } else {
      box.replaceChildren(el("textarea", { id: "query-text", rows: "4", placeholder: "one sentence to classify per line", "aria-label": "sentences to classify" }));
    }
  }

  async function classify() {
    const target = $("model").value;
    const path = target ? `/v1/adaptations/${encodeURIComponent(target)}/predict` : "/v1/predict";
    let body;
    let shown;
    if (state.kind === "image") {
      if (!state.queryFiles.length) {
        setStatus("classify-status", "Add an image to classify first.", "error");
        return;
      }
      shown = state.queryFiles.slice();
      body = new FormData();
      for (const file of shown) body.append("file", file, file.name);
    } else {
      shown = lines($("query-text").value);
      if (!shown.length) {
        setStatus("classify-status", "Type a sentence to classify first.", "error");
        return;
      }
      body = { inputs: shown };
    }
    const button = $("classify");
    button.disabled = true;
    setStatus("classify-status", "Classifying...", "busy");
    try {
      const answer = await api("POST", path, body);
      drawResults(shown, answer.predictions);
      setStatus("classify-status", `${answer.predictions.length} classified.`, "ok");
    } catch (e) {
      setStatus("classify-status", `Classification failed: ${e.message}`, "error");
    } finally {
      button.disabled = false;
    }
  }

  /** The most probable class of a prediction. */
  function closest(prediction) {
    return Object.entries(prediction.probabilities).sort((a, b) => b[1] - a[1])[0][0];
  }

  /** The label; with a reject setting ("none of these") the reject score, and for a
   * rejected input (its label is then the unknown label) the closest class. */
  function answer(prediction) {
    const box = el("div", { class: "answer" });
    const scored = typeof prediction.score === "number";
    if (prediction.rejected === true) {
      box.append(el("span", { class: "top-label unknown", text: prediction.label }),
        el("span", { class: "muted", text: ` none of these classes (reject score ${prediction.score.toPrecision(3)}; closest: ${closest(prediction)})` }));
    } else {
      box.append(el("span", { class: "top-label", text: prediction.label }));
      if (scored) box.append(el("span", { class: "muted", text: ` reject score ${prediction.score.toPrecision(3)}` }));
    }
    return box;
  }

  function table(probabilities, top) {
    const rows = Object.entries(probabilities).sort((a, b) => b[1] - a[1]).map(([label, p]) => {
      const bar = el("span", { class: "bar" });
      bar.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`; // CSSOM: allowed by the CSP
      const cell = el("td", { class: "p", text: `${(p * 100).toFixed(1)}%` });
      cell.dataset.probability = String(p);
      return el("tr", label === top ? { class: "top" } : {}, el("th", { scope: "row", text: label }), cell,
        el("td", { class: "bar-cell" }, el("span", { class: "track" }, bar)));
    });
    return el("table", { class: "probabilities" },
      el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "label" }), el("th", { scope: "col", text: "probability" }), el("th", {}))),
      el("tbody", {}, ...rows));
  }

  function drawResults(shown, predictions) {
    $("results").replaceChildren(...predictions.map((p, i) => {
      const input = state.kind === "image" ? thumbnail(shown[i]) : el("blockquote", { text: shown[i] });
      return el("article", { class: "result" }, el("div", { class: "input" }, input),
        el("div", { class: "output" }, answer(p), table(p.probabilities, p.label)));
    }));
  }

  // --- start ---------------------------------------------------------------------------

  async function start() {
    setupKey();
    $("add-class").addEventListener("click", () => addClass());
    $("adapt").addEventListener("click", adapt);
    $("load").addEventListener("click", loadById);
    $("classify").addEventListener("click", classify);
    let health;
    try {
      health = await api("GET", "/healthz");
    } catch (e) {
      setStatus("server", `Cannot reach the server: ${e.message}`, "error");
      return;
    }
    state.kind = health.kind;
    state.mode = health.mode;
    const kind = health.kind === "image" ? "image" : "text";
    const what = health.mode === "run"
      ? `${kind === "image" ? "an image" : "a text"} run: adapt it to your own classes, then classify with the adaptation`
      : `an adapted ${kind} model: classify with it`;
    setStatus("server", `This server serves ${what} (metafit ${health.version}).`, "muted");
    if (health.mode === "run") {
      $("adapt-help").textContent = health.kind === "image"
        ? "Name each class and drop a few PNG or JPEG images on it."
        : "Name each class and type a few example sentences, one per line.";
      addClass();
      addClass();
    } else {
      $("adapt-section").hidden = true;
    }
    buildQueries();
    drawModels();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
