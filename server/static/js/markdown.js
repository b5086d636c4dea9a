// Model output is untrusted. Three layers keep it inert:
// 1. markdown-it with html:false: raw HTML in the text (<script>, <img onerror=...>) is shown as text;
// 2. DOMPurify on the rendered HTML (HTML profile only: no SVG/MathML, no forms, no styles), with a
//    hook that drops every image that is not an inline data: image and makes links inert until
//    clicked (no prefetch, no referrer, new tab);
// 3. the server's Content-Security-Policy (img-src 'self' data:, no inline script) behind both.

const OPTIONS = { html: false, linkify: true, breaks: false };
const md = window.markdownit({
  ...OPTIONS,
  highlight(code, lang) {
    const hljs = window.hljs;
    try {
      if (lang && hljs.getLanguage(lang)) {
        return hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
      }
      if (code.length < 20000) return hljs.highlightAuto(code).value;
    } catch (_) { /* fall through to plain text */ }
    return ""; // markdown-it escapes the code itself
  },
});
// While a turn streams the text is re-rendered every frame: no highlighting then (the final render has it).
const mdLive = window.markdownit(OPTIONS);

const SAFE_IMAGE = /^data:image\/(png|gif|jpe?g|webp);base64,/i;

window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "IMG") {
    const src = node.getAttribute("src") || "";
    if (!SAFE_IMAGE.test(src)) {
      const note = document.createElement("span");
      note.className = "blocked-image";
      note.textContent = `[image not loaded: ${node.getAttribute("alt") || src}]`;
      node.replaceWith(note);
      return;
    }
    node.removeAttribute("srcset");
    node.setAttribute("loading", "lazy");
  }
  if (node.tagName === "A") {
    const href = node.getAttribute("href") || "";
    if (!/^(https?:|mailto:|#)/i.test(href)) node.removeAttribute("href");
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
    node.setAttribute("referrerpolicy", "no-referrer");
    node.removeAttribute("ping");
  }
});

const PURIFY = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "iframe", "object", "embed",
    "link", "meta", "base", "video", "audio", "source", "picture"],
  FORBID_ATTR: ["style", "srcset", "ping", "formaction", "background"],
};

export function renderMarkdown(text, { live = false } = {}) {
  return window.DOMPurify.sanitize((live ? mdLive : md).render(text || ""), PURIFY);
}

export function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
  const ta = document.createElement("textarea");
  ta.value = text;
  ta.setAttribute("readonly", "");
  ta.className = "offscreen";
  document.body.appendChild(ta);
  ta.select();
  try { document.execCommand("copy"); } finally { ta.remove(); }
  return Promise.resolve();
}

export function copyButton(getText, label = "Copy") {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "copy-btn";
  b.textContent = label;
  b.addEventListener("click", async () => {
    await copyText(getText());
    b.textContent = "Copied";
    b.classList.add("done");
    setTimeout(() => { b.textContent = label; b.classList.remove("done"); }, 1200);
  });
  return b;
}

// Put rendered Markdown into `el` and give each code block a header with its language and a copy button.
// `live`: the text is still streaming, so code blocks are not highlighted yet.
export function fillMarkdown(el, text, { live = false } = {}) {
  el.innerHTML = renderMarkdown(text, { live });
  for (const pre of el.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    const lang = code && [...code.classList].find((c) => c.startsWith("language-"));
    const head = document.createElement("div");
    head.className = "code-head";
    const name = document.createElement("span");
    name.textContent = lang ? lang.slice("language-".length) : "text";
    head.append(name, copyButton(() => (code || pre).textContent));
    pre.classList.add("hljs");
    const wrap = document.createElement("div");
    wrap.className = "code-block";
    pre.replaceWith(wrap);
    wrap.append(head, pre);
  }
}

export function highlightCode(el, code, lang) {
  const hljs = window.hljs;
  try {
    el.innerHTML = window.DOMPurify.sanitize(hljs.highlight(code, { language: lang, ignoreIllegals: true }).value,
      PURIFY);
  } catch (_) {
    el.textContent = code;
  }
}
