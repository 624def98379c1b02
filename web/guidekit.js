// GuideKit frontend extension: a badge with each node's extra model passes per step, a layer picker that
// lists the connected model's real attention layers, and the active range on the sampler's schedule.
// Plain JavaScript, loaded by the ComfyUI frontend from the pack's WEB_DIRECTORY; no build step.
// Server side: nodes/web_routes.py (GET /guidekit/costs, /guidekit/model, /guidekit/schedule).
//
// The badge and the schedule live in one DOM widget under the node's widgets, so they show the same way in
// the canvas renderer and in the Vue one ("Nodes 2.0"), which never calls a node's canvas draw hooks.
// Server and workflow text (file names, titles, widget text, error messages) only ever reaches the page as
// text nodes: elements are built with createElement and filled with strings, never with innerHTML.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PREFIX = "GuideKit";
const REFRESH_MS = 300;            // how often the info rows compare their inputs with what they show
let COSTS = {};                    // node id → cost entry (each node class's COST, GET /guidekit/costs)
let LOADERS = {};                  // loader node type → [model folder, file widget]
const NODES = new Set();           // GuideKit nodes with an info row, in a graph

const widget = (node, name) => node.widgets?.find((w) => w.name === name);
const value = (node, name) => widget(node, name)?.value;

/** An element with inline style; children are elements or strings, and strings become text nodes. */
function el(tag, css, ...children) {
  const element = document.createElement(tag);
  if (css) element.style.cssText = css;
  element.append(...children.filter((c) => c != null));
  return element;
}

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

// ---- Graph walking (getInputNode / getOutputNodes: newer frontends deprecate reading slot links) -----

function inputNode(node, type) {
  for (const [i, input] of (node.inputs || []).entries()) {
    const origin = input.type === type && node.getInputNode(i);
    if (origin) return origin;
  }
  return null;
}

const outputNodes = (node) => (node.outputs || []).flatMap((_, i) => node.getOutputNodes(i) || []);

/** The loader upstream of the node's MODEL input: {folder, name, type} or null. */
export function upstreamLoader(node, seen = new Set()) {
  if (!node || seen.has(node.id)) return null;
  seen.add(node.id);
  const loader = LOADERS[node.comfyClass || node.type];
  if (loader) return { folder: loader[0], name: value(node, loader[1]), type: node.type };
  return upstreamLoader(inputNode(node, "MODEL"), seen);
}

const isSampler = (n) => widget(n, "steps") && widget(n, "scheduler");
const samplerOf = (n, sampler) => ({ steps: value(n, "steps"), scheduler: value(n, "scheduler"), sampler,
                                     denoise: value(n, "denoise") ?? 1.0, node: n.type });

/** The sampler settings downstream of the node (KSampler-like, or a scheduler node in a custom graph). */
export function downstreamSampler(node) {
  const queue = [node], seen = new Set();
  while (queue.length) {
    const n = queue.shift();
    if (seen.has(n.id)) continue;
    seen.add(n.id);
    if (n !== node && isSampler(n)) return samplerOf(n, value(n, "sampler_name") || "euler");
    queue.push(...outputNodes(n));
  }
  const scheduler = (node.graph || app.graph).nodes?.find(isSampler);
  if (scheduler) return samplerOf(scheduler, "euler");
  return { steps: 20, scheduler: "normal", sampler: "euler", denoise: 1.0, node: null };
}

// ---- Info row: badge and schedule strip ----------------------------------------------------------

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

function scheduleCaption(s) {
  const n = s.active.length;
  const first = s.active.indexOf(true), last = s.active.lastIndexOf(true);
  const sig = (i) => s.sigmas[i].toFixed(2);
  const where = s.loader ? "" : " (no loader found: SD1.5 schedule)";
  return first < 0 ? `inactive on all ${n} steps${where}`
    : `active steps ${first + 1}-${last + 1} of ${n}, σ ${sig(first)}→${sig(last)}${where}`;
}

/** Bring the node's badge and schedule up to date with its widgets and graph; fetch only what changed. */
function refresh(node) {
  const g = node.guidekit;
  const badge = badgeText(node.comfyClass || node.type, widgetValues(node));
  if (badge !== g.badge) {
    g.badge = badge;
    g.render();
  }
  if (!g.hasRange) return;
  const { params, loader, sampler } = scheduleRequest(node);
  const key = JSON.stringify(params);
  if (key === g.scheduleKey) return;
  g.scheduleKey = key;
  getJSON("/guidekit/schedule", params).then(
    (s) => ({ ...s, loader, sampler, error: null }),
    (e) => ({ error: e.message, loader, sampler }),
  ).then((s) => {
    if (g.scheduleKey !== key) return;
    g.schedule = s;
    g.render();
  });
}

function addInfoRow(node) {
  const g = node.guidekit;
  const badge = el("span", "display:none;flex:none;padding:1px 6px;border-radius:4px;color:#fff;font-size:11px");
  const caption = el("span", "flex:1;min-width:0;overflow:hidden;text-overflow:ellipsis;white-space:nowrap");
  const cells = el("div", "display:flex;gap:1px;height:8px");
  // pointer-events:none: a drag on the row moves the node, as on the rest of it
  const row = el("div", "display:flex;flex-direction:column;justify-content:center;gap:4px;box-sizing:border-box;" +
                 "height:100%;padding:0 11px;font:10px sans-serif;color:#bbb;pointer-events:none",
                 g.hasRange ? cells : null, el("div", "display:flex;align-items:center;gap:6px", badge, caption));
  row.className = "guidekit-info";
  [badge.className, caption.className, cells.className] = ["guidekit-badge", "guidekit-caption", "guidekit-steps"];
  g.render = () => {
    badge.textContent = g.badge || "";
    badge.style.display = g.badge ? "" : "none";
    badge.style.background = g.badge?.startsWith("+0") ? "#2f6b3a" : "#8a5a12";
    const s = g.schedule;
    if (!s) return;
    caption.textContent = caption.title = s.error || scheduleCaption(s);
    caption.style.color = s.error ? "#d66" : "";
    cells.replaceChildren(...(s.active || []).map((on) => {
      const cell = el("div", `flex:1;background:${on ? "#d9a441" : "#444"}`);
      cell.dataset.active = on;
      return cell;
    }));
  };
  const height = g.hasRange ? 34 : 24;
  const info = node.addDOMWidget("guidekit_info", "guidekit-info", row,
                                 { getMinHeight: () => height, getMaxHeight: () => height, margin: 4 });
  info.serialize = false;          // shows state, holds no value: saved workflows keep their widgets_values
}

// ---- Layer picker ------------------------------------------------------------------------------------

function closeDialog() {
  document.getElementById("guidekit-layer-picker")?.remove();
}

function button(text, onClick) {
  const b = el("button", "margin-right:8px", text);
  b.onclick = onClick;
  return b;
}

async function openLayerPicker(node, layerWidget, single) {
  closeDialog();
  const box = el("div", "position:fixed;left:50%;top:12%;transform:translateX(-50%);background:#222;color:#ddd;" +
                 "border:1px solid #666;border-radius:6px;padding:12px;z-index:10000;max-height:70vh;" +
                 "overflow-y:auto;min-width:320px;font:13px sans-serif");
  box.id = "guidekit-layer-picker";
  document.body.appendChild(box);
  const loader = upstreamLoader(node);
  if (!loader?.name) {
    box.append(el("b", "", "No model loader found"),
               el("p", "", "Connect this node's model input (through any model patches) to Load Checkpoint, " +
                  "Load Diffusion Model or the GuideKit MNIST loader to list its attention layers."),
               button("Close", closeDialog));
    return;
  }
  let info;
  try {
    info = await getJSON("/guidekit/model", { folder: loader.folder, name: loader.name, layers: layerWidget.value,
                                              node: node.type });
  } catch (e) {
    box.append(el("b", "", `Cannot read ${loader.name}`), el("p", "", e.message), button("Close", closeDialog));
    return;
  }
  const selected = new Set(info.selected || []);
  const error = el("div", "color:#d66", info.selected_error || "");
  box.append(el("b", "", `${node.title}: ${single ? "layer" : "layers"}`),
             el("div", "opacity:.7;margin:4px 0 8px", `${loader.name} — ${info.model_type}, ${info.layers.length} ` +
                `self-attention layers; default ${single ? info.default_sag_layer
                                                         : (info.node_defaults?.[node.type] ?? info.default_layers)}`),
             error);
  const list = el("div");
  const groups = {};
  for (const layer of info.layers) (groups[layer.split(".")[0]] ||= []).push(layer);
  for (const [place, layers] of Object.entries(groups)) {
    list.append(el("div", "margin-top:6px;font-weight:bold", place), el("div", "", ...layers.map((layer) => {
      const input = el("input");
      Object.assign(input, { type: single ? "radio" : "checkbox", name: "guidekit-layer", value: layer,
                             checked: selected.has(layer) });
      return el("label", "display:inline-block;margin:2px 10px 2px 0;white-space:nowrap", input, ` ${layer}`);
    })));
  }
  const chosen = () => [...list.querySelectorAll("input:checked")].map((i) => i.value);
  const apply = async (text) => {
    try {
      const checked = await getJSON("/guidekit/model", { folder: loader.folder, name: loader.name, layers: text,
                                                         node: node.type });
      if (checked.selected_error) throw new Error(checked.selected_error);
      layerWidget.value = text === "default" ? "default" : checked.selected_text;
      layerWidget.callback?.(layerWidget.value);
      node.setDirtyCanvas?.(true, true);
      closeDialog();
    } catch (e) {
      error.textContent = e.message;
    }
  };
  const ok = () => {
    if (chosen().length) apply(chosen().join(", "));
    else error.textContent = "Choose at least one layer";
  };
  box.append(list, el("div", "margin-top:10px", button("OK", ok), button("Default", () => apply("default")),
                      button("Cancel", closeDialog)));
}

// ---- Registration ------------------------------------------------------------------------------------

function chain(node, hook, fn) {
  const original = node[hook];
  node[hook] = function (...args) {
    fn();
    return original?.apply(this, args);
  };
}

app.registerExtension({
  name: "GuideKit.NodeTools",
  async init() {                     // awaited before any node is created, so nodeCreated sees the table
    try {
      const table = await getJSON("/guidekit/costs");
      COSTS = table.costs;
      LOADERS = table.loaders;
    } catch (e) {
      console.warn("GuideKit: cost table unavailable:", e.message);
    }
    // Polled, not event-driven: the inputs live on other nodes (loader, sampler) and change through the
    // canvas, the Vue widgets, undo, other extensions or code, and neither renderer reports all of those.
    setInterval(() => NODES.forEach(refresh), REFRESH_MS);
  },
  async nodeCreated(node) {
    const type = node.comfyClass || node.type;
    if (!type?.startsWith(PREFIX)) return;
    const layerWidget = widget(node, "layers") || widget(node, "layer");
    if (layerWidget) {
      const pick = node.addWidget("button", "pick layers…", null, () =>
        openLayerPicker(node, layerWidget, layerWidget.name === "layer"));
      pick.serialize = false;          // not a value: saved workflows keep their widgets_values
    }
    const hasRange = !!(widget(node, "start_percent") && widget(node, "end_percent"));
    if (!hasRange && !COSTS[type]) return;
    node.guidekit = { badge: null, schedule: null, scheduleKey: null, hasRange };
    addInfoRow(node);
    chain(node, "onAdded", () => NODES.add(node));        // polled only while in a graph
    chain(node, "onRemoved", () => NODES.delete(node));
  },
});
