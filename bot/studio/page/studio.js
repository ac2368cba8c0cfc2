// The studio page: plain JavaScript on the studio's own API. Every text from a card or a channel is
// shown with textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { personas: [], persona: null, box: null, scale: 1, job: null };
window.studio = state; // for people poking at the page from the console (and the browser tests)

function say(text, isError = false) {
  const message = $("message");
  message.textContent = text;
  message.classList.toggle("error", isError);
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const kind = response.headers.get("Content-Type") || "";
  const body = kind.includes("application/json") ? await response.json() : null;
  if (!response.ok) {
    throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

function sendJson(path, method, data) {
  return api(path, { method, headers: { "Content-Type": "application/json" }, body: JSON.stringify(data) });
}

function attempt(action) {
  return async (...args) => {
    try {
      await action(...args);
    } catch (error) {
      say(error.message, true);
    }
  };
}

const base = () => `/api/personas/${encodeURIComponent(state.persona.slug)}`;

// -- personas -----------------------------------------------------------------------------------------

async function loadPersonas(select) {
  const { personas } = await api("/api/personas");
  state.personas = personas;
  const list = $("persona-list");
  list.replaceChildren();
  for (const p of personas) {
    const item = document.createElement("li");
    item.dataset.slug = p.slug;
    const img = document.createElement("img");
    img.alt = "";
    if (p.portrait) img.src = `/api/personas/${encodeURIComponent(p.slug)}/portrait?t=${Date.now()}`;
    const text = document.createElement("div");
    const name = document.createElement("span");
    name.textContent = p.name;
    const faces = document.createElement("small");
    faces.textContent = `${p.slug} · ${p.faces}`;
    text.append(name, faces);
    item.append(img, text);
    item.addEventListener("click", attempt(() => openPersona(p.slug)));
    list.append(item);
  }
  const wanted = select || (state.persona && state.persona.slug) || (personas[0] && personas[0].slug);
  if (wanted) await openPersona(wanted);
}

async function openPersona(slug) {
  const persona = await api(`/api/personas/${encodeURIComponent(slug)}`);
  showPersona(persona);
  await loadFaces();
}

function showPersona(persona) {
  state.persona = persona;
  for (const item of $("persona-list").children) item.classList.toggle("selected", item.dataset.slug === persona.slug);
  $("persona").hidden = false;
  $("persona-title").textContent = persona.name;
  $("f-name").value = persona.name;
  $("f-description").value = persona.description;
  $("f-greeting").value = persona.greeting;
  $("f-labels").value = persona.labels.join(", ");
  $("export-v3").href = `${base()}/card.png?spec=v3`;
  $("export-v2").href = `${base()}/card.png?spec=v2`;
  $("sheet-link").href = `${base()}/sheet.png`;
  $("pack-link").href = `${base()}/sprites.zip`;
  $("mask-preview").hidden = true;
  state.box = persona.face_box ? persona.face_box.slice() : null;
  // Nothing of the persona shown before stays: its portrait, its box, its render's progress.
  if (!state.job || state.job.persona !== persona.slug) {
    $("render-progress").hidden = true;
    $("render-status").textContent = "";
    delete $("render-status").dataset.state;
  }
  const portrait = $("portrait");
  portrait.hidden = !persona.portrait;
  $("no-portrait").hidden = !!persona.portrait;
  $("box").hidden = true;
  $("box-numbers").textContent = persona.portrait ? "none" : "none (no portrait yet)";
  if (persona.portrait) {
    portrait.onload = () => drawBox();
    portrait.src = `${base()}/portrait?t=${Date.now()}`;
  } else {
    portrait.onload = null;
    portrait.removeAttribute("src");
  }
}

async function uploadPortrait(file) {
  say(`saving ${file.name} as the portrait…`);
  const result = await api(`${base()}/portrait`, {
    method: "PUT",
    headers: { "X-Filename": file.name, "Content-Type": "application/octet-stream" },
    body: file,
  });
  await loadPersonas(result.persona.slug);
  say(result.message);
}

async function importCard(file, query = "") {
  say(`importing ${file.name}…`);
  const response = await fetch(`/api/personas${query}`, {
    method: "POST",
    credentials: "same-origin",
    headers: { "X-Filename": file.name, "Content-Type": "application/octet-stream" },
    body: file,
  });
  const result = await response.json();
  if (response.status === 409 && result.existing) {
    // Already a persona: replace it, or keep both under an id the person picks. Never a silent copy.
    if (window.confirm(`${result.error}.\n\nOK: replace '${result.existing}'. Cancel: keep both.`)) {
      return importCard(file, "?replace=1");
    }
    const id = window.prompt("An id for the new persona (lowercase letters, digits, - and _):", `${result.existing}-2`);
    if (id) return importCard(file, `?id=${encodeURIComponent(id)}`);
    say("not imported");
    return;
  }
  if (!response.ok) throw new Error(result.error || `${response.status} ${response.statusText}`);
  await loadPersonas(result.persona.slug);
  say(result.message);
}

async function saveCard(event) {
  event.preventDefault();
  const changes = { name: $("f-name").value, description: $("f-description").value, greeting: $("f-greeting").value };
  const result = await sendJson(base(), "PUT", changes);
  await loadPersonas(result.persona.slug);
  say(`${result.persona.name}: card saved`);
}

// -- the face box -------------------------------------------------------------------------------------

function drawBox() {
  const portrait = $("portrait");
  const box = $("box");
  if (!state.persona || !state.persona.portrait) {  // a resize, with no picture to draw on
    box.hidden = true;
    $("box-numbers").textContent = "none (no portrait yet)";
    return;
  }
  state.scale = portrait.naturalWidth / portrait.clientWidth || 1;
  if (!state.box) {
    box.hidden = true;
    $("box-numbers").textContent = "none: propose the detected face, or drag one";
    return;
  }
  const [x, y, w, h] = state.box;
  Object.assign(box.style, {
    left: `${x / state.scale}px`, top: `${y / state.scale}px`, width: `${w / state.scale}px`, height: `${h / state.scale}px`,
  });
  box.hidden = false;
  $("box-numbers").textContent = `x ${x}, y ${y}, width ${w}, height ${h}`;
}

function startDrag(event, resizing) {
  event.preventDefault();
  event.stopPropagation();
  const portrait = $("portrait");
  const [x0, y0, w0, h0] = state.box;
  const start = [event.clientX, event.clientY];
  const width = portrait.naturalWidth;
  const height = portrait.naturalHeight;
  const move = (e) => {
    const dx = Math.round((e.clientX - start[0]) * state.scale);
    const dy = Math.round((e.clientY - start[1]) * state.scale);
    if (resizing) {
      state.box = [x0, y0, clamp(w0 + dx, 8, width - x0), clamp(h0 + dy, 8, height - y0)];
    } else {
      state.box = [clamp(x0 + dx, 0, width - w0), clamp(y0 + dy, 0, height - h0), w0, h0];
    }
    drawBox();
  };
  const stop = () => {
    document.removeEventListener("pointermove", move);
    document.removeEventListener("pointerup", stop);
  };
  document.addEventListener("pointermove", move);
  document.addEventListener("pointerup", stop);
}

const clamp = (v, low, high) => Math.max(low, Math.min(high, v));

function newBoxAt(event) {
  // A persona with no region yet: a press on the portrait starts a box there.
  if (state.box) return;
  const portrait = $("portrait");
  const rect = portrait.getBoundingClientRect();
  const side = Math.round(Math.min(portrait.naturalWidth, portrait.naturalHeight) / 4);
  const x = clamp(Math.round((event.clientX - rect.left) * state.scale) - side / 2, 0, portrait.naturalWidth - side);
  const y = clamp(Math.round((event.clientY - rect.top) * state.scale) - side / 2, 0, portrait.naturalHeight - side);
  state.box = [Math.round(x), Math.round(y), side, side];
  drawBox();
}

async function detect() {
  const result = await api(`${base()}/face/detect`);
  if (result.box) {
    state.box = result.box;
    drawBox();
  }
  say(result.message || "no face found: drag a box over it");
}

async function preview() {
  if (!state.box) throw new Error("there is no box to preview yet");
  const url = `${base()}/face/preview?box=${state.box.join(",")}`;
  const response = await fetch(url, { credentials: "same-origin" });
  if (!response.ok) throw new Error((await response.json()).error);
  const img = $("mask-preview");
  img.src = URL.createObjectURL(await response.blob());
  img.hidden = false;
}

async function saveFace() {
  if (!state.box) throw new Error("there is no box to save yet");
  const result = await sendJson(`${base()}/face`, "PUT", { box: state.box });
  showPersona(result.persona);
  await loadFaces();
  say(result.message);
}

// -- expressions --------------------------------------------------------------------------------------

async function loadFaces() {
  const { faces } = await api(`${base()}/faces`);
  const grid = $("faces");
  grid.replaceChildren();
  for (const face of faces) {
    const card = document.createElement("div");
    card.className = "face";
    card.dataset.label = face.label;
    card.dataset.kind = face.kind;
    let img;
    if (face.url) {
      img = document.createElement("img");
      img.alt = face.label;
      img.src = face.url;
    } else {  // no portrait, no sprite: nothing to show, and no broken picture either
      img = document.createElement("div");
      img.className = "no-face";
      img.textContent = "no portrait";
    }
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = face.label;
    const kind = document.createElement("span");
    kind.className = `kind ${face.kind}`;
    kind.textContent = face.kind;
    const words = document.createElement("input");
    words.className = "words";
    words.value = state.persona.prompts[face.label] || "";
    words.placeholder = state.persona.default_prompts[face.label] || "";
    words.title = "prompt words for this emotion";
    const render = document.createElement("button");
    render.type = "button";
    render.textContent = "Render";
    render.addEventListener("click", attempt(() => startRender([face.label])));
    card.append(img, label, kind, words, render);
    grid.append(card);
  }
}

async function saveLabels(event) {
  event.preventDefault();
  const labels = $("f-labels").value.split(",").map((s) => s.trim()).filter(Boolean);
  const prompts = {};
  for (const card of $("faces").children) {
    const words = card.querySelector(".words").value.trim();
    if (words && labels.includes(card.dataset.label)) prompts[card.dataset.label] = words;
  }
  const result = await sendJson(base(), "PUT", { labels, prompts });
  showPersona(result.persona);
  await loadFaces();
  say(`${result.persona.name}: labels and prompt words saved`);
}

async function startRender(labels) {
  const job = await sendJson(`${base()}/renders`, "POST", { labels, force: $("force").checked });
  followJob(job);
}

function followJob(job) {
  state.job = { ...job, seen: [] };
  const bar = $("render-progress");
  bar.hidden = false;
  const events = new EventSource(`/api/jobs/${encodeURIComponent(job.id)}/events`);
  events.onmessage = (event) => {
    const now = JSON.parse(event.data);
    state.job = { ...now, seen: state.job.seen.concat([[now.done, now.step]]) };
    showProgress(now);
    if (now.state !== "running") {
      events.close();
      loadFaces().catch((error) => say(error.message, true));
      const faces = `${now.total} face${now.total === 1 ? "" : "s"}`;
      if (now.state === "failed") say(now.error, true);
      else if (now.drawn) {
        say(`drew ${faces} over the portrait (no inpainting model is set: for rendered faces, set`
          + " [expressions] model in config.toml, or run ./run setup)");
      } else say(`rendered ${faces} in ${now.elapsed_s} s`);
    }
  };
  events.onerror = () => {
    events.close();
    say("lost the render's progress; reload the page to see its faces", true);
  };
}

function showProgress(job) {
  const bar = $("render-progress");
  const share = job.total ? (job.done + (job.steps ? job.step / job.steps : 0)) / job.total : 0;
  bar.value = job.state === "running" ? share : 1;
  const parts = [`${job.done}/${job.total} faces`];
  if (job.state === "running" && job.label) parts.push(job.label);
  if (job.steps) parts.push(`step ${job.step}/${job.steps}`);
  if (job.eta_s !== null && job.state === "running") parts.push(`about ${Math.ceil(job.eta_s)} s left`);
  if (job.state !== "running") parts.push(job.state);
  $("render-status").textContent = parts.join(" · ");
  $("render-status").dataset.state = job.state;
}

async function importPack(file) {
  say(`importing ${file.name}…`);
  const result = await api(`${base()}/sprites`, {
    method: "POST",
    headers: { "X-Filename": file.name, "Content-Type": "application/zip" },
    body: file,
  });
  await loadFaces();
  say(result.message + (result.unused.length ? `; not used: ${result.unused.join("; ")}` : ""));
}

// -- channels -----------------------------------------------------------------------------------------

async function loadChannels() {
  const { channels } = await api("/api/channels");
  const rows = $("channel-rows");
  rows.replaceChildren();
  for (const c of channels) {
    const row = document.createElement("tr");
    row.dataset.channel = c.id;
    const cells = [
      c.id === "0" ? "0 (terminal)" : c.id,
      c.cast.join(", "),
      c.id === "0" ? "always (terminal)" : c.enabled ? (c.mode === "all" ? "every message" : "mentions") : "off",
      String(c.messages),
      c.last_emotion || "",
      c.summary,
    ];
    for (const [i, text] of cells.entries()) {
      const cell = document.createElement("td");
      cell.textContent = text;
      if (i === 5) cell.className = "summary";
      row.append(cell);
    }
    rows.append(row);
  }
  $("no-channels").hidden = channels.length > 0;
}

// -- wiring -------------------------------------------------------------------------------------------

function showView(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === name);
  $("view-personas").hidden = name !== "personas";
  $("view-channels").hidden = name !== "channels";
  if (name === "channels") loadChannels().catch((error) => say(error.message, true));
}

document.addEventListener("DOMContentLoaded", () => {
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showView(tab.dataset.view));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", attempt(async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (!file) throw new Error("drop a card file (PNG or JSON)");
    await importCard(file);
  }));
  $("card-file").addEventListener("change", attempt(async (e) => {
    const file = e.target.files[0];
    e.target.value = "";
    if (file) await importCard(file);
  }));
  $("portrait-file").addEventListener("change", attempt(async (e) => {
    const file = e.target.files[0];
    e.target.value = "";
    if (file) await uploadPortrait(file);
  }));
  $("pack-file").addEventListener("change", attempt(async (e) => {
    const file = e.target.files[0];
    e.target.value = "";
    if (file) await importPack(file);
  }));
  $("card-form").addEventListener("submit", attempt(saveCard));
  $("labels-form").addEventListener("submit", attempt(saveLabels));
  $("box").addEventListener("pointerdown", (e) => startDrag(e, false));
  $("handle").addEventListener("pointerdown", (e) => startDrag(e, true));
  $("portrait").addEventListener("pointerdown", newBoxAt);
  window.addEventListener("resize", drawBox);
  $("detect").addEventListener("click", attempt(detect));
  $("show-preview").addEventListener("click", attempt(preview));
  $("save-face").addEventListener("click", attempt(saveFace));
  $("render-all").addEventListener("click", attempt(() => startRender([])));
  loadPersonas().then(() => say("ready"), (error) => say(error.message, true));
});
