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

// A DocumentFragment of the rendered text, safe to insert.
export function renderMarkdown(text) {
  const html = marked.parse(text || "", { async: false });
  return purifier.sanitize(html, {
    RETURN_DOM_FRAGMENT: true,
    FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select"],
    FORBID_ATTR: ["style"],
  });
}
