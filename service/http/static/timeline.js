// The web page's timeline: a long video's segments (POST /classify with segment_s) as a strip of labels over time,
// coloured by class, with each segment's exit step as a bar. Loaded before app.js, which calls renderTimeline.
"use strict";

const CLASS_COLORS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
  "#9c755f", "#bab0ac"];
window.CLASS_COLORS = CLASS_COLORS; // the browser test reads the colours back
const classColor = (id) => CLASS_COLORS[id % CLASS_COLORS.length];

function timelineNode(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Where a segment sits on the strip, in percent of the video: from its start to the next segment's start (with a
// stride shorter than the segment, the strip shows each from its start on), or to its end.
function span(segment, next, duration) {
  const end = next && next.start_s < segment.end_s ? next.start_s : segment.end_s;
  return [100 * segment.start_s / duration, 100 * (end - segment.start_s) / duration];
}

function segmentBlock(segment, next, duration, K) {
  const [left, width] = span(segment, next, duration);
  const block = timelineNode("div", "seg");
  block.style.left = `${left}%`;
  block.style.width = `${width}%`;
  block.style.background = classColor(segment.class_id);
  Object.assign(block.dataset, { index: segment.index, classId: segment.class_id, exit: segment.exit_step });
  block.title = `${segment.start_s.toFixed(1)}-${segment.end_s.toFixed(1)} s: ${segment.label} ` +
    `${(100 * segment.confidence).toFixed(1)}%, exit ${segment.exit_step} of ${K} (${segment.exit_reason})`;
  const bar = timelineNode("span", "exitbar");
  bar.style.height = `${Math.round(100 * (segment.exit_step + 1) / (K + 1))}%`;
  block.append(bar, timelineNode("span", "exitnum", String(segment.exit_step)));
  return block;
}

function gapBlock(gap, duration) {
  const block = timelineNode("div", "gap");
  block.style.left = `${100 * gap.start_s / duration}%`;
  block.style.width = `${100 * (gap.end_s - gap.start_s) / duration}%`;
  block.title = `${gap.start_s.toFixed(1)}-${gap.end_s.toFixed(1)} s: no frames`;
  return block;
}

function renderTimeline(answer, model) {
  const K = model ? model.num_cubes : Math.max(0, ...answer.segments.map((s) => s.exit_step));
  const duration = Math.max(answer.duration_s, 1e-6);
  document.getElementById("timeline-label").textContent = answer.label;
  document.getElementById("timeline-confidence").textContent =
    `mean probability over the segments ${(100 * answer.confidence).toFixed(1)}%`;
  document.getElementById("timeline-count").textContent =
    `${answer.segments.length} of ${answer.segment_s} s (${answer.duration_s.toFixed(1)} s)`;
  const share = answer.gmacs_all_k ? ` (${(100 * answer.gmacs / answer.gmacs_all_k).toFixed(0)}% of all K)` : "";
  document.getElementById("timeline-gmacs").textContent = `${answer.gmacs.toFixed(4)} GMACs${share}`;
  document.getElementById("timeline-budget").textContent = `${answer.budget} (v${answer.budget_version})`;
  document.getElementById("timeline-time").textContent =
    `${(1000 * answer.timings.total).toFixed(0)} ms (decode ${(1000 * answer.timings.decode).toFixed(0)} ms)`;
  const segments = answer.segments;
  document.getElementById("strip").replaceChildren(
    ...answer.gaps.map((gap) => gapBlock(gap, duration)),
    ...segments.map((s, i) => segmentBlock(s, segments[i + 1], duration, K)),
  );
  document.getElementById("axis").replaceChildren(
    timelineNode("span", "", "0 s"), timelineNode("span", "", `${answer.duration_s.toFixed(1)} s`));
  const seen = new Map(segments.map((s) => [s.class_id, s.label]));
  document.getElementById("legend").replaceChildren(...[...seen].sort((a, b) => a[0] - b[0]).map(([id, label]) => {
    const item = timelineNode("li", "", label);
    item.style.setProperty("--swatch", classColor(id));
    return item;
  }));
  const end = document.getElementById("timeline-end");
  end.textContent = answer.ended_at_s != null ? `ended at ${answer.ended_at_s.toFixed(1)} s: ${answer.end_reason}` : "";
  end.classList.toggle("hidden", answer.ended_at_s == null);
  const panel = document.getElementById("timeline");
  panel.dataset.requestId = answer.request_id;
  panel.classList.remove("hidden");
}

window.renderTimeline = renderTimeline;
