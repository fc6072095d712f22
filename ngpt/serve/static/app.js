// The ngpt chat page: sends the conversation to /v1/chat/completions with stream: true and
// ngpt_trace: true, appends each streamed piece to the reply, and fills the inspector with one row per
// token (cache length, step ms, logprob, top alternatives). Untrusted text only ever goes through
// textContent. body[data-state] is "idle" or "streaming" (tests wait on it).
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  messages: $("messages"), composer: $("composer"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
  model: $("model"), health: $("health"), newChat: $("new-chat"), summary: $("summary"),
  rows: document.querySelector("#tokens tbody"), system: $("system"), temperature: $("temperature"),
  topP: $("top_p"), maxTokens: $("max_tokens"), seed: $("seed"), apiKey: $("api_key"),
};
const history = [];  // {role, content} of the finished turns
let modelId = null;
let controller = null;  // AbortController of the reply being streamed

els.apiKey.value = localStorage.getItem("ngpt.apiKey") || "";
els.apiKey.addEventListener("change", () => { localStorage.setItem("ngpt.apiKey", els.apiKey.value); loadModel(); });

function headers() {
  const h = { "Content-Type": "application/json" };
  if (els.apiKey.value) h.Authorization = `Bearer ${els.apiKey.value}`;
  return h;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Whitespace made visible, so " the" and "the" differ in the inspector.
const visible = (token) => token.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥");
const pct = (logprob) => `${(100 * Math.exp(logprob)).toFixed(logprob > -4.6 ? 1 : 2)}%`;

async function errorMessage(res) {
  try { return (await res.json()).error.message; } catch { return `HTTP ${res.status}`; }
}

async function loadModel() {
  try {
    const res = await fetch("v1/models", { headers: headers() });
    if (!res.ok) { els.model.textContent = `(${await errorMessage(res)})`; return; }
    modelId = (await res.json()).data[0].id;
    els.model.textContent = modelId;
  } catch (e) { els.model.textContent = "(unreachable)"; }
}

async function checkHealth() {
  try {
    const res = await fetch("health");
    const body = await res.json();
    els.health.textContent = body.status === "ok" ? `ok · ${body.active} active · ${body.waiting} waiting` : body.status;
    els.health.dataset.ok = String(body.status === "ok");
  } catch { els.health.textContent = "offline"; els.health.dataset.ok = "false"; }
}

function addBubble(role, text) {
  const hint = els.messages.querySelector(".hint");
  if (hint) hint.remove();
  const bubble = el("div", `msg ${role}`);
  bubble.append(el("div", "role", role));
  const body = el("div", "body", text);
  bubble.append(body);
  els.messages.append(bubble);
  els.messages.scrollTop = els.messages.scrollHeight;
  return body;
}

function setState(state) {
  document.body.dataset.state = state;
  els.send.hidden = state === "streaming";
  els.stop.hidden = state !== "streaming";
}

function numberOrNull(input) { return input.value === "" ? null : Number(input.value); }

function tokenRow(t) {
  const row = el("tr");
  row.dataset.index = t.index;
  row.append(el("td", "num", String(t.index)), el("td", "tok", visible(t.token)),
             el("td", "num", String(t.cache_len)), el("td", "num", t.step_ms.toFixed(2)),
             el("td", "num", `${t.logprob.toFixed(3)} (${pct(t.logprob)})`));
  const alts = el("td", "alts");
  for (const alt of t.top) {
    const chip = el("span", alt.id === t.id ? "alt chosen" : "alt");
    chip.append(el("code", "", visible(alt.token)), el("small", "", pct(alt.logprob)));
    alts.append(chip);
  }
  row.append(alts);
  row.addEventListener("mouseenter", () => highlight(t.index, true));
  row.addEventListener("mouseleave", () => highlight(t.index, false));
  return row;
}

function highlight(index, on) {
  for (const node of document.querySelectorAll(`[data-index="${index}"]`)) node.classList.toggle("lit", on);
}

function summarize(tokens, finish, seconds) {
  if (!tokens.length) { els.summary.textContent = "No tokens."; return; }
  const decode = tokens.slice(1).reduce((ms, t) => ms + t.step_ms, 0);
  const rate = tokens.length > 1 && decode > 0 ? `${((tokens.length - 1) / (decode / 1000)).toFixed(1)} tok/s decode` : "";
  const meanLp = tokens.reduce((s, t) => s + t.logprob, 0) / tokens.length;
  els.summary.textContent = [`${tokens.length} tokens`, `first ${tokens[0].step_ms.toFixed(1)} ms (prompt ${tokens[0].cache_len} tokens)`,
    rate, `mean logprob ${meanLp.toFixed(2)}`, finish ? `finish: ${finish}` : "", `${seconds.toFixed(2)} s wall`]
    .filter(Boolean).join(" · ");
}

// Parse a text/event-stream body: yields the JSON of each `data:` event until [DONE].
async function* events(res) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const data = buffer.slice(0, end).split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      buffer = buffer.slice(end + 2);
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

async function send(text) {
  history.push({ role: "user", content: text });
  addBubble("user", text);
  const reply = addBubble("assistant", "");
  reply.classList.add("streaming");
  els.rows.replaceChildren();
  els.summary.textContent = "Waiting for the first token…";
  setState("streaming");
  controller = new AbortController();
  const started = performance.now();
  const tokens = [];
  let content = "";
  let finish = null;

  const messages = els.system.value.trim() ? [{ role: "system", content: els.system.value }, ...history] : [...history];
  const body = { messages, stream: true, ngpt_trace: true };
  if (modelId) body.model = modelId;
  for (const [key, input] of [["temperature", els.temperature], ["top_p", els.topP], ["max_tokens", els.maxTokens], ["seed", els.seed]]) {
    const value = numberOrNull(input);
    if (value !== null) body[key] = value;
  }
  try {
    const res = await fetch("v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal });
    if (!res.ok) throw new Error(await errorMessage(res));
    for await (const chunk of events(res)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices[0];
      if (!choice) continue;
      const trace = chunk.ngpt ? chunk.ngpt.tokens : [];
      for (const t of trace) { tokens.push(t); els.rows.append(tokenRow(t)); }
      if (choice.delta.content) {
        content += choice.delta.content;
        const span = el("span", "piece", choice.delta.content);
        if (trace.length) {
          const t = trace[trace.length - 1];
          span.dataset.index = t.index;
          span.title = `#${t.index} · p=${pct(t.logprob)} · ${t.step_ms.toFixed(1)} ms`;
          // Less likely tokens get a warmer tint; CSSOM styles are allowed under the page's CSP.
          span.style.setProperty("--surprise", Math.min(1, -t.logprob / 6).toFixed(3));
          span.addEventListener("mouseenter", () => highlight(t.index, true));
          span.addEventListener("mouseleave", () => highlight(t.index, false));
        }
        reply.append(span);
        els.messages.scrollTop = els.messages.scrollHeight;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  } catch (e) {
    if (e.name !== "AbortError") {
      reply.parentElement.classList.add("error");
      reply.append(el("span", "err", content ? `\n[${e.message}]` : e.message));
    } else {
      finish = "stopped by you";
    }
  } finally {
    reply.classList.remove("streaming");
    if (content) history.push({ role: "assistant", content });
    else if (history.at(-1)?.role === "user") history.pop();  // keep the history alternating
    summarize(tokens, finish, (performance.now() - started) / 1000);
    controller = null;
    setState("idle");
    checkHealth();
  }
}

els.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = els.prompt.value;
  if (!text.trim() || controller) return;
  els.prompt.value = "";
  send(text);
});
els.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    els.composer.requestSubmit();
  }
});
els.stop.addEventListener("click", () => controller && controller.abort());
els.newChat.addEventListener("click", () => {
  if (controller) controller.abort();
  history.length = 0;
  els.messages.replaceChildren(el("p", "hint", "New chat."));
  els.rows.replaceChildren();
  els.summary.textContent = "No reply yet.";
});

loadModel();
checkHealth();
setInterval(checkHealth, 10000);
