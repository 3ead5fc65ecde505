// Model output as Markdown: marked turns it into HTML, DOMPurify (loaded before this module by
// index.html, as window.DOMPurify) removes anything unsafe. Raw HTML in the text is shown as
// text, never parsed: a reply that quotes `<img onerror=...>` shows those characters.
import { Marked } from "./vendor/marked.esm.js";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
export const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);

const marked = new Marked({
  gfm: true,
  breaks: true,
  renderer: {
    html({ text }) {
      return escapeHtml(text);
    },
    // Images from elsewhere are links: the page loads nothing from other origins (CSP).
    image({ href, text }) {
      return `<a href="${escapeHtml(href || "")}">${escapeHtml(text || href || "image")}</a>`;
    },
  },
});

const purifier = window.DOMPurify;
purifier.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

const FORBID_TAGS = ["style", "form", "input", "button", "textarea", "select"];

// HTML from a provider (Google's search entry point) as a DocumentFragment, safe to insert: no
// script, no inline style (the CSP refuses it), no image from elsewhere, links made safe.
export function sanitizeHtml(html) {
  return purifier.sanitize(withoutInline(html || ""), {
    RETURN_DOM_FRAGMENT: true,
    FORBID_TAGS: [...FORBID_TAGS, "img", "picture", "source", "video", "audio", "iframe", "link"],
    FORBID_ATTR: ["style", "srcset"],
  });
}

// Under the page's CSP the browser's parser reports every inline style and event handler it
// meets to the console as a violation (blocked), before DOMPurify can drop them: style elements
// and style/on* attributes go first, as text. Safety does not rest on this step: DOMPurify
// removes whatever it misses.
const STYLE_ELEMENT = /<style\b[\s\S]*?<\/style\s*>/gi;
const INLINE_ATTRIBUTE = /(<[a-z][^>]*?)\s(?:style|on[a-z]+)\s*=\s*("[^"]*"|'[^']*'|[^\s>]+)/gi;

function withoutInline(html) {
  let text = html.replace(STYLE_ELEMENT, "");
  for (let before = ""; before !== text; ) {
    before = text;
    text = text.replace(INLINE_ATTRIBUTE, "$1");
  }
  return text;
}

// A DocumentFragment of the rendered text, safe to insert.
export function renderMarkdown(text) {
  const html = marked.parse(text || "", { async: false });
  return purifier.sanitize(html, {
    RETURN_DOM_FRAGMENT: true,
    FORBID_TAGS,
    FORBID_ATTR: ["style"],
  });
}
