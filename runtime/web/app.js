// m3edge's device page: no framework, no build step, no network beyond this server (the device may be offline).
"use strict";

const $ = (id) => document.getElementById(id);
let controller = null;  // the AbortController of the generation in progress

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.append(who, body);
  $("transcript").append(div);
  $("transcript").scrollTop = $("transcript").scrollHeight;
  return body;
}

// Server-sent events over fetch (EventSource cannot POST): split on blank lines, yield each data payload.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data) yield data;
    }
  }
}

async function send(event) {
  event.preventDefault();
  const prompt = $("prompt").value;
  if (!prompt || controller) return;
  const chat = $("kind").value === "chat";
  addMessage("user", prompt);
  const out = addMessage("assistant", "");
  out.parentElement.dataset.state = "streaming";
  const body = {
    model: "m3edge", stream: true, max_tokens: Number($("max-bytes").value),
    temperature: Number($("temperature").value), memory: $("memory").checked,
  };
  if (chat) body.messages = [{ role: "user", content: prompt }]; else body.prompt = prompt;
  controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  try {
    const response = await fetch(chat ? "/v1/chat/completions" : "/v1/completions", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      const err = await response.json().catch(() => ({ error: { message: response.statusText } }));
      throw new Error(`${response.status}: ${err.error.message}`);
    }
    for await (const data of sseEvents(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      const choice = chunk.choices[0];
      if (!choice) continue;
      const piece = chat ? choice.delta.content : choice.text;
      if (piece) out.textContent += piece;
      if (choice.finish_reason) out.parentElement.dataset.finish = choice.finish_reason;
      $("transcript").scrollTop = $("transcript").scrollHeight;
    }
    out.parentElement.dataset.state = "done";
  } catch (e) {
    out.parentElement.dataset.state = "error";
    if (e.name !== "AbortError") {
      out.parentElement.className = "msg error";
      out.textContent += e.message;
    }
  } finally {
    controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
    refreshStats();
  }
}

// ------------------------------------------------------------------------------------------------ live stats

let last = null;  // the previous /v1/stats sample, to turn cumulative counters into rates

function renderHeatmap(experts) {
  const map = $("heatmap");
  const { n_layers: layers, n_experts: n, counts } = experts;
  if (map.childElementCount !== layers * (n + 1)) {
    map.replaceChildren();
    map.style.gridTemplateColumns = `auto repeat(${n}, minmax(0, 1fr))`;
    for (let l = 0; l < layers; l++) {
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = `L${l}`;
      map.append(label);
      for (let e = 0; e < n; e++) {
        const cell = document.createElement("div");
        cell.className = "cell";
        cell.dataset.layer = l;
        cell.dataset.expert = e;
        map.append(cell);
      }
    }
  }
  let total = 0;
  const cells = map.querySelectorAll(".cell");
  for (let l = 0; l < layers; l++) {
    const row = counts[l];
    const max = Math.max(1, ...row);
    for (let e = 0; e < n; e++) {
      const c = row[e];
      total += c;
      const cell = cells[l * n + e];
      cell.dataset.count = c;
      cell.title = `layer ${l}, expert ${e}: ${c} tokens`;
      const t = Math.sqrt(c / max);  // per-layer scale (square root: the long tail stays visible)
      cell.style.backgroundColor = c ? `hsl(${210 - 170 * t}, 85%, ${18 + 40 * t}%)` : "";
    }
  }
  map.dataset.total = total;
}

async function refreshStats() {
  let s;
  try {
    const r = await fetch("/v1/stats");
    s = await r.json();
  } catch (e) {
    $("status").textContent = "offline";
    return;
  }
  $("status").textContent = s.active ? `${s.active} generating` : "idle";
  $("model").textContent = s.model;
  const now = performance.now();
  if (last) {
    const dt = (now - last.t) / 1000;
    $("m-bps").textContent = ((s.generated_bytes - last.s.generated_bytes) / dt).toFixed(1);
    if (s.batcher && last.s.batcher) {
      const runs = s.batcher.execution_count - last.s.batcher.execution_count;
      const steps = s.batcher.inference_count - last.s.batcher.inference_count;
      if (runs > 0) $("m-batch").textContent = (steps / runs).toFixed(2);
    } else if (!s.batcher) {
      $("m-batch").textContent = "off";
    }
    const hits = s.cache.hits - last.s.cache.hits, misses = s.cache.misses - last.s.cache.misses;
    if (hits + misses > 0) $("m-hit").textContent = `${(100 * hits / (hits + misses)).toFixed(1)}%`;
  }
  if ($("m-hit").textContent === "–" && s.cache.hits + s.cache.misses > 0) {
    $("m-hit").textContent = `${(100 * s.cache.hit_rate).toFixed(1)}%`;
  }
  $("m-bytes").textContent = s.generated_bytes;
  $("m-active").textContent = s.active;
  $("m-mem").textContent = s.memories;
  renderHeatmap(s.experts);
  last = { t: now, s };
}

// ------------------------------------------------------------------------------------------ memory browser

function byteLabel(b) {
  if (b < 0) return "–";
  return b >= 32 && b < 127 ? `'${String.fromCharCode(b)}'` : `0x${b.toString(16).padStart(2, "0")}`;
}

async function searchMemory(event) {
  event.preventDefault();
  const query = $("memory-query").value;
  if (!query) return;
  const r = await fetch("/v1/memory/search", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ query, k: 10 }),
  });
  const list = $("memory-results");
  list.replaceChildren();
  const body = await r.json();
  if (!r.ok) {
    list.textContent = body.error;
    return;
  }
  for (const m of body.results) {
    const li = document.createElement("li");
    li.dataset.id = m.id;
    li.textContent = `#${m.id} → ${byteLabel(m.next_byte)}  score ${m.score.toFixed(3)}  priority ${m.priority.toFixed(3)}  ${m.associations} links`;
    li.addEventListener("click", () => showMemory(m.id));
    list.append(li);
  }
  if (!body.results.length) list.textContent = "no memories yet";
}

async function showMemory(id) {
  const r = await fetch(`/v1/memory/${id}`);
  const box = $("memory-detail");
  const m = await r.json();
  box.replaceChildren();
  if (!r.ok) {
    box.textContent = m.error.message;
    return;
  }
  const head = document.createElement("p");
  head.id = "memory-head";
  head.textContent = `memory #${m.id}: predicts ${byteLabel(m.next_byte)}, priority ${m.priority.toFixed(3)}, ` +
    `${m.access_count} uses, ${m.memory_type}${m.scene ? `, scene "${m.scene}"` : ""}, ${m.n_links} links`;
  box.append(head);
  const table = document.createElement("table");
  table.innerHTML = "<thead><tr><th>link</th><th>weight</th><th>predicts</th><th>priority</th></tr></thead>";
  const tbody = document.createElement("tbody");
  for (const link of m.links) {
    const tr = document.createElement("tr");
    const cells = [`#${link.id}`, link.weight.toFixed(3), byteLabel(link.next_byte),
                   link.priority === null ? "forgotten" : link.priority.toFixed(3)];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (i === 0) { td.className = "link"; td.addEventListener("click", () => showMemory(link.id)); }
      tr.append(td);
    });
    tbody.append(tr);
  }
  table.append(tbody);
  box.append(table);
}

document.addEventListener("DOMContentLoaded", () => {
  $("chat-form").addEventListener("submit", send);
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
  });
  $("memory-form").addEventListener("submit", searchMemory);
  refreshStats();
  setInterval(refreshStats, 1000);
});
