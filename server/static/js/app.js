// The chat page: conversation list, settings, composer, streaming turns, errors. No framework:
// state lives in `state`, the DOM is rebuilt per conversation and patched while a turn streams.

import { api, ApiError, apiKey, setApiKey, streamTurn } from "./api.js";
import { AssistantView, editorView, turnsFromMessages, userView } from "./view.js";

const $ = (id) => document.getElementById(id);
const ui = {
  app: $("app"), list: $("conv-list"), newChat: $("new-chat"), menu: $("menu"), scrim: $("scrim"),
  title: $("conv-title"), effort: $("effort"), python: $("python-toggle"), instrBtn: $("instructions-btn"),
  instrPanel: $("instructions-panel"), instr: $("instructions"), banner: $("banner"), messages: $("messages"),
  scroller: $("scroller"), input: $("input"), send: $("send"), model: $("model-name"), dot: $("server-status"),
  convMenuBtn: $("conv-menu"), convMenu: $("conv-menu-items"), empty: $("empty"),
  keyDialog: $("key-dialog"), keyInput: $("key-input"), keyRemember: $("key-remember"), keyOk: $("key-ok"),
  keyError: $("key-error"),
  renameDialog: $("rename-dialog"), renameInput: $("rename-input"), renameOk: $("rename-ok"),
  renameCancel: $("rename-cancel"),
};

const DRAFT = () => ({ id: null, title: "New chat", system: null, effort: "medium", python: false, messages: [] });
const state = { conv: DRAFT(), list: [], turn: null, info: null };

// -- errors and the server's presence --------------------------------------------------------

function showBanner(text, kind = "error") {
  ui.banner.textContent = text;
  ui.banner.className = `banner ${kind}`;
  ui.banner.hidden = false;
}
function hideBanner() { ui.banner.hidden = true; }

function describe(e) {
  if (!(e instanceof ApiError)) return String(e && e.message ? e.message : e);
  return e.message;
}

let healthTimer = 0;
function serverGone(e) {
  ui.dot.className = "dot down";
  showBanner(`${describe(e)} Retrying…`);
  if (healthTimer) return;
  healthTimer = setInterval(async () => {
    try {
      await api.health();
      clearInterval(healthTimer);
      healthTimer = 0;
      ui.dot.className = "dot up";
      hideBanner();
      await refreshList();
      if (state.conv.id && !state.turn) await openConversation(state.conv.id); // what the server kept
    } catch (_) { /* still gone */ }
  }, 3000);
}

async function guarded(fn) {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      await askForKey();
      return guarded(fn);
    }
    if (e instanceof ApiError && e.status === 0) serverGone(e);
    else showBanner(describe(e));
    throw e;
  }
}

function askForKey() {
  return new Promise((resolve) => {
    ui.keyError.textContent = apiKey() ? "That key was not accepted." : "";
    ui.keyInput.value = "";
    if (!ui.keyDialog.open) ui.keyDialog.showModal();
    const done = () => {
      const key = ui.keyInput.value.trim();
      if (!key) return;
      setApiKey(key, ui.keyRemember.checked);
      ui.keyDialog.close();
      ui.keyOk.removeEventListener("click", done);
      ui.keyInput.removeEventListener("keydown", onKey);
      resolve();
    };
    const onKey = (e) => { if (e.key === "Enter") { e.preventDefault(); done(); } };
    ui.keyOk.addEventListener("click", done);
    ui.keyInput.addEventListener("keydown", onKey);
    setTimeout(() => ui.keyInput.focus(), 0);
  });
}

// -- the conversation list ------------------------------------------------------------------

function renderList() {
  ui.list.textContent = "";
  for (const c of state.list) {
    const a = document.createElement("button");
    a.type = "button";
    a.className = "conv" + (c.id === state.conv.id ? " active" : "");
    a.dataset.id = c.id;
    a.textContent = c.title;
    a.title = c.title;
    a.addEventListener("click", () => { openConversation(c.id); closeDrawer(); });
    ui.list.append(a);
  }
}

async function refreshList() {
  const { data } = await guarded(() => api.list());
  state.list = data;
  renderList();
}

// -- one conversation ----------------------------------------------------------------------

function renderSettings() {
  const c = state.conv;
  ui.title.textContent = c.title;
  document.title = `${c.title} · gpt-oss`;
  for (const b of ui.effort.querySelectorAll("button")) {
    const on = b.dataset.effort === c.effort;
    b.classList.toggle("on", on);
    b.setAttribute("aria-checked", String(on));
  }
  ui.python.checked = !!c.python;
  ui.instr.value = c.system || "";
  ui.instrBtn.classList.toggle("on", !!c.system);
  ui.convMenuBtn.disabled = !c.id;
}

function renderConversation() {
  renderSettings();
  ui.messages.textContent = "";
  const turns = turnsFromMessages(state.conv.messages);
  ui.empty.hidden = turns.length > 0;
  const lastUser = turns.map((t) => t.role).lastIndexOf("user");
  turns.forEach((t, i) => {
    if (t.role === "user") {
      ui.messages.append(userView(t, { canEdit: i === lastUser, onEdit: startEdit }));
    } else {
      const v = new AssistantView(t, { isLast: i === turns.length - 1, onRegenerate: regenerate });
      ui.messages.append(v.el);
    }
  });
  scrollToEnd(true);
}

async function openConversation(id) {
  if (state.turn) return;
  const conv = await guarded(() => api.get(id));
  state.conv = conv;
  location.hash = id;
  renderList();
  renderConversation();
}

function newChat() {
  if (state.turn) return;
  state.conv = DRAFT();
  history.replaceState(null, "", location.pathname);
  renderList();
  renderConversation();
  ui.input.focus();
}

async function saveSettings(fields) {
  Object.assign(state.conv, fields);
  renderSettings();
  if (state.conv.id) await guarded(() => api.patch(state.conv.id, fields));
}

// -- turns -------------------------------------------------------------------------------------

let stickToBottom = true;
function scrollToEnd(force = false) {
  if (force || stickToBottom) ui.scroller.scrollTop = ui.scroller.scrollHeight;
}
ui.scroller.addEventListener("scroll", () => {
  const s = ui.scroller;
  stickToBottom = s.scrollHeight - s.scrollTop - s.clientHeight < 80;
});

function setBusy(busy) {
  ui.app.classList.toggle("busy", busy);
  ui.send.classList.toggle("stop", busy);
  ui.send.setAttribute("aria-label", busy ? "Stop" : "Send");
  ui.send.title = busy ? "Stop (Esc)" : "Send (Enter)";
  ui.newChat.disabled = busy;
}

async function ensureConversation() {
  if (state.conv.id) return;
  const { system, effort, python } = state.conv;
  const conv = await guarded(() => api.create({ system, effort, python }));
  state.conv = conv;
  location.hash = conv.id;
}

async function runTurn(body, userText) {
  if (state.turn) return;
  hideBanner();
  try {
    await ensureConversation();
  } catch (_) { return; }
  const conv = state.conv;
  // optimistic view: drop what the turn replaces, show the user's message and a live answer
  const turns = turnsFromMessages(conv.messages);
  if (body.mode !== "send") {
    while (turns.length && turns[turns.length - 1].role !== "user") turns.pop();
    turns.pop();
  }
  const before = conv.messages;
  conv.messages = null; // stale until the turn ends and the stored conversation is read back
  ui.messages.textContent = "";
  ui.empty.hidden = true;
  turns.forEach((t) => ui.messages.append(t.role === "user"
    ? userView(t, { canEdit: false, onEdit: startEdit })
    : new AssistantView(t, { isLast: false }).el));
  ui.messages.append(userView({ role: "user", text: userText }, { canEdit: false }));
  const live = new AssistantView({ role: "assistant", blocks: [] }, { live: true });
  ui.messages.append(live.el);
  scrollToEnd(true);

  const controller = new AbortController();
  state.turn = { id: conv.id, controller, stopping: false };
  setBusy(true);
  try {
    await streamTurn(conv.id, { ...body, system: conv.system || "", effort: conv.effort, python: conv.python },
      (ev) => {
        live.apply(ev);
        if (ev.type === "error") showBanner(ev.message);
        scrollToEnd();
      }, controller.signal);
  } catch (e) {
    if (e.name !== "AbortError") {
      live.fail(describe(e));
      scrollToEnd(true);
      if (e instanceof ApiError && e.status === 0) serverGone(e);
      else if (e instanceof ApiError && e.status === 401) await askForKey();
      else showBanner(describe(e));
    }
  } finally {
    state.turn = null;
  }
  // read back what the server stored (the source of truth), keeping the live view on failure
  try {
    const stored = await api.get(conv.id);
    if (state.conv.id === conv.id) {
      state.conv = stored;
      const keepError = live.turn.error;
      renderConversation();
      if (keepError) {
        const again = new AssistantView({ role: "assistant", blocks: [], error: keepError }, {});
        ui.messages.append(again.el);
        scrollToEnd(true);
      }
    }
    await refreshList();
  } catch (_) {
    live.finish();
    conv.messages = before; // the server is gone: show what we had, re-read when it is back
  } finally {
    setBusy(false); // only now: the page shows what the server stored
  }
}

async function stopTurn() {
  const t = state.turn;
  if (!t || t.stopping) return;
  t.stopping = true;
  try {
    await api.stop(t.id);
  } catch (_) {
    t.controller.abort(); // closing the stream also cancels the generation on the server
  }
  setTimeout(() => { if (state.turn === t) t.controller.abort(); }, 5000);
}

function send() {
  if (state.turn) { stopTurn(); return; }
  const text = ui.input.value;
  if (!text.trim()) return;
  ui.input.value = "";
  autosize();
  runTurn({ mode: "send", text }, text);
}

function regenerate() {
  const turns = turnsFromMessages(state.conv.messages || []);
  const lastUser = [...turns].reverse().find((t) => t.role === "user");
  if (lastUser) runTurn({ mode: "regenerate" }, lastUser.text);
}

function startEdit(node, turn) {
  if (state.turn) return;
  const editor = editorView(turn, {
    onSubmit: (text) => { if (text.trim()) runTurn({ mode: "edit", text }, text); },
    onCancel: () => renderConversation(),
  });
  node.replaceWith(editor);
}

// -- the conversation menu: rename, export, delete --------------------------------------------

function toggleMenu(open) {
  ui.convMenu.hidden = !(open ?? ui.convMenu.hidden);
}

async function rename() {
  toggleMenu(false);
  ui.renameInput.value = state.conv.title;
  ui.renameDialog.showModal();
  ui.renameInput.select();
}

async function doRename() {
  const title = ui.renameInput.value.trim();
  ui.renameDialog.close();
  if (!title || !state.conv.id) return;
  await saveSettings({ title });
  await refreshList();
}

async function exportAs(format) {
  toggleMenu(false);
  if (!state.conv.id) return;
  const { blob, name } = await guarded(() => api.exportBlob(state.conv.id, format));
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

async function removeConversation() {
  toggleMenu(false);
  if (!state.conv.id || state.turn) return;
  if (!confirm(`Delete “${state.conv.title}”? This cannot be undone.`)) return;
  await guarded(() => api.remove(state.conv.id));
  await refreshList();
  newChat();
}

// -- the drawer (narrow screens) ---------------------------------------------------------------

function openDrawer() { ui.app.classList.add("drawer"); }
function closeDrawer() { ui.app.classList.remove("drawer"); }

// -- wiring -------------------------------------------------------------------------------------

function autosize() {
  ui.input.style.height = "auto";
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 240)}px`;
}

ui.input.addEventListener("input", autosize);
ui.input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    if (!state.turn) send();
  }
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape") {
    if (state.turn) { e.preventDefault(); stopTurn(); }
    toggleMenu(false);
    closeDrawer();
  }
});
ui.send.addEventListener("click", send);
ui.newChat.addEventListener("click", () => { newChat(); closeDrawer(); });
ui.menu.addEventListener("click", openDrawer);
ui.scrim.addEventListener("click", closeDrawer);
ui.effort.addEventListener("click", (e) => {
  const b = e.target.closest("button[data-effort]");
  if (b) saveSettings({ effort: b.dataset.effort });
});
ui.python.addEventListener("change", () => saveSettings({ python: ui.python.checked }));
ui.instrBtn.addEventListener("click", () => {
  ui.instrPanel.hidden = !ui.instrPanel.hidden;
  if (!ui.instrPanel.hidden) ui.instr.focus();
});
ui.instr.addEventListener("change", () => saveSettings({ system: ui.instr.value.trim() || null }));
ui.convMenuBtn.addEventListener("click", (e) => { e.stopPropagation(); toggleMenu(); });
document.addEventListener("click", (e) => { if (!ui.convMenu.contains(e.target)) toggleMenu(false); });
$("menu-rename").addEventListener("click", rename);
$("menu-export-json").addEventListener("click", () => exportAs("json"));
$("menu-export-md").addEventListener("click", () => exportAs("markdown"));
$("menu-delete").addEventListener("click", removeConversation);
ui.renameOk.addEventListener("click", doRename);
ui.renameCancel.addEventListener("click", () => ui.renameDialog.close());
ui.renameInput.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); doRename(); } });
for (const b of document.querySelectorAll("[data-suggest]")) {
  b.addEventListener("click", () => { ui.input.value = b.dataset.suggest; autosize(); ui.input.focus(); });
}

async function start() {
  try {
    state.info = await guarded(() => api.info());
    ui.model.textContent = state.info.model;
    ui.dot.className = "dot up";
    await refreshList();
    const id = location.hash.slice(1);
    if (id && state.list.some((c) => c.id === id)) await openConversation(id);
    else renderConversation();
  } catch (_) {
    renderConversation();
  }
  ui.input.focus();
}

start();
