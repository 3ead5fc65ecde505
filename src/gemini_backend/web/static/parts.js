// A reply's thought summary and Google Search citations (docs/api.md, "Messages and replies"),
// from its stored parts or its stream, as DOM nodes: text through textContent or the Markdown
// sanitiser, links only to http(s) and opened with rel="noopener noreferrer".
import { renderMarkdown, sanitizeHtml } from "./markdown.js";

// What a reply shows: {thought, text, citations}, from a message of the API.
export function viewOf(message) {
  const parts = message.parts || [];
  const thought = parts.filter((p) => p.type === "thought").map((p) => p.text || "").join("");
  const citations = parts.find((p) => p.type === "citation") || null;
  return { thought, text: message.content || "", citations };
}

// A collapsible "Thinking" block; its summary says so while the reply is being produced.
export function thoughtBlock(text, live, open) {
  const details = document.createElement("details");
  details.className = "thoughts";
  details.open = Boolean(open);
  const summary = document.createElement("summary");
  summary.textContent = live ? "Thinking…" : "Thinking";
  const body = document.createElement("div");
  body.className = "thought-body";
  body.append(renderMarkdown(text));
  details.append(summary, body);
  return details;
}

function safeUrl(uri) {
  try {
    const url = new URL(uri);
    return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
  } catch {
    return null;
  }
}

// The sources a grounded reply used, then Google's search suggestions (its HTML, sanitised),
// which its terms require to be shown with them.
export function sourcesBlock(citations) {
  const section = document.createElement("section");
  section.className = "sources";
  section.setAttribute("aria-label", "Sources");
  const heading = document.createElement("h3");
  heading.textContent = "Sources";
  const list = document.createElement("ol");
  for (const source of citations.sources || []) {
    const item = document.createElement("li");
    const href = safeUrl(source.uri);
    const title = source.title || source.uri || "source";
    if (href) {
      const link = document.createElement("a");
      link.href = href;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      link.textContent = title;
      item.append(link);
    } else {
      item.textContent = title;
    }
    list.append(item);
  }
  section.append(heading, list);
  if (citations.search_entry_point) {
    const entry = document.createElement("div");
    entry.className = "search-entry";
    entry.setAttribute("aria-label", "Google Search suggestions");
    entry.setAttribute("role", "group");
    entry.append(sanitizeHtml(citations.search_entry_point));
    section.append(entry);
  }
  return section;
}
