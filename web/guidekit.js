// GuideKit frontend extension: a badge with each node's extra model passes per step, a layer picker that
// lists the connected model's real attention layers, and the active range drawn on the sampler's schedule.
// Plain JavaScript, loaded by the ComfyUI frontend from the pack's WEB_DIRECTORY; no build step.
// Server side: nodes/web_routes.py (GET /guidekit/costs, /guidekit/model, /guidekit/schedule).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PREFIX = "GuideKit";
const STRIP_HEIGHT = 30;           // px below the widgets for the schedule strip
let COSTS = {};                    // node id → cost entry (nodes/costs.py)
let LOADERS = {};                  // loader node type → [model folder, file widget]

const widget = (node, name) => node.widgets?.find((w) => w.name === name);
const value = (node, name) => widget(node, name)?.value;

async function getJSON(path, params) {
  const query = params ? "?" + new URLSearchParams(params).toString() : "";
  const response = await api.fetchApi(path + query);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `${path}: HTTP ${response.status}`);
  return body;
}

// ---- Cost badge -----------------------------------------------------------------------------------

/** "+1 pass/step" etc. from the cost table and the node's current widget values. */
export function badgeText(nodeType, widgets) {
  const entry = COSTS[nodeType];
  if (!entry) return null;
  let passes = entry.extra_passes;
  for (const rule of entry.overrides || []) {
    if (widgets[rule.widget] === rule.value) passes = rule.extra_passes;
  }
  const times = entry.times && Number(widgets[entry.times]) > 1 ? ` ×${widgets[entry.times]}` : "";
  if (passes === "gradient") return `+grad pass/step${times}`;
  return `+${passes} pass${passes === 1 ? "" : "es"}/step${times}`;
}

function widgetValues(node) {
  return Object.fromEntries((node.widgets || []).map((w) => [w.name, w.value]));
}

function drawBadge(node, ctx) {
  const text = badgeText(node.comfyClass, widgetValues(node));
  node.guidekit.badge = text;
  if (!text || node.flags?.collapsed) return;
  ctx.save();
  ctx.font = "11px sans-serif";
  const w = ctx.measureText(text).width + 10;
  const titleHeight = LiteGraph.NODE_TITLE_HEIGHT || 30;
  ctx.fillStyle = text.startsWith("+0") ? "#2f6b3a" : "#8a5a12";
  ctx.beginPath();
  ctx.roundRect(node.size[0] - w - 6, -titleHeight + 7, w, 16, 4);
  ctx.fill();
  ctx.fillStyle = "#fff";
  ctx.fillText(text, node.size[0] - w - 1, -titleHeight + 19);
  ctx.restore();
}

// ---- Graph walking -----------------------------------------------------------------------------------

function linkOf(graph, id) {
  return graph.getLink ? graph.getLink(id) : graph.links?.[id];
}

/** The loader upstream of the node's MODEL input: {folder, name, type} or null. */
export function upstreamLoader(node, seen = new Set()) {
  const graph = node.graph || app.graph;
  if (!node || seen.has(node.id)) return null;
  seen.add(node.id);
  const loader = LOADERS[node.comfyClass || node.type];
  if (loader) return { folder: loader[0], name: value(node, loader[1]), type: node.type };
  const input = node.inputs?.find((i) => i.type === "MODEL" && i.link != null);
  const link = input && linkOf(graph, input.link);
  return link ? upstreamLoader(graph.getNodeById(link.origin_id), seen) : null;
}

/** The sampler settings downstream of the node (KSampler-like, or a scheduler node in a custom graph). */
export function downstreamSampler(node) {
  const graph = node.graph || app.graph;
  const queue = [node], seen = new Set();
  while (queue.length) {
    const n = queue.shift();
    if (!n || seen.has(n.id)) continue;
    seen.add(n.id);
    if (n !== node && widget(n, "steps") && widget(n, "scheduler")) {
      return { steps: value(n, "steps"), scheduler: value(n, "scheduler"),
               sampler: value(n, "sampler_name") || "euler", denoise: value(n, "denoise") ?? 1.0, node: n.type };
    }
    for (const out of n.outputs || []) {
      for (const id of out.links || []) {
        const link = linkOf(graph, id);
        if (link) queue.push(graph.getNodeById(link.target_id));
      }
    }
  }
  const scheduler = graph.nodes?.find((n) => widget(n, "steps") && widget(n, "scheduler"));
  if (scheduler) return { steps: value(scheduler, "steps"), scheduler: value(scheduler, "scheduler"),
                          sampler: "euler", denoise: value(scheduler, "denoise") ?? 1.0, node: scheduler.type };
  return { steps: 20, scheduler: "normal", sampler: "euler", denoise: 1.0, node: null };
}

// ---- Schedule strip ----------------------------------------------------------------------------------

function scheduleRequest(node) {
  const loader = upstreamLoader(node);
  const sampler = downstreamSampler(node);
  const params = { steps: sampler.steps, scheduler: sampler.scheduler, sampler: sampler.sampler,
                   denoise: sampler.denoise, start_percent: value(node, "start_percent"),
                   end_percent: value(node, "end_percent"), node: node.title || node.type };
  for (const name of ["sigma_start", "sigma_end"]) if (widget(node, name)) params[name] = value(node, name);
  if (loader?.name) Object.assign(params, { folder: loader.folder, name: loader.name });
  return { params, loader, sampler };
}

function refreshSchedule(node) {
  const { params, loader, sampler } = scheduleRequest(node);
  const key = JSON.stringify(params);
  if (key === node.guidekit.scheduleKey) return;
  node.guidekit.scheduleKey = key;
  getJSON("/guidekit/schedule", params).then(
    (s) => { if (node.guidekit.scheduleKey === key) node.guidekit.schedule = { ...s, loader, sampler, error: null }; },
    (e) => { if (node.guidekit.scheduleKey === key) node.guidekit.schedule = { error: e.message, loader, sampler }; },
  ).finally(() => node.setDirtyCanvas?.(true, false));
}

function drawSchedule(node, ctx) {
  if (node.flags?.collapsed) return;
  const needed = node.computeSize()[1] + STRIP_HEIGHT;
  if (node.size[1] < needed) node.setSize([node.size[0], needed]);    // a saved size without the strip
  refreshSchedule(node);
  const s = node.guidekit.schedule;
  if (!s) return;
  const x0 = 10, width = node.size[0] - 20, y = node.size[1] - STRIP_HEIGHT + 4;
  ctx.save();
  ctx.font = "10px sans-serif";
  if (s.error) {
    ctx.fillStyle = "#d66";
    ctx.fillText(s.error.slice(0, 70), x0, y + 10);
    ctx.restore();
    return;
  }
  const n = s.active.length, cell = width / n;
  s.active.forEach((on, i) => {
    ctx.fillStyle = on ? "#d9a441" : "#444";
    ctx.fillRect(x0 + i * cell + 0.5, y, Math.max(cell - 1, 1), 8);
  });
  const first = s.active.indexOf(true), last = s.active.lastIndexOf(true);
  const sig = (i) => s.sigmas[i].toFixed(2);
  ctx.fillStyle = "#bbb";
  const where = s.loader ? "" : " (no loader found: SD1.5 schedule)";
  const text = first < 0 ? `inactive on all ${n} steps${where}`
    : `active steps ${first + 1}-${last + 1} of ${n}, σ ${sig(first)}→${sig(last)}${where}`;
  ctx.fillText(text, x0, y + 20);
  ctx.restore();
}

// ---- Layer picker ------------------------------------------------------------------------------------

function closeDialog() {
  document.getElementById("guidekit-layer-picker")?.remove();
}

async function openLayerPicker(node, layerWidget, single) {
  closeDialog();
  const box = document.createElement("div");
  box.id = "guidekit-layer-picker";
  Object.assign(box.style, { position: "fixed", left: "50%", top: "12%", transform: "translateX(-50%)",
    background: "#222", color: "#ddd", border: "1px solid #666", borderRadius: "6px", padding: "12px",
    zIndex: 10000, maxHeight: "70vh", overflowY: "auto", minWidth: "320px", font: "13px sans-serif" });
  document.body.appendChild(box);
  const loader = upstreamLoader(node);
  if (!loader?.name) {
    box.innerHTML = "<b>No model loader found</b><p>Connect this node's model input (through any model patches) " +
      "to Load Checkpoint, Load Diffusion Model or the GuideKit MNIST loader to list its attention layers.</p>";
    box.appendChild(button("Close", closeDialog));
    return;
  }
  let info;
  try {
    info = await getJSON("/guidekit/model", { folder: loader.folder, name: loader.name, layers: layerWidget.value });
  } catch (e) {
    box.innerHTML = `<b>Cannot read ${loader.name}</b><p>${e.message}</p>`;
    box.appendChild(button("Close", closeDialog));
    return;
  }
  const selected = new Set(info.selected || []);
  box.innerHTML = `<b>${node.title}: ${single ? "layer" : "layers"}</b><div style="opacity:.7;margin:4px 0 8px">` +
    `${loader.name} — ${info.model_type}, ${info.layers.length} self-attention layers; default ${
    single ? info.default_sag_layer : info.default_layers}</div>`;
  if (info.selected_error) box.innerHTML += `<div style="color:#d66">${info.selected_error}</div>`;
  const list = document.createElement("div");
  const groups = {};
  for (const layer of info.layers) (groups[layer.split(".")[0]] ||= []).push(layer);
  for (const [place, layers] of Object.entries(groups)) {
    const row = document.createElement("div");
    row.innerHTML = `<div style="margin-top:6px;font-weight:bold">${place}</div>`;
    for (const layer of layers) {
      const label = document.createElement("label");
      label.style.cssText = "display:inline-block;margin:2px 10px 2px 0;white-space:nowrap";
      label.innerHTML = `<input type="${single ? "radio" : "checkbox"}" name="guidekit-layer" value="${layer}"` +
        `${selected.has(layer) ? " checked" : ""}> ${layer}`;
      row.appendChild(label);
    }
    list.appendChild(row);
  }
  box.appendChild(list);
  const chosen = () => [...list.querySelectorAll("input:checked")].map((i) => i.value);
  const apply = async (text) => {
    try {
      const checked = await getJSON("/guidekit/model", { folder: loader.folder, name: loader.name, layers: text });
      layerWidget.value = text === "default" ? "default" : checked.selected_text;
      layerWidget.callback?.(layerWidget.value);
      node.setDirtyCanvas?.(true, true);
      closeDialog();
    } catch (e) { alert(e.message); }
  };
  const bar = document.createElement("div");
  bar.style.marginTop = "10px";
  bar.append(button("OK", () => chosen().length ? apply(chosen().join(", ")) : alert("Choose at least one layer")),
             button("Default", () => apply("default")), button("Cancel", closeDialog));
  box.appendChild(bar);
}

function button(text, onClick) {
  const b = document.createElement("button");
  b.textContent = text;
  b.style.marginRight = "8px";
  b.onclick = onClick;
  return b;
}

// ---- Registration ------------------------------------------------------------------------------------

app.registerExtension({
  name: "GuideKit.NodeTools",
  async setup() {
    try {
      const table = await getJSON("/guidekit/costs");
      COSTS = table.costs;
      LOADERS = table.loaders;
    } catch (e) {
      console.warn("GuideKit: cost table unavailable:", e.message);
    }
  },
  async nodeCreated(node) {
    const type = node.comfyClass || node.type;
    if (!type?.startsWith(PREFIX)) return;
    node.guidekit = { badge: null, schedule: null, scheduleKey: null };
    const hasRange = widget(node, "start_percent") && widget(node, "end_percent");
    const layerWidget = widget(node, "layers") || widget(node, "layer");
    if (layerWidget) {
      const pick = node.addWidget("button", "pick layers…", null, () =>
        openLayerPicker(node, layerWidget, layerWidget.name === "layer"));
      pick.serialize = false;          // not a value: saved workflows keep their widgets_values
    }
    if (hasRange) {
      const size = node.computeSize();
      node.setSize([Math.max(node.size[0], size[0]), Math.max(node.size[1], size[1] + STRIP_HEIGHT)]);
    }
    const draw = node.onDrawForeground;
    node.onDrawForeground = function (ctx, ...rest) {
      const result = draw?.apply(this, [ctx, ...rest]);
      drawBadge(this, ctx);
      if (hasRange) drawSchedule(this, ctx);
      return result;
    };
  },
});
