// The AdaFocusV3 web page: upload a video, see the answer, the prediction after each cube and where the model
// looked. Plain JavaScript (no build step, no CDN); it uses the public HTTP API only.
"use strict";

const CUBE_COLORS = ["#ff1744", "#00e676", "#2979ff", "#ffea00", "#d500f9", "#00e5ff", "#ff9100", "#76ff03"];
window.CUBE_COLORS = CUBE_COLORS; // the browser test reads the colours back from the canvases
const FRAME_PX = 144; // frames are drawn at this width in the film strip
const STEP_PX = 120; // and at this width in the step cards

const KEY_STORE = "adafocus-api-key"; // sessionStorage: the key is forgotten when the tab closes
const state = { model: null, file: null, metrics: null };
const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const id = response.headers.get("x-request-id");
    const text = body && body.code ? `${response.status} ${body.code}: ${body.message}` : `${response.status} ${body}`;
    throw new ApiError(id ? `${text} (request ${id})` : text, response.status);
  }
  return body;
}

const pct = (p) => `${(100 * p).toFixed(p >= 0.9995 || p < 0.001 ? 2 : 1)}%`;
const ms = (s) => `${(1000 * s).toFixed(s < 0.1 ? 1 : 0)} ms`;
const gm = (g) => `${g.toFixed(4)} GMACs`;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

// ------------------------------------------------------------------------------------------- server state
async function loadModel() {
  const server = await api("/v2");
  const name = server.models[0];
  const meta = await api(`/v2/models/${encodeURIComponent(name)}`);
  state.model = meta;
  $("model-name").textContent = `${meta.name} (${meta.backend}, ${meta.device})`;
  $("geometry").textContent = `${meta.num_frames} frames of ${meta.frame_size} x ${meta.frame_size} pixels`;
  $("k").textContent = `K = ${meta.num_cubes}`;
  $("model-info").textContent =
    `${meta.labels.length} classes · cubes ${meta.cube_size} x ${meta.cube_size} px x ${meta.cube_frames} frames · ` +
    `GMACs per exit ${meta.exit_gmacs.map((g) => g.toFixed(4)).join(", ")} · bundle sha256 ${meta.sha256}`;
}

async function loadBudget() {
  const budget = await api("/budget");
  $("active-budget").textContent = `${budget.name} (v${budget.version})`;
  const select = $("budget");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "", text: `the server's active level (${budget.name})` }));
  for (const level of budget.levels) {
    const text = `${level.name}: ~${level.expected_gmacs.toFixed(4)} GMACs/video, ${pct(level.expected_accuracy)} ` +
      "on the calibration split";
    select.append(el("option", { value: level.name, text }));
  }
  select.value = chosen;
}

function metricSum(text, name, labels = {}) {
  let total = 0;
  let seen = false;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const match = line.match(/^([a-z_]+)(\{[^}]*\})?\s+(\S+)/);
    if (!match || match[1] !== name) continue;
    const ok = Object.entries(labels).every(([k, v]) => (match[2] || "").includes(`${k}="${v}"`));
    if (ok) { total += Number(match[3]); seen = true; }
  }
  return seen ? total : null;
}

async function pollMetrics() {
  try {
    const text = await api("/metrics");
    const now = performance.now() / 1000;
    const answered = metricSum(text, "adafocus_requests_total", { status: "200" }) || 0;
    if (state.metrics !== null && now > state.metrics.at) {
      const rate = (answered - state.metrics.answered) / (now - state.metrics.at);
      $("throughput").textContent = `${rate.toFixed(1)} videos/s`;
    }
    state.metrics = { at: now, answered };
    const queue = metricSum(text, "adafocus_queue_depth");
    const active = metricSum(text, "adafocus_active_requests");
    $("queue").textContent = `${queue ?? "-"} · ${active ?? "-"}`;
  } catch (error) {
    $("throughput").textContent = "unavailable";
  }
}

async function pollReady() {
  try {
    const response = await fetch("/v2/health/ready");
    $("ready").textContent = response.ok ? "ready" : "not ready";
  } catch (error) {
    $("ready").textContent = "unreachable";
  }
}

// ------------------------------------------------------------------------------------------- upload
// The API key field: only /classify needs one (a server with ADAFOCUS_API_KEYS_FILE); never sent elsewhere.
function apiKeyHeaders() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

function chooseFile(file) {
  state.file = file || null;
  $("drop-text").textContent = file ? `${file.name} (${(file.size / 1024).toFixed(0)} KiB)` :
    "Drop a video here, or click to choose one";
  $("submit").disabled = !file;
}

async function classify(event) {
  event.preventDefault();
  if (!state.file) return;
  const form = new FormData();
  form.append("video", state.file, state.file.name);
  if ($("budget").value) form.append("budget", $("budget").value);
  const segment = $("segment").value.trim();
  if (segment) {
    form.append("segment_s", segment); // a timeline (timeline.js draws it)
  } else {
    form.append("explain", "true");
    form.append("frames", "true");
  }
  $("submit").disabled = true;
  $("submit").textContent = "Classifying…";
  $("error").classList.add("hidden");
  try {
    const answer = await api("/classify", { method: "POST", body: form, headers: apiKeyHeaders() });
    if (answer.segments) {
      $("result").classList.add("hidden");
      renderTimeline(answer, state.model);
      document.body.dataset.state = "answered";
    } else {
      $("timeline").classList.add("hidden");
      await render(answer);
    }
  } catch (error) {
    $("result").classList.add("hidden");
    $("error").textContent = error.message;
    $("error").classList.remove("hidden");
    if (error.status === 401 || error.status === 403) $("api-key").focus(); // a key is needed, or this one is wrong
  } finally {
    $("submit").disabled = !state.file;
    $("submit").textContent = "Classify";
  }
}

// ------------------------------------------------------------------------------------------- the answer
function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("a frame could not be shown"));
    image.src = url;
  });
}

function drawCube(ctx, cube, index, scale) {
  const x = Math.round(cube.x * scale), y = Math.round(cube.y * scale), side = Math.round(cube.size * scale);
  ctx.save();
  ctx.strokeStyle = CUBE_COLORS[index % CUBE_COLORS.length];
  ctx.lineWidth = 2;
  if (cube.skipped) ctx.setLineDash([4, 3]);
  ctx.strokeRect(x, y, side, side);
  ctx.fillStyle = ctx.strokeStyle;
  ctx.font = "bold 11px system-ui, sans-serif";
  ctx.fillText(String(index + 1), x + 3, y + 12);
  ctx.restore();
}

// One frame with the cubes that cover it; data-* attributes say what was drawn (the browser test reads them).
function frameCanvas(image, t, cubes, width) {
  const scale = width / image.width;
  const canvas = el("canvas", { class: "frame", "data-frame": t, "data-scale": scale });
  canvas.width = width;
  canvas.height = Math.round(image.height * scale);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  let drawn = 0;
  cubes.forEach((cube, index) => {
    if (cube.t <= t && t < cube.t + cube.frames) { drawCube(ctx, cube, index, scale); drawn += 1; }
  });
  canvas.dataset.cubes = String(drawn);
  return canvas;
}

function zoomCanvas(image, cube, width) {
  const canvas = el("canvas", { class: "zoom", title: "the cube's pixels, enlarged" });
  canvas.width = canvas.height = width;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(image, cube.x, cube.y, cube.size, cube.size, 0, 0, width, width);
  return canvas;
}

function glanceCanvas(image, glanceSize, width) {
  // what the glance sees: the frame at the glance's low resolution
  const small = document.createElement("canvas");
  small.width = small.height = glanceSize;
  small.getContext("2d").drawImage(image, 0, 0, glanceSize, glanceSize);
  const canvas = el("canvas", { class: "glance", title: `the glance's ${glanceSize} x ${glanceSize} view` });
  canvas.width = canvas.height = width;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(small, 0, 0, width, width);
  return canvas;
}

function stepCard(step, answer, images) {
  const criterion = state.model ? state.model.criterion : "entropy";
  const cube = step.exit > 0 ? answer.cubes[step.exit - 1] : null;
  const title = step.exit === 0 ? "Glance (whole clip, low resolution)" : `Cube ${step.exit}`;
  const badge = el("span", { class: `badge ${step.exited ? "stop" : "go"}`, text: step.exited ? "exit" : "go on" });
  const card = el("li", { class: `step${step.exited ? " exited" : ""}`, "data-exit": step.exit });
  card.append(el("h3", {}, el("span", { text: title }), badge));
  const views = el("div", { class: "views" });
  const middle = Math.floor(images.length / 2);
  if (cube) {
    const t = Math.min(images.length - 1, cube.t + Math.floor(cube.frames / 2));
    // this cube alone, in its film-strip colour, on the middle one of its frames; then its pixels enlarged
    const only = answer.cubes.map((c, i) => (i === step.exit - 1 ? c : { ...c, frames: 0 }));
    views.append(frameCanvas(images[t], t, only, STEP_PX), zoomCanvas(images[t], cube, 72));
  } else if (images.length && state.model) {
    views.append(glanceCanvas(images[middle], state.model.glance_size, STEP_PX));
  }
  card.append(views);
  card.append(el("div", { class: "pred", text: `${step.label} · ${pct(step.confidence)}` }));
  const name = criterion === "entropy" ? "entropy" : "max prob";
  let rule = `${name} ${step.score.toFixed(4)}`;
  if (step.threshold !== null) {
    const passes = criterion === "entropy" ? step.score <= step.threshold : step.score >= step.threshold;
    const sign = passes ? (criterion === "entropy" ? "≤" : "≥") : (criterion === "entropy" ? ">" : "<");
    rule += ` ${sign} η${step.exit} ${step.threshold.toFixed(4)}`;
    if (step.threshold === 0 && criterion === "entropy" && step.exit < answer.steps.length) rule += " (no exit here)";
  }
  card.append(el("div", { text: rule }));
  card.append(el("div", { class: "sub", text: `${gm(step.gmacs)} so far` }));
  return card;
}

async function render(answer) {
  const K = state.model ? state.model.num_cubes : answer.cubes.length;
  $("answer-label").textContent = answer.label;
  $("answer-confidence").textContent = `confidence ${pct(answer.confidence)}`;
  $("answer-exit").textContent = answer.exit_step === 0 ? "after the glance" :
    `after cube ${answer.exit_step} of ${K} (${answer.exit_reason === "confident" ? "confident" : "all cubes used"})`;
  const full = state.model ? state.model.exit_gmacs[state.model.exit_gmacs.length - 1] : null;
  $("answer-gmacs").textContent = gm(answer.gmacs) + (full ? ` (${pct(answer.gmacs / full)} of all K cubes)` : "");
  $("answer-budget").textContent = `${answer.budget} (v${answer.budget_version})`;
  const t = answer.timings;
  $("answer-time").textContent = `${ms(t.total)} (decode ${ms(t.decode)}, queue ${ms(t.queue)}, model ${ms(t.compute)})`;
  $("answer-request").textContent = answer.request_id;

  $("topk").replaceChildren(...answer.top_k.map((entry) => {
    const bar = el("div", { class: "bar" }, el("span"));
    bar.firstChild.style.width = `${(100 * entry.probability).toFixed(2)}%`;
    return el("li", {}, el("span", { text: entry.label }), bar, el("span", { class: "num", text: pct(entry.probability) }));
  }));

  const images = await Promise.all((answer.frames || []).map(loadImage));
  const cubes = answer.cubes || [];
  $("steps").replaceChildren(...(answer.steps || []).map((step) => stepCard(step, answer, images)));
  $("frames").replaceChildren(...images.map((image, t) =>
    el("figure", {}, frameCanvas(image, t, cubes, FRAME_PX), el("figcaption", { text: `frame ${t}` }))));
  $("result").classList.remove("hidden");
  $("result").dataset.requestId = answer.request_id;
  $("result").dataset.cubes = JSON.stringify(cubes);
  document.body.dataset.state = "answered";
  loadBudget().catch(() => {});
  pollMetrics();
}

// ------------------------------------------------------------------------------------------- start
function start() {
  const drop = $("drop");
  $("file").addEventListener("change", () => chooseFile($("file").files[0]));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) chooseFile(event.dataTransfer.files[0]);
  });
  $("form").addEventListener("submit", classify);
  $("api-key").value = sessionStorage.getItem(KEY_STORE) || "";
  $("api-key").addEventListener("input", () => sessionStorage.setItem(KEY_STORE, $("api-key").value.trim()));
  Promise.all([loadModel(), loadBudget()]).then(() => { document.body.dataset.state = "loaded"; }).catch((error) => {
    $("error").textContent = `the server did not answer: ${error.message}`;
    $("error").classList.remove("hidden");
  });
  pollMetrics();
  pollReady();
  setInterval(pollMetrics, 2000);
  setInterval(pollReady, 5000);
  setInterval(() => loadBudget().catch(() => {}), 5000);
}

document.addEventListener("DOMContentLoaded", start);
