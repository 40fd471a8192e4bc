"""review.html: one self-contained page to review the shortlist and save the decisions `--apply` reads.

No server and no network: the findings (review.csv's rows) and their
thumbnails (PNG data URIs) are embedded in the page. It lists the findings
by rank, each image large beside its partner for pairs, with the given and
suggested labels; filters by kind, split and label; and keys:

    j / p      next / previous finding
    k          keep (the finding is wrong: decision reject)
    d          drop the row (action drop, decision accept)
    r          relabel: edit the suggested labels, Enter to accept them
    s          save the decisions as CSV (review.csv's columns)

The saved CSV is review.csv with its `decision` (and, where a key changed
it, `action` and `suggested`) filled in: `mlkit audit --apply FILE
--manifest MANIFEST` reads it.
"""

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from mlkit.auditing.config import REVIEW_CSV
from mlkit.auditing.report import shortlisted, thumbnail
from mlkit.files import atomic_path

REVIEW_HTML = "review.html"
PAGE_THUMB = 224
TEMPLATE = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>audit review: /*TITLE*/</title>
<style>
body { font: 14px sans-serif; margin: 0; }
header { position: sticky; top: 0; background: #f4f4f4; padding: 8px; border-bottom: 1px solid #ccc; }
.finding { display: flex; gap: 12px; padding: 8px; border-bottom: 1px solid #eee; }
.finding.current { background: #fff7d6; }
.finding img { width: 224px; height: 224px; border: 1px solid #ddd; }
.decided-accept { border-left: 6px solid #c33; } .decided-reject { border-left: 6px solid #3a3; }
.labels { white-space: pre-wrap; } .kind { font-weight: bold; }
input.suggested { width: 24em; }
</style></head><body>
<header><b>/*TITLE*/</b> &nbsp;
kind <select id="kind"><option value="">all</option></select>
split <select id="split"><option value="">all</option></select>
label <input id="label" placeholder="contains">
<button id="save">save CSV (s)</button> <span id="status"></span>
<div>keys: j/p next/previous, k keep (reject), d drop, r relabel (edit, Enter), s save</div></header>
<main id="list"></main>
<script id="data" type="application/json">/*DATA*/</script>
<script>
const data = JSON.parse(document.getElementById("data").textContent);
const rows = data.rows;
let current = 0;
const list = document.getElementById("list");
for (const name of ["kind", "split"]) {
  const select = document.getElementById(name);
  for (const value of [...new Set(rows.map(r => r[name]))]) select.add(new Option(value || "-", value));
  select.onchange = render;
}
document.getElementById("label").oninput = render;
document.getElementById("save").onclick = save;
function visible() {
  const kind = document.getElementById("kind").value, split = document.getElementById("split").value;
  const label = document.getElementById("label").value.toLowerCase();
  return rows.map((r, i) => i).filter(i => (!kind || rows[i].kind === kind) && (!split || rows[i].split === split)
    && (!label || (rows[i].given + "|" + rows[i].suggested + "|" + rows[i].partner_given).toLowerCase().includes(label)));
}
function text(value) { const span = document.createElement("span"); span.textContent = value; return span.innerHTML; }
function render() {
  const shown = visible();
  if (!shown.includes(current) && shown.length) current = shown[0];
  list.innerHTML = shown.map(i => { const r = rows[i];
    return `<div class="finding ${i === current ? "current" : ""} decided-${r.decision}" id="f${i}" data-index="${i}">
      <img src="${r._image}">${r._partner ? `<img src="${r._partner}">` : ""}
      <div><div class="kind">#${text(r.review)} ${text(r.kind)} ${text(r.match)} ${text(r.score)}</div>
      <div>row ${text(r.row)} (${text(r.split || "-")}) ${text(r.image)}</div>
      <div class="labels">given: ${text(r.given)}${r.partner_image ? `\npartner row ${text(r.partner_row)} (${text(r.partner_split || "-")}): ${text(r.partner_given)}` : ""}</div>
      <div>suggested: <input class="suggested" value="${text(r.suggested)}" data-index="${i}"></div>
      <div>${text(r.detail)}</div><div class="decision">${text(r.decision ? r.action + ": " + r.decision : "")}</div></div></div>`;
  }).join("");
  for (const input of list.querySelectorAll("input.suggested")) {
    input.onkeydown = event => { if (event.key === "Enter") { decide(+input.dataset.index, "relabel", input.value); input.blur(); } };
  }
  const node = document.getElementById("f" + current);
  if (node) node.scrollIntoView({block: "nearest"});
}
function decide(i, action, suggested) {
  const r = rows[i];
  if (action === "keep") { r.decision = "reject"; }
  else { r.action = action; r.decision = "accept"; if (suggested !== undefined) r.suggested = suggested; }
  move(1);
}
function move(step) {
  const shown = visible(), at = shown.indexOf(current);
  if (shown.length) current = shown[Math.max(0, Math.min(shown.length - 1, at + step))];
  render();
}
function cell(value) { return '"' + String(value ?? "").replace(/"/g, '""') + '"'; }
function save() {
  const lines = [data.columns.map(cell).join(",")].concat(rows.map(r => data.columns.map(c => cell(r[c])).join(",")));
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], {type: "text/csv"}));
  link.download = data.csv_name;
  document.body.appendChild(link); link.click(); link.remove();
  document.getElementById("status").textContent = "saved " + rows.filter(r => r.decision).length + " decisions";
}
document.addEventListener("keydown", event => {
  if (event.target.tagName === "INPUT" || event.target.tagName === "SELECT") return;
  const keys = {j: () => move(1), p: () => move(-1), k: () => decide(current, "keep"), d: () => decide(current, "drop"),
                s: save, r: () => { const input = document.querySelector(`#f${current} input.suggested`); if (input) input.focus(); }};
  if (keys[event.key]) { event.preventDefault(); keys[event.key](); }
});
render();
</script></body></html>
"""


def data_uri(path):
    """The image as a PAGE_THUMB-pixel PNG data URI (grey where it cannot be read)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(thumbnail(path, PAGE_THUMB))).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def cell_text(value):
    """A cell as review.csv writes it: empty for missing, floats to 4 decimals."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def page_rows(review, root):
    """The shortlist as JSON-ready records: every review.csv column as text, and the images."""
    records = []
    for _, finding in review.iterrows():
        record = {column: cell_text(value) for column, value in finding.items()}
        record["_image"] = data_uri(Path(root) / finding["image"])
        record["_partner"] = data_uri(Path(root) / finding["partner_image"]) if finding["partner_image"] else ""
        records.append(record)
    return records


def write_review_page(folder, issues, root, title):
    """Writes `folder/review.html` for the shortlist of `issues`; returns its path."""
    review = shortlisted(issues)
    payload = {"columns": list(review.columns), "rows": page_rows(review, root), "csv_name": REVIEW_CSV}
    text = (TEMPLATE.replace("/*TITLE*/", html.escape(title))
            .replace("/*DATA*/", json.dumps(payload).replace("</", "<\\/")))
    path = Path(folder) / REVIEW_HTML
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return path
