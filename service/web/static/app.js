// ebmm web page: pick a model, store images in a session, damage a query, watch the read restore it.
// Plain browser JavaScript, no external scripts; every call goes to this server's REST API.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], model: null, samples: null, tray: [], session: null,
                base: null, damaged: null, result: null, frames: [], timer: null };

// ---- API ------------------------------------------------------------------------------------
function headers(json = true) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const key = $("api-key").value.trim();
  if (key) h["X-API-Key"] = key;
  return h;
}

async function api(method, path, body) {
  let r;
  try {
    r = await fetch(path, { method, headers: headers(body !== undefined),
                            body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new Error(`${method} ${path}: the server did not answer (${e.message})`);
  }
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!r.ok) {
    if (data && data.detail) {
      const where = data.field ? ` [field ${data.field}]` : "";
      const retry = r.headers.get("Retry-After") ? ` Retry after ${r.headers.get("Retry-After")} s.` : "";
      throw new Error(`${r.status} ${data.title}: ${data.detail}${where}${retry}`);
    }
    throw new Error(`${r.status} ${r.statusText}: ${text.slice(0, 200)}`);
  }
  return data;
}

function showError(e) {
  const box = $("error");
  box.textContent = e instanceof Error ? e.message : String(e);
  box.hidden = false;
}
function clearError() { $("error").hidden = true; $("error").textContent = ""; }
async function guarded(fn) {
  clearError();
  try { await fn(); } catch (e) { showError(e); }
}

// ---- images on 32x32 canvases ------------------------------------------------------------------
const dataUrl = (b64) => (b64.startsWith("data:") ? b64 : "data:image/png;base64," + b64);
function shape() { return state.model ? state.model.input_shape : [1, 32, 32]; }
function isColour() { return shape()[0] === 3; }
function isBinary() { return state.model && state.model.kind === "binary"; }

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("could not decode that image"));
    img.src = src;
  });
}

// -> ImageData of the model's size, converted like the server does (grey, binarised for binary models)
async function toModelPixels(src) {
  const [, h, w] = shape();
  const img = await loadImage(src);
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  const ctx = c.getContext("2d");
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(img, 0, 0, w, h);
  const d = ctx.getImageData(0, 0, w, h);
  if (!isColour()) {
    for (let i = 0; i < d.data.length; i += 4) {
      let g = 0.299 * d.data[i] + 0.587 * d.data[i + 1] + 0.114 * d.data[i + 2];
      if (isBinary()) g = g >= 127.5 ? 255 : 0;
      d.data[i] = d.data[i + 1] = d.data[i + 2] = g; d.data[i + 3] = 255;
    }
  }
  return d;
}

function pixelsToUrl(d) {
  const c = document.createElement("canvas");
  c.width = d.width; c.height = d.height;
  c.getContext("2d").putImageData(d, 0, 0);
  return c.toDataURL("image/png");
}

function meanBrightness(d) {
  let s = 0;
  for (let i = 0; i < d.data.length; i += 4) s += d.data[i];
  return s / (d.data.length / 4) / 255;
}

// ---- models -----------------------------------------------------------------------------------
let modelsLoads = 0;   // a newer load of the model list wins; an older answer arriving later is dropped

async function loadModels() {
  const seq = ++modelsLoads;
  const data = await api("GET", "/v1/models");
  if (seq !== modelsLoads) return;
  state.models = data.models.filter((m) => m.input_shape.length === 3);
  const sel = $("model");
  const previous = sel.value;   // a reload keeps the model the user picked
  const keep = state.models.some((m) => m.name === previous);
  sel.innerHTML = "";
  for (const m of state.models) {
    const o = document.createElement("option");
    o.value = m.name; o.textContent = `${m.name} (${m.kind}, ${m.memory_floats.toLocaleString()} memory floats)`;
    if (keep ? m.name === previous : m.default) o.selected = true;
    sel.appendChild(o);
  }
  const others = data.models.filter((m) => m.input_shape.length !== 3).map((m) => m.name);
  if (others.length) $("credits").textContent = `Also served, through the API only: ${others.join(", ")} (bit strings).`;
  pickModel();
}

function pickModel() {
  const before = state.model ? state.model.name : null;
  state.model = state.models.find((m) => m.name === $("model").value) || state.models[0] || null;
  const m = state.model;
  if (!m) { $("model-info").textContent = "This server has no image model."; return; }
  $("model-info").textContent = `${m.description || m.architecture} · input ${m.input_shape.join("×")} · ` +
    (m.capacity_patterns ? `holds up to ${m.capacity_patterns} patterns apart` : "capacity graded (no hard limit)");
  $("draw-tools").hidden = isColour();
  $("convention").textContent = isColour()
    ? "Colour photos: any image is resized to 32×32 and stored as RGB."
    : "Characters: white strokes on a black background, binarised at 0.5. Dark-on-light images are stored as they are, which this memory was not trained on (the server warns).";
  if (m.name === before) return;              // the same model (a reload of the list): keep the tray
  state.tray = []; state.session = null; renderTray(); $("session-info").textContent = "";
}

// ---- the tray of images to store ----------------------------------------------------------------
function renderTray() {
  const tray = $("tray");
  tray.innerHTML = "";
  state.tray.forEach((item, i) => {
    const f = document.createElement("figure");
    const img = document.createElement("img");
    img.src = item.url; img.alt = `pattern ${i}`; img.dataset.index = i;
    if (state.base === i) img.classList.add("selected");
    img.addEventListener("click", () => guarded(() => chooseQuery(i)));
    f.appendChild(img);
    const cap = document.createElement("figcaption"); cap.textContent = String(i);
    f.appendChild(cap);
    tray.appendChild(f);
  });
  $("write-btn").disabled = state.tray.length === 0;
}

async function addImage(src) {
  const d = await toModelPixels(src);
  state.tray.push({ url: pixelsToUrl(d), pixels: d, bright: meanBrightness(d) });
}

async function addSamples() {
  if (!state.samples) state.samples = await (await fetch("/ui/samples.json")).json();
  const set = isColour() ? state.samples.photos : state.samples.characters;
  for (const src of set.images) await addImage(src);
  $("credits").textContent = `Built-in samples: held-out ${isColour() ? "photos" : "characters"}, ${set.licence}.`;
  state.session = null; renderTray();
}

// ---- drawing (characters) --------------------------------------------------------------------------
function setupCanvasPainting(canvas, paint) {
  let down = false;
  const at = (ev) => {
    const r = canvas.getBoundingClientRect();
    return [Math.floor((ev.clientX - r.left) / r.width * canvas.width),
            Math.floor((ev.clientY - r.top) / r.height * canvas.height)];
  };
  canvas.addEventListener("pointerdown", (ev) => { down = true; canvas.setPointerCapture(ev.pointerId); paint(...at(ev)); });
  canvas.addEventListener("pointermove", (ev) => { if (down) paint(...at(ev)); });
  canvas.addEventListener("pointerup", () => { down = false; });
}

function clearDrawing() {
  const ctx = $("draw-canvas").getContext("2d");
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, 32, 32);
}

// ---- the query: a stored image, damaged ---------------------------------------------------------
function cloneImageData(d) { return new ImageData(new Uint8ClampedArray(d.data), d.width, d.height); }

function chooseQuery(i) {
  if (!state.session) throw new Error("write a session first: the query is compared with what is stored");
  state.base = i;
  state.query = cloneImageData(state.tray[i].pixels);
  state.damaged = new Uint8Array(state.query.width * state.query.height);
  drawQuery(); renderTray();
}

function drawQuery() {
  if (state.query) $("query-canvas").getContext("2d").putImageData(state.query, 0, 0);
}

function noisePixel(x, y) {
  const q = state.query;
  if (!q || x < 0 || y < 0 || x >= q.width || y >= q.height) return;
  const i = (y * q.width + x) * 4;
  for (let c = 0; c < 3; c++) {
    let v = Math.random() * 255;
    if (isBinary()) v = v >= 127.5 ? 255 : 0;
    q.data[i + c] = isColour() ? v : (c === 0 ? v : q.data[i]);
  }
  q.data[i + 3] = 255;
  state.damaged[y * q.width + x] = 1;
}

function randomBlock() {
  if (!state.query) throw new Error("pick a stored image as the query first (click one in the tray)");
  const q = state.query, size = Math.min(16, q.width, q.height);
  const x0 = Math.floor(Math.random() * (q.width - size + 1)), y0 = Math.floor(Math.random() * (q.height - size + 1));
  for (let y = y0; y < y0 + size; y++) for (let x = x0; x < x0 + size; x++) noisePixel(x, y);
  drawQuery();
}

function maskUrl() {
  const q = state.query, d = new ImageData(q.width, q.height);
  for (let p = 0; p < q.width * q.height; p++) {
    const v = state.damaged[p] ? 0 : 255;
    d.data[4 * p] = d.data[4 * p + 1] = d.data[4 * p + 2] = v; d.data[4 * p + 3] = 255;
  }
  return pixelsToUrl(d);
}

// ---- write and retrieve ---------------------------------------------------------------------------
async function writeSession() {
  if (!state.tray.length) throw new Error("add some images first");
  const body = { model: state.model.name, patterns: { images: state.tray.map((t) => t.url) } };
  const s = await api("POST", "/v1/sessions", body);
  state.session = s; state.base = null;
  $("session-info").textContent = `session ${s.session_id.slice(0, 10)}… holds ${s.patterns} patterns in ` +
    `${s.memory_bytes.toLocaleString()} bytes of written weights (expires ${s.expires_at})`;
  $("session-info").dataset.sessionId = s.session_id;
  $("write-warnings").textContent = (s.warnings || []).join(" ");
  renderTray();
}

function intField(id) { const v = $(id).value.trim(); return v === "" ? null : Number(v); }

async function retrieve() {
  if (!state.session) throw new Error("write a session first");
  if (!state.query) throw new Error("pick a stored image as the query first (click one in the tray)");
  const body = { queries: { images: [pixelsToUrl(state.query)] }, trajectory: true, output: "png" };
  if ($("use-mask").checked) body.mask = { images: [maskUrl()] };
  for (const [id, key] of [["steps", "steps"], ["top-k", "top_k"], ["samples", "samples"]]) {
    const v = intField(id); if (v !== null) body[key] = v;
  }
  if (body.samples) body.temperature = Number($("temperature").value);
  const r = await api("POST", `/v1/sessions/${state.session.session_id}/retrieve`, body);
  showResult(r.results[0], r);
}

function showResult(res, whole) {
  $("result").hidden = false;
  state.frames = (res.trajectory || [res.pattern]).map(dataUrl);
  state.energies = res.energies;
  $("result-img").src = dataUrl(res.pattern);
  $("download").href = dataUrl(res.pattern);
  $("original-img").src = state.tray[state.base].url;
  const slider = $("traj-slider");
  slider.max = String(state.frames.length - 1);
  const m = res.match === null ? "" : (res.match ? " · a match: this looks stored" : " · not a match: this may never have been stored");
  const fam = $("familiarity");
  fam.innerHTML = "";
  fam.append(`familiarity ${res.familiarity.toFixed(4)}` + (whole.match_threshold != null ? ` (threshold ${whole.match_threshold.toFixed(4)})` : ""));
  const span = document.createElement("span");
  span.className = res.match ? "match" : "nomatch"; span.textContent = m;
  fam.append(span);
  fam.append(` · energy ${res.energies[0].toFixed(2)} → ${res.energy.toFixed(2)} in ${whole.steps} steps` +
             (whole.masked ? " · known pixels kept fixed" : ""));
  thumbs("candidates", "candidates-box", res.candidates);
  thumbs("sample-list", "samples-box", res.samples);
  play();
}

function thumbs(listId, boxId, items) {
  $(boxId).hidden = !items;
  const list = $(listId);
  list.innerHTML = "";
  for (const c of items || []) {
    const f = document.createElement("figure");
    const img = document.createElement("img"); img.src = dataUrl(c.pattern);
    const cap = document.createElement("figcaption");
    cap.textContent = `${c.familiarity.toFixed(3)}${c.match ? " ✓" : ""}`;
    f.append(img, cap); list.appendChild(f);
  }
}

function showFrame(k) {
  $("traj-img").src = state.frames[k];
  $("traj-slider").value = String(k);
  $("traj-label").textContent = k === 0 ? "query" : `step ${k} of ${state.frames.length - 1}`;
  drawEnergy(k);
}

function play() {
  clearInterval(state.timer);
  let k = 0;
  showFrame(0);
  state.timer = setInterval(() => {
    k += 1;
    if (k >= state.frames.length) { clearInterval(state.timer); return; }
    showFrame(k);
  }, 350);
}

function drawEnergy(current) {
  const c = $("energy-canvas"), ctx = c.getContext("2d"), e = state.energies || [];
  ctx.clearRect(0, 0, c.width, c.height);
  if (e.length < 2) return;
  const lo = Math.min(...e), hi = Math.max(...e), pad = 28;
  const X = (k) => pad + k / (e.length - 1) * (c.width - 2 * pad);
  const Y = (v) => hi === lo ? c.height / 2 : pad + (hi - v) / (hi - lo) * (c.height - 2 * pad);
  ctx.strokeStyle = "#999"; ctx.beginPath(); ctx.moveTo(pad, pad); ctx.lineTo(pad, c.height - pad);
  ctx.lineTo(c.width - pad, c.height - pad); ctx.stroke();
  ctx.strokeStyle = "#2c6fbb"; ctx.lineWidth = 2; ctx.beginPath();
  e.forEach((v, k) => (k ? ctx.lineTo(X(k), Y(v)) : ctx.moveTo(X(k), Y(v)))); ctx.stroke();
  e.forEach((v, k) => {
    ctx.fillStyle = k === current ? "#e67e22" : "#2c6fbb";
    ctx.beginPath(); ctx.arc(X(k), Y(v), k === current ? 6 : 3, 0, 2 * Math.PI); ctx.fill();
  });
  ctx.fillStyle = "#333"; ctx.font = "12px sans-serif";
  ctx.fillText(hi.toFixed(1), 2, pad - 6); ctx.fillText(lo.toFixed(1), 2, c.height - pad + 16);
  ctx.fillText("read step →", c.width - 90, c.height - 6);
}

// ---- wiring ----------------------------------------------------------------------------------------
function init() {
  $("api-key").value = localStorage.getItem("ebmm-api-key") || "";
  $("api-key").addEventListener("change", () => { localStorage.setItem("ebmm-api-key", $("api-key").value); guarded(loadModels); });
  $("model").addEventListener("change", pickModel);
  $("sample-btn").addEventListener("click", () => guarded(addSamples));
  $("upload").addEventListener("change", (ev) => guarded(async () => {
    for (const f of ev.target.files) await addImage(URL.createObjectURL(f));
    ev.target.value = ""; state.session = null; renderTray();
  }));
  clearDrawing();
  setupCanvasPainting($("draw-canvas"), (x, y) => {
    const ctx = $("draw-canvas").getContext("2d"); ctx.fillStyle = "#fff"; ctx.fillRect(x - 1, y - 1, 2, 2);
  });
  $("draw-add").addEventListener("click", () => guarded(async () => {
    await addImage($("draw-canvas").toDataURL("image/png")); clearDrawing(); state.session = null; renderTray();
  }));
  $("draw-clear").addEventListener("click", clearDrawing);
  $("tray-clear").addEventListener("click", () => { state.tray = []; state.session = null; state.base = null; renderTray(); });
  $("write-btn").addEventListener("click", () => guarded(writeSession));
  $("block-btn").addEventListener("click", () => guarded(async () => randomBlock()));
  $("query-reset").addEventListener("click", () => guarded(async () => {
    if (state.base !== null) chooseQuery(state.base);
  }));
  setupCanvasPainting($("query-canvas"), (x, y) => {
    const r = Number($("brush").value);
    for (let dy = -Math.floor(r / 2); dy < Math.ceil(r / 2); dy++)
      for (let dx = -Math.floor(r / 2); dx < Math.ceil(r / 2); dx++) noisePixel(x + dx, y + dy);
    drawQuery();
  });
  $("retrieve-btn").addEventListener("click", () => guarded(retrieve));
  $("play-btn").addEventListener("click", play);
  $("traj-slider").addEventListener("input", (ev) => { clearInterval(state.timer); showFrame(Number(ev.target.value)); });
  renderTray();
  guarded(loadModels);
}

init();
