// Small DOM helpers shared by the views: element builder, icons, dialogs, toasts, dates.

/** Build an element. Strings among children become text nodes (never HTML). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// Icons: constant SVG markup written here (never data), so innerHTML is safe.
const PATHS = {
  up: '<path d="M7 10v11H3V10h4zm2 11h8.3a2 2 0 0 0 2-1.7l1.3-7A2 2 0 0 0 18.6 10H14l.7-3.6a2 2 0 0 0-.5-1.8L13.3 4 9 9.2V21z"/>',
  down: '<path d="M17 14V3h4v11h-4zm-2-11H6.7a2 2 0 0 0-2 1.7l-1.3 7A2 2 0 0 0 5.4 14H10l-.7 3.6a2 2 0 0 0 .5 1.8l.9.6 4.3-5.2V3z"/>',
  menu: '<path d="M3 6h18v2H3zm0 5h18v2H3zm0 5h18v2H3z"/>',
  plus: '<path d="M11 5h2v6h6v2h-6v6h-2v-6H5v-2h6z"/>',
  trash: '<path d="M9 3h6l1 2h4v2H4V5h4l1-2zm-3 6h12l-1 12H7L6 9z"/>',
  send: '<path d="M3 20.5 21 12 3 3.5v6.6l12 1.9-12 1.9z"/>',
  stop: '<rect x="6" y="6" width="12" height="12" rx="2"/>',
  redo: '<path d="M12 5a7 7 0 1 0 7 7h-2a5 5 0 1 1-1.5-3.5L13 11h7V4l-2.6 2.6A7 7 0 0 0 12 5z"/>',
  copy: '<path d="M8 8h11v13H8zM5 3h11v3H7v11H5z"/>',
  help: '<path d="M12 2a10 10 0 1 0 0 20 10 10 0 0 0 0-20zm1 16h-2v-2h2v2zm1.6-6.6-.9.9c-.6.6-.7 1-.7 1.7h-2v-.5c0-1 .3-1.7 1-2.4l1.2-1.2a1.5 1.5 0 1 0-2.6-1H8.6a3.5 3.5 0 1 1 6 2.5z"/>',
  chat: '<path d="M4 4h16v12H8l-4 4V4z"/>',
  user: '<path d="M12 12a4 4 0 1 0 0-8 4 4 0 0 0 0 8zm0 2c-4 0-8 2-8 5v1h16v-1c0-3-4-5-8-5z"/>',
  shield: '<path d="M12 2 4 5v6c0 5 3.4 9.4 8 11 4.6-1.6 8-6 8-11V5l-8-3z"/>',
  out: '<path d="M10 3H4v18h6v-2H6V5h4V3zm6 4-1.4 1.4 2.6 2.6H9v2h8.2l-2.6 2.6L16 17l5-5-5-5z"/>',
  edit: '<path d="M4 17.2V20h2.8l8.3-8.3-2.8-2.8L4 17.2zM19.7 7.1a1 1 0 0 0 0-1.4l-1.4-1.4a1 1 0 0 0-1.4 0l-1.5 1.5 2.8 2.8 1.5-1.5z"/>',
  left: '<path d="M15.4 7.4 14 6l-6 6 6 6 1.4-1.4L10.8 12z"/>',
  right: '<path d="M8.6 16.6 10 18l6-6-6-6-1.4 1.4 4.6 4.6z"/>',
  close: '<path d="m6.4 5 5.6 5.6L17.6 5 19 6.4 13.4 12l5.6 5.6-1.4 1.4-5.6-5.6L6.4 19 5 17.6l5.6-5.6L5 6.4z"/>',
};

export function icon(name) {
  const span = document.createElement("span");
  span.className = "icon";
  span.setAttribute("aria-hidden", "true");
  span.innerHTML = `<svg viewBox="0 0 24 24" width="18" height="18" fill="currentColor">${PATHS[name] || ""}</svg>`;
  return span;
}

/** A button; `label` is the accessible name, `text` the visible text (optional). */
export function button({ label, text, iconName, cls = "btn", onclick, ...rest }) {
  return el("button", { type: "button", class: cls, "aria-label": label, title: label, onclick, ...rest },
    iconName ? icon(iconName) : null, text ? el("span", { text }) : null);
}

/** Ask a yes/no question in a modal dialog; resolves true when confirmed. The safe choice
 * (Cancel) has the focus, so Enter never destroys anything by accident. */
export function confirmDialog({ title, body, confirm = "Confirm", danger = false }) {
  return new Promise((resolve) => {
    const dialog = el("dialog", { class: "dialog", "aria-labelledby": "confirm-title" });
    const finish = (value) => { dialog.close(); dialog.remove(); resolve(value); };
    const cancel = button({ label: "Cancel", text: "Cancel", cls: "btn btn-ghost", onclick: () => finish(false) });
    dialog.append(
      el("h2", { id: "confirm-title", text: title }),
      el("p", { class: "muted", text: body }),
      el("div", { class: "dialog-actions" }, cancel,
        button({ label: confirm, text: confirm, cls: danger ? "btn btn-danger" : "btn btn-primary",
          onclick: () => finish(true), "data-confirm": "" })),
    );
    dialog.addEventListener("cancel", (e) => { e.preventDefault(); finish(false); });
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus();
  });
}

/** Ask for one line of text; resolves with it, or null when cancelled. */
export function promptDialog({ title, label, value = "", confirm = "Save" }) {
  return new Promise((resolve) => {
    const dialog = el("dialog", { class: "dialog", "aria-labelledby": "prompt-title" });
    const input = el("input", { class: "input input-wide", id: "prompt-dialog-input", maxlength: "120" });
    input.value = value;
    const finish = (v) => { dialog.close(); dialog.remove(); resolve(v); };
    dialog.append(el("form", { onsubmit: (e) => { e.preventDefault(); finish(input.value); } },
      el("h2", { id: "prompt-title", text: title }),
      el("label", { class: "label", for: "prompt-dialog-input", text: label }), input,
      el("div", { class: "dialog-actions" },
        button({ label: "Cancel", text: "Cancel", cls: "btn btn-ghost", onclick: () => finish(null) }),
        el("button", { type: "submit", class: "btn btn-primary" }, confirm))));
    dialog.addEventListener("cancel", (e) => { e.preventDefault(); finish(null); });
    document.body.append(dialog);
    dialog.showModal();
    input.select();
  });
}

/** A modal that shows progress while `work` runs; it cannot be dismissed meanwhile. */
export async function progressDialog(title, message, work) {
  const dialog = el("dialog", { class: "dialog", "aria-labelledby": "progress-title", "aria-busy": "true" });
  dialog.append(el("h2", { id: "progress-title", text: title }),
    el("div", { class: "progress-line" }, el("span", { class: "spinner", "aria-hidden": "true" }),
      el("p", { class: "muted", role: "status", text: message })));
  dialog.addEventListener("cancel", (e) => e.preventDefault());
  document.body.append(dialog);
  dialog.showModal();
  try {
    return await work();
  } finally {
    dialog.close();
    dialog.remove();
  }
}

/** A modal with arbitrary content and a close button. */
export function infoDialog(title, content) {
  const dialog = el("dialog", { class: "dialog dialog-wide", "aria-labelledby": "info-title" });
  const close = () => { dialog.close(); dialog.remove(); };
  dialog.append(
    el("div", { class: "dialog-head" },
      el("h2", { id: "info-title", text: title }),
      button({ label: "Close", iconName: "close", cls: "btn-icon", onclick: close })),
    content,
    el("div", { class: "dialog-actions" },
      button({ label: "Got it", text: "Got it", cls: "btn btn-primary", onclick: close })),
  );
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
  return dialog;
}

let toastTimer;
/** A short status message at the bottom of the screen (announced to screen readers). */
export function toast(message, kind = "info") {
  const region = document.getElementById("toast");
  region.textContent = message;
  region.dataset.kind = kind;
  region.classList.add("show");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => region.classList.remove("show"), kind === "error" ? 6000 : 3000);
  region.onclick = () => region.classList.remove("show");
}

export function fmtDate(value) {
  if (!value) return "—";
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function clear(node) {
  while (node.firstChild) node.firstChild.remove();
  return node;
}

/** A status pill for a training run state. */
export function statusPill(status) {
  const s = String(status ?? "unknown");
  return el("span", { class: `pill pill-${s.replace(/[^a-z_]/gi, "")}`, text: s });
}

/** A small table from rows and [header, row => cell] columns. */
export function table(columns, rows, { caption } = {}) {
  return el("div", { class: "table-wrap" },
    el("table", {},
      caption ? el("caption", { class: "sr-only", text: caption }) : null,
      el("thead", {}, el("tr", {}, columns.map(([h]) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, rows.map((row) => el("tr", {},
        columns.map(([h, cell]) => el("td", { "data-label": h }, cell(row))))))));
}
