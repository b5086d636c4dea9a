// Conversations as the page shows them: turns built from stored messages or from streamed events,
// and their DOM. Model text only ever reaches the DOM through textContent or fillMarkdown (sanitised).

import { copyButton, fillMarkdown, highlightCode } from "./markdown.js";

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function button(label, cls, onClick, title) {
  const b = el("button", cls, label);
  b.type = "button";
  if (title) b.title = title;
  b.addEventListener("click", onClick);
  return b;
}

// -- the model ------------------------------------------------------------------------------

export function turnsFromMessages(messages) {
  const turns = [];
  let current = null;
  const tools = new Map();
  for (const m of messages) {
    if (m.role === "user") {
      turns.push({ role: "user", text: typeof m.content === "string" ? m.content : "" });
      current = null;
      continue;
    }
    if (!current) {
      current = { role: "assistant", blocks: [], figures: null, interrupted: false };
      turns.push(current);
    }
    if (m.role === "assistant") {
      if (m.reasoning) current.blocks.push({ kind: "reasoning", text: m.reasoning });
      const calls = m.tool_calls || [];
      if (m.content && calls.length) current.blocks.push({ kind: "preamble", text: m.content });
      for (const c of calls) {
        const block = { kind: "tool", name: (c.function || {}).name || "tool", code: (c.function || {}).arguments || "",
          output: null, status: null };
        tools.set(c.id, block);
        current.blocks.push(block);
      }
      if (m.content && !calls.length) current.blocks.push({ kind: "answer", text: m.content });
      if (m.interrupted) current.interrupted = true;
      if (m.figures) current.figures = m.figures;
    } else if (m.role === "tool") {
      const block = tools.get(m.tool_call_id);
      if (block) { block.output = m.content; block.status = m.status || null; }
      if (m.figures) current.figures = m.figures;
    }
  }
  return turns;
}

// -- the DOM --------------------------------------------------------------------------------

export function userView(turn, { canEdit, onEdit }) {
  const wrap = el("div", "turn user");
  const bubble = el("div", "bubble", turn.text);
  const actions = el("div", "actions");
  actions.append(copyButton(() => turn.text));
  if (canEdit) actions.append(button("Edit", "link-btn edit-btn", () => onEdit(wrap, turn)));
  wrap.append(bubble, actions);
  return wrap;
}

export function editorView(turn, { onSubmit, onCancel }) {
  const wrap = el("div", "turn user editing");
  const ta = el("textarea", "edit-area");
  ta.value = turn.text;
  ta.rows = Math.min(10, Math.max(2, turn.text.split("\n").length));
  const row = el("div", "actions");
  row.append(button("Cancel", "btn ghost", onCancel),
    button("Send", "btn primary edit-send", () => onSubmit(ta.value)));
  ta.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); onSubmit(ta.value); }
    if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); onCancel(); }
  });
  wrap.append(ta, row);
  setTimeout(() => ta.focus(), 0);
  return wrap;
}

function formatNumber(n) {
  return Number(n || 0).toLocaleString("en-US", { maximumFractionDigits: 1 });
}

export function figuresText(f) {
  if (!f) return "";
  return `${formatNumber(f.prompt_tokens)} prompt tokens · ${formatNumber(f.reused_tokens)} reused · `
    + `prefill ${formatNumber(f.prefill_tps)} tok/s · decode ${formatNumber(f.decode_tps)} tok/s`;
}

const STATUS = { ok: "done", error: "error", timeout: "timed out", crashed: "crashed", unknown: "not available",
  cancelled: "skipped" };

export class AssistantView {
  constructor(turn, { live = false, isLast = false, onRegenerate = null } = {}) {
    this.turn = turn;
    this.live = live;
    this.isLast = isLast;
    this.onRegenerate = onRegenerate;
    this.el = el("div", "turn assistant");
    this.body = el("div", "blocks");
    this.status = el("div", "status");
    this.foot = el("div", "turn-foot");
    this.el.append(this.body, this.status, this.foot);
    this.views = [];
    this.pending = new Set();
    this.frame = 0;
    this.finished = false;
    for (const b of turn.blocks) this.addBlock(b);
    if (!live) this.finish();
    else this.setStatus("Thinking…", true);
  }

  setStatus(text, busy = false) {
    this.status.textContent = "";
    if (!text) return;
    if (busy) this.status.append(el("span", "spinner"));
    this.status.append(el("span", "", text));
  }

  // -- blocks
  addBlock(block) {
    let v;
    if (block.kind === "reasoning") {
      const d = el("details", "reasoning");
      const s = el("summary");
      const label = el("span", "label", this.live ? "Thinking…" : "Reasoning");
      s.append(el("span", "chevron"), label);
      const text = el("div", "reasoning-text", block.text);
      d.append(s, text);
      if (this.live) d.open = true;
      block.started = performance.now();
      v = { block, node: d, update: () => { text.textContent = block.text; }, label };
    } else if (block.kind === "tool") {
      const d = el("details", "tool");
      const s = el("summary");
      const label = el("span", "label");
      const badge = el("span", "badge");
      s.append(el("span", "chevron"), el("span", "tool-icon", "{ }"), label, badge);
      const codeWrap = el("div", "code-block");
      const head = el("div", "code-head");
      head.append(el("span", "", block.name === "python" ? "python" : `${block.name} arguments`),
        copyButton(() => block.code));
      const pre = el("pre", "hljs");
      const code = el("code", "tool-code");
      pre.append(code);
      codeWrap.append(head, pre);
      const outHead = el("div", "output-head", "Output");
      const out = el("pre", "tool-output");
      d.append(s, codeWrap, outHead, out);
      v = {
        block, node: d,
        update: () => {
          if (block.name === "python") highlightCode(code, block.code, "python");
          else code.textContent = block.code;
          const done = block.output !== null && block.output !== undefined;
          label.textContent = done ? `Ran ${block.name}` : `Running ${block.name}…`;
          const ok = block.status === "ok";
          badge.textContent = done && block.status ? (STATUS[block.status] || block.status) : "";
          badge.className = `badge ${done && block.status ? (ok ? "ok" : "bad") : ""}`;
          outHead.hidden = !done;
          out.hidden = !done;
          out.textContent = done ? (block.output || "(no output)") : "";
        },
      };
    } else {
      // preamble or answer: Markdown, highlighted only once the text is final
      const node = el("div", `${block.kind === "preamble" ? "preamble" : "answer"} markdown`);
      v = { block, node, update: () => { v.rough = this.live; fillMarkdown(node, block.text, { live: this.live }); } };
    }
    this.views.push(v);
    this.body.append(v.node);
    v.update();
    return v;
  }

  last(kind) {
    const v = this.views[this.views.length - 1];
    return v && v.block.kind === kind ? v : null;
  }

  schedule(v) {
    this.pending.add(v);
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        for (const p of this.pending) p.update();
        this.pending.clear();
      });
    }
  }

  closeReasoning() {
    for (const v of this.views) {
      if (v.block.kind === "reasoning" && v.node.open && !v.closed) {
        v.closed = true;
        v.node.open = false;
        const secs = Math.max(1, Math.round((performance.now() - v.block.started) / 1000));
        v.label.textContent = `Thought for ${secs} s`;
      }
    }
  }

  text(kind, text) {
    let v = this.last(kind);
    if (!v) {
      const block = { kind, text: "" };
      this.turn.blocks.push(block);
      v = this.addBlock(block);
    }
    v.block.text += text;
    this.schedule(v);
  }

  // -- streamed events
  apply(ev) {
    switch (ev.type) {
      case "start":
        this.setStatus(ev.queued > 0 ? `Waiting for the model (${ev.queued} ahead)…` : "Thinking…", true);
        break;
      case "reasoning":
        this.setStatus(""); // the open block says "Thinking…"
        this.text("reasoning", ev.text);
        break;
      case "preamble":
        this.text("preamble", ev.text);
        break;
      case "answer":
        this.closeReasoning();
        this.setStatus("");
        this.text("answer", ev.text);
        break;
      case "tool_call": {
        const block = { kind: "tool", name: ev.name, code: "", output: null, status: null };
        this.turn.blocks.push(block);
        this.addBlock(block);
        this.setStatus(`Calling ${ev.name}…`, true);
        break;
      }
      case "tool_code": {
        const v = this.last("tool");
        if (v) { v.block.code += ev.text; this.schedule(v); }
        break;
      }
      case "tool_call_end": {
        const v = this.last("tool");
        if (v) { v.block.code = ev.arguments; this.schedule(v); }
        this.setStatus(`Running ${v ? v.block.name : "the tool"}…`, true);
        break;
      }
      case "tool_result": {
        const v = [...this.views].reverse().find((x) => x.block.kind === "tool" && x.block.output == null);
        if (v) { v.block.output = ev.output; v.block.status = ev.status; this.schedule(v); }
        this.setStatus("Thinking…", true);
        break;
      }
      case "notice":
        this.turn.notice = ev.text;
        break;
      case "done":
        this.turn.figures = ev.figures;
        this.turn.interrupted = ev.interrupted;
        break;
      case "error":
        this.turn.error = ev;
        break;
      default:
        break;
    }
  }

  fail(message) {
    this.turn.error = { message };
    this.finish();
  }

  finish() {
    if (this.finished) return; // e.g. a failed turn whose read-back also fails: one error card, not two
    this.finished = true;
    this.live = false;
    for (const v of this.views) if (this.pending.has(v) || v.rough) v.update(); // the final, highlighted render
    this.pending.clear();
    this.closeReasoning();
    for (const v of this.views) if (v.block.kind === "reasoning" && !v.closed) v.label.textContent = "Reasoning";
    this.setStatus("");
    this.foot.textContent = "";
    const t = this.turn;
    if (t.error) {
      const box = el("div", "error-card");
      box.append(el("strong", "", "Something went wrong. "), el("span", "", t.error.message || "Unknown error"));
      this.body.append(box);
    }
    if (t.notice) this.body.append(el("div", "notice", t.notice));
    if (t.interrupted) this.foot.append(el("span", "tag", "stopped"));
    const answer = t.blocks.filter((b) => b.kind === "answer" || b.kind === "preamble").map((b) => b.text).join("\n\n");
    if (t.figures) this.foot.append(el("span", "figures", figuresText(t.figures)));
    const actions = el("span", "actions");
    if (answer) actions.append(copyButton(() => answer));
    if (this.isLast && this.onRegenerate) actions.append(button("Regenerate", "link-btn regen-btn", this.onRegenerate));
    this.foot.append(actions);
  }
}
