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
  return purifier.sanitize(html || "", {
    RETURN_DOM_FRAGMENT: true,
    FORBID_TAGS: [...FORBID_TAGS, "img", "picture", "source", "video", "audio", "iframe", "link"],
    FORBID_ATTR: ["style", "srcset"],
  });
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
