// The little Markdown the agents write (headings, paragraphs, lists, tables, **bold**,
// `code`) turned into DOM nodes: text stays text, so a report can never inject markup.
import { h } from "./dom.js";

export function markdown(source) {
  const blocks = [];
  const lines = source.split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
    } else if (/^#{1,4} /.test(line)) {
      const level = Math.min(line.indexOf(" ") + 2, 6); // the page has its h1 and h2
      blocks.push(h(`h${level}`, {}, inline(line.replace(/^#+ /, ""))));
      i += 1;
    } else if (line.trimStart().startsWith("|")) {
      const rows = [];
      while (i < lines.length && lines[i].trimStart().startsWith("|")) rows.push(lines[i++]);
      blocks.push(table(rows));
    } else if (/^\s*([-*]|\d+\.) /.test(line)) {
      const ordered = /^\s*\d+\. /.test(line);
      const items = [];
      while (i < lines.length && /^\s*([-*]|\d+\.) /.test(lines[i])) {
        items.push(h("li", {}, inline(lines[i++].replace(/^\s*([-*]|\d+\.) /, ""))));
      }
      blocks.push(h(ordered ? "ol" : "ul", {}, items));
    } else {
      const text = [];
      while (i < lines.length && lines[i].trim() && !/^(#{1,4} |\s*\||\s*([-*]|\d+\.) )/.test(lines[i])) {
        text.push(lines[i++]);
      }
      blocks.push(h("p", {}, text.map((t, n) => [n ? h("br") : null, inline(t)])));
    }
  }
  return h("div", { class: "markdown" }, blocks);
}

function table(rows) {
  const cells = (row) => row.trim().replace(/^\||\|$/g, "").split("|").map((c) => c.trim());
  const body = rows.filter((row, index) => !(index === 1 && /^[\s|:-]+$/.test(row)));
  const [head, ...rest] = body;
  const numeric = (text) => /^[-$\d.,%x ]+$/.test(text);
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, cells(head).map((c) => h("th", { scope: "col" }, inline(c))))),
    h("tbody", {}, rest.map((row) => h("tr", {}, cells(row).map((c) =>
      h("td", { class: numeric(c) ? "num" : null }, inline(c))))))));
}

function inline(text) {
  const parts = [];
  const pattern = /\*\*([^*]+)\*\*|`([^`]+)`/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    parts.push(text.slice(last, match.index));
    parts.push(match[1] !== undefined ? h("strong", {}, match[1]) : h("code", {}, match[2]));
    last = match.index + match[0].length;
  }
  parts.push(text.slice(last));
  return parts;
}
