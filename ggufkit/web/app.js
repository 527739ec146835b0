// ggufkit chat page: talks to the same server's OpenAI-compatible API (/v1/chat/completions, streaming SSE).
// Plain JS, no build step. Text is always inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];          // [{role, content}] of this conversation, without the system message
let running = null;          // AbortController of the answer being streamed

function apiKey() { return localStorage.getItem("ggufkit.apiKey") || ""; }

function headers() {
  const h = { "Content-Type": "application/json" };
  if (apiKey()) h["Authorization"] = "Bearer " + apiKey();
  return h;
}

function status(text) { $("status").textContent = text; }

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "message " + role;
  div.textContent = text;
  $("messages").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || body.detail || JSON.stringify(body);
  } catch (_) {
    return response.status + " " + response.statusText;
  }
}

async function loadModel() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (response.status === 401) {
    $("model").textContent = "needs an API key";
    $("settings").open = true;
    status("This server needs an API key: enter it under Settings.");
    return;
  }
  if (!response.ok) { $("model").textContent = await errorText(response); return; }
  const body = await response.json();
  $("model").textContent = body.data.map((m) => m.id).join(", ");
  status("");
}

// Reads an SSE stream of chat.completion.chunk events; calls onText(piece) for each content delta.
async function readStream(response, onText) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let newline;
    while ((newline = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, newline).trim();
      buffer = buffer.slice(newline + 1);
      if (!line.startsWith("data:")) continue;       // comments (pings), blank separators
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) onText(delta.content);
    }
  }
}

async function send(text) {
  history.push({ role: "user", content: text });
  bubble("user", text);
  const answer = bubble("assistant", "");
  answer.dataset.state = "streaming";
  const system = $("system").value.trim();
  const messages = (system ? [{ role: "system", content: system }] : []).concat(history);
  const temperature = parseFloat($("temperature").value);
  running = new AbortController();
  $("send").hidden = true;
  $("stop").hidden = false;
  status("answering…");
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ messages, stream: true, temperature: isNaN(temperature) ? 0.7 : temperature }),
      signal: running.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    await readStream(response, (piece) => {
      answer.textContent += piece;
      answer.scrollIntoView({ block: "end" });
    });
    status("");
  } catch (err) {
    if (err.name === "AbortError") {
      status("stopped");
    } else {
      answer.classList.add("error");
      answer.textContent = answer.textContent || "error: " + err.message;
      status("error: " + err.message);
    }
  } finally {
    answer.dataset.state = "done";
    if (answer.textContent && !answer.classList.contains("error")) {
      history.push({ role: "assistant", content: answer.textContent });
    } else {
      history.pop();  // no answer: forget the question too, so the next one is not a double turn
    }
    running = null;
    $("send").hidden = false;
    $("stop").hidden = true;
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || running) return;
  $("input").value = "";
  send(text);
});

$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("stop").addEventListener("click", () => running && running.abort());

$("reset").addEventListener("click", () => {
  if (running) running.abort();
  history.length = 0;
  $("messages").textContent = "";
  status("new conversation");
});

$("api-key").value = apiKey();
$("api-key").addEventListener("change", () => {
  localStorage.setItem("ggufkit.apiKey", $("api-key").value.trim());
  loadModel();
});

loadModel();
