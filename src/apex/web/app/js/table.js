// A table you can sort (click a column's header) and filter (type in the box): every
// figure of a chart, exactly, for keyboard and screen-reader users too.
import { h, replace } from "./dom.js";

export function dataTable({ caption, columns, rows, filterLabel = "Filter" }) {
  let sortBy = columns.findIndex((c) => c.sorted);
  let descending = true;
  let needle = "";
  const body = h("tbody");
  const headers = columns.map((column, index) => {
    const button = h("button", { type: "button", class: "sort" }, column.label);
    button.addEventListener("click", () => {
      descending = sortBy === index ? !descending : column.numeric ?? false;
      sortBy = index;
      draw();
    });
    return h("th", { scope: "col", class: column.numeric ? "num" : null }, button);
  });
  const filter = h("input", { type: "search", "aria-label": filterLabel, placeholder: filterLabel });
  filter.addEventListener("input", () => {
    needle = filter.value.trim().toLowerCase();
    draw();
  });
  const count = h("p", { class: "muted", "aria-live": "polite" });

  function draw() {
    const shown = rows.filter((row) =>
      !needle || columns.some((c) => !c.numeric && String(c.value(row)).toLowerCase().includes(needle)),
    );
    if (sortBy >= 0) {
      const key = columns[sortBy];
      shown.sort((a, b) => {
        const x = key.value(a);
        const y = key.value(b);
        const order = key.numeric ? Number(x) - Number(y) : String(x).localeCompare(String(y));
        return descending ? -order : order;
      });
    }
    headers.forEach((th, i) => th.setAttribute("aria-sort", i === sortBy ? (descending ? "descending" : "ascending") : "none"));
    replace(body, shown.length
      ? shown.map((row) => h("tr", {}, columns.map((c) =>
          h("td", { class: c.numeric ? "num" : null }, c.show ? c.show(row) : c.value(row)))))
      : h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, "Nothing matches the filter.")));
    replace(count, `${shown.length} of ${rows.length} rows`);
  }

  draw();
  return h("div", { class: "table-wrap" },
    h("div", { class: "table-tools" }, filter, count),
    h("table", {}, h("caption", {}, caption), h("thead", {}, h("tr", {}, headers)), body),
  );
}
