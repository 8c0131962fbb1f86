// The web UI's script (app/api/ui/router.py serves it at /ui/assets/ui.js). The page's CSP allows
// scripts and styles from this origin only: no inline code, no on...= attributes, no style= attributes,
// no eval. Wire events with addEventListener, show and hide with the `hidden` property.
"use strict";
// The server renders its mount point and the page's name on <body> (HTML-escaped attributes).
const ROOT = document.body.dataset.root;
const page = document.body.dataset.page;
const $ = (id) => document.getElementById(id);
const state = {responseId: null, conversationId: null, rating: null, reviewing: null};

function key() { return localStorage.getItem("ragserver_key") || ""; }
function showKey() { $("key-state").textContent = key() ? "key set" : "no key"; }
function askKey() {
  const given = prompt("ragserver API key (kept in this browser)", key());
  if (given !== null) { localStorage.setItem("ragserver_key", given.trim()); showKey(); }
}
function fail(message) { $("error").textContent = message || ""; }

async function api(path, options = {}, retried = false) {
  const headers = Object.assign({"Content-Type": "application/json"}, options.headers || {});
  if (key()) headers["Authorization"] = "Bearer " + key();
  const response = await fetch(ROOT + path, Object.assign({}, options, {headers}));
  if (response.status === 401 && !retried) { askKey(); return api(path, options, true); }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { const body = await response.json(); message = (body.error && body.error.message) || message; } catch (e) {}
    throw new Error(message);
  }
  return response;
}

async function loadCollections(target, withAll) {
  try {
    const models = await (await api("/v1/models")).json();
    for (const m of models.data) {
      const option = document.createElement("option");
      option.value = m.id; option.textContent = m.id;
      target.appendChild(option);
    }
    return models.data.map((m) => m.id);
  } catch (e) { fail(e.message); return []; }
}

// -- ask --------------------------------------------------------------------------------------------
function renderCitations(citations) {
  const list = $("citations");
  list.innerHTML = "";
  for (const c of citations) {
    const item = document.createElement("li");
    item.value = c.n;
    const link = document.createElement("a");
    link.href = "#"; link.className = "citation"; link.dataset.n = c.n;
    link.textContent = (c.title || c.source || c.document_id) + (c.page ? " (p. " + c.page + ")" : "");
    const text = document.createElement("div");
    text.className = "chunk"; text.hidden = true; text.textContent = c.text;
    link.addEventListener("click", async (event) => {
      event.preventDefault();
      text.hidden = !text.hidden;
      if (!text.hidden && state.responseId) {
        try {
          await api("/v1/responses/" + encodeURIComponent(state.responseId) + "/events",
                    {method: "POST", body: JSON.stringify({type: "citation_opened", citation: c.n})});
        } catch (e) { fail(e.message); }
      }
    });
    item.appendChild(link); item.appendChild(text);
    list.appendChild(item);
  }
}

async function ask() {
  fail(""); $("answer").textContent = ""; $("citations").innerHTML = "";
  $("feedback").hidden = true; $("feedback-state").textContent = ""; state.rating = null;
  const body = {message: $("question").value, collection: $("collection").value || null, stream: true};
  if (state.conversationId) body.conversation_id = state.conversationId;
  let response;
  try { response = await api("/v1/chat", {method: "POST", body: JSON.stringify(body)}); }
  catch (e) { fail(e.message); return; }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true}).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end); buffer = buffer.slice(end + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (!data) continue;
      const payload = JSON.parse(data);
      if (name === "start") {
        state.responseId = payload.response_id; state.conversationId = payload.conversation_id;
        $("conversation").textContent = "conversation " + payload.conversation_id;
      } else if (name === "token") { $("answer").textContent += payload.text; }
      else if (name === "citations") { renderCitations(payload); }
      else if (name === "done") { $("answer").textContent = payload.answer; $("feedback").hidden = false; $("answer").dataset.responseId = payload.response_id; }
      else if (name === "error") { fail(payload.error.message); }
    }
  }
}

async function sendFeedback() {
  const body = {};
  if (state.rating) body.rating = state.rating;
  if ($("comment").value.trim()) body.comment = $("comment").value.trim();
  if ($("correction").value.trim()) body.correction = $("correction").value.trim();
  try {
    await api("/v1/responses/" + encodeURIComponent(state.responseId) + "/feedback", {method: "POST", body: JSON.stringify(body)});
    $("feedback-state").textContent = "Thanks: feedback saved.";
  } catch (e) { fail(e.message); }
}

// -- review -----------------------------------------------------------------------------------------
async function loadReview() {
  fail("");
  const collection = $("review-collection").value;
  const query = "?rating=down" + (collection ? "&collection=" + encodeURIComponent(collection) : "");
  try {
    const found = await (await api("/v1/responses" + query)).json();
    const rows = $("review-list");
    rows.innerHTML = "";
    for (const r of found.responses) {
      const row = document.createElement("tr");
      row.className = "item"; row.dataset.id = r.id;
      for (const text of [new Date(r.created_at * 1000).toLocaleString(), r.collection, r.question, r.answer, r.reviewed ? "yes" : ""]) {
        const cell = document.createElement("td"); cell.textContent = text; row.appendChild(cell);
      }
      row.addEventListener("click", () => openReview(r.id));
      rows.appendChild(row);
    }
  } catch (e) { fail(e.message); }
}

async function openReview(id) {
  try {
    const r = await (await api("/v1/responses/" + encodeURIComponent(id))).json();
    state.reviewing = r.id;
    $("review-detail").hidden = false;
    $("review-question").textContent = r.question;
    $("review-query").textContent = "searched for: " + r.search_query + (r.history.length ? " (a follow-up)" : "");
    const chunks = $("review-chunks"); chunks.innerHTML = "";
    for (const c of r.chunks) {
      const item = document.createElement("li");
      item.textContent = (c.title || c.source || c.document_id) + " (score " + Number(c.score).toFixed(3) + "): ";
      const text = document.createElement("div"); text.className = "chunk"; text.textContent = c.text || "";
      item.appendChild(text); chunks.appendChild(item);
    }
    $("review-answer").textContent = r.answer;
    const corrected = r.feedback.find((f) => f.correction);
    $("review-correction").value = corrected ? corrected.correction : "";
    $("review-state").textContent = "";
  } catch (e) { fail(e.message); }
}

async function saveReview() {
  const body = {correction: $("review-correction").value.trim(), reviewed: $("review-mark").checked, rating: "down"};
  try {
    await api("/v1/responses/" + encodeURIComponent(state.reviewing) + "/feedback", {method: "POST", body: JSON.stringify(body)});
    $("review-state").textContent = "Saved.";
    loadReview();
  } catch (e) { fail(e.message); }
}

async function exportSet() {
  const collection = $("review-collection").value;
  const query = "?rating=down&reviewed=true" + (collection ? "&collection=" + encodeURIComponent(collection) : "");
  try {
    const blob = await (await api("/v1/feedback/export" + query)).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob); link.download = "regression.jsonl";
    document.body.appendChild(link); link.click(); link.remove();
  } catch (e) { fail(e.message); }
}

// -- experiments (admin keys only: others do not see the list) ----------------------------------------
async function loadExperiments() {
  let found;
  try { found = await (await api("/v1/admin/experiments")).json(); } catch (e) { return; }  // not an admin key
  const list = $("experiment-list"); list.innerHTML = "";
  for (const x of found.experiments) {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = "#"; link.textContent = x.name + ": report (download)";
    link.addEventListener("click", (event) => { event.preventDefault(); openReport(x.name); });
    item.appendChild(link);
    item.appendChild(document.createTextNode(" (" + x.status + ", " + x.collections.join(", ") + ")"));
    list.appendChild(item);
  }
  $("experiments").hidden = found.experiments.length === 0;
}

async function openReport(name) {
  // Downloaded, not opened here: the page needs the key to fetch it, and the UI's CSP (no inline style)
  // would carry over to a page opened from it. The file is self-contained.
  try {
    const page = await (await api("/v1/admin/experiments/" + encodeURIComponent(name) + "/report?format=html")).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([page], {type: "text/html"})); link.download = name + "-report.html";
    document.body.appendChild(link); link.click(); link.remove();
  } catch (e) { fail(e.message); }
}

// -- wiring -----------------------------------------------------------------------------------------
$("set-key").addEventListener("click", askKey);
showKey();
if (page === "review") {
  $("review-view").hidden = false;
  loadCollections($("review-collection")).then(loadReview);
  loadExperiments();
  $("review-collection").addEventListener("change", loadReview);
  $("review-refresh").addEventListener("click", loadReview);
  $("review-save").addEventListener("click", saveReview);
  $("review-export").addEventListener("click", exportSet);
} else {
  $("ask-view").hidden = false;
  loadCollections($("collections")).then((names) => { if (names.length && !$("collection").value) $("collection").value = names[0]; });
  $("ask").addEventListener("click", ask);
  $("new-conversation").addEventListener("click", () => { state.conversationId = null; $("conversation").textContent = ""; });
  $("thumbs-up").addEventListener("click", () => { state.rating = "up"; $("feedback-state").textContent = "👍 selected"; });
  $("thumbs-down").addEventListener("click", () => { state.rating = "down"; $("feedback-state").textContent = "👎 selected"; });
  $("send-feedback").addEventListener("click", sendFeedback);
}
