// Feedback controls: thumbs with reason chips and a comment, and the rating guidelines.

import { api } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { button, el, infoDialog, toast } from "./ui.js";

// Used only if the server has no /api/guidelines yet.
const FALLBACK = {
  criterion: "Which answer is more helpful, honest and harmless for you?",
  guidelines: "Rate the answer for *you*: your assistant learns only from your own feedback.",
  reasons_up: ["helpful", "accurate", "clear", "concise", "friendly"],
  reasons_down: ["incorrect", "unhelpful", "too_long", "too_short", "unsafe", "rude", "off_topic"],
  compare_every: 0,
};

let guidelines = null;

export async function loadGuidelines() {
  try {
    guidelines = { ...FALLBACK, ...(await api.get("/api/guidelines")) };
  } catch {
    guidelines = { ...FALLBACK };
  }
  return guidelines;
}

export const getGuidelines = () => guidelines || FALLBACK;

export const reasonLabel = (r) => String(r).replace(/_/g, " ");

export function showGuidelines() {
  const g = getGuidelines();
  const body = el("div", { class: "guidelines md" });
  body.innerHTML = renderMarkdown(g.guidelines || "");
  const chips = (title, list) => el("div", { class: "guide-reasons" },
    el("span", { class: "muted small", text: title }),
    (list || []).map((r) => el("span", { class: "chip static", text: reasonLabel(r) })));
  infoDialog("Rating guidelines", el("div", {},
    g.criterion ? el("p", { class: "criterion", text: g.criterion }) : null,
    body,
    chips("Reasons for a thumbs up", g.reasons_up),
    chips("Reasons for a thumbs down", g.reasons_down)));
}

/** The "?" button that opens the guidelines; next to every feedback control. */
export function guidelinesButton(withText = false) {
  return button({ label: "Rating guidelines", text: withText ? "Guidelines" : null,
    iconName: "help", cls: withText ? "btn btn-ghost btn-small" : "btn-icon", onclick: showGuidelines });
}

function parseReasons(value) {
  if (Array.isArray(value)) return value;
  if (typeof value === "string" && value) {
    try { const v = JSON.parse(value); return Array.isArray(v) ? v : [value]; } catch { return [value]; }
  }
  return [];
}

function thumbsOf(message) {
  const t = message?.thumbs;
  if (!t) return null;
  if (typeof t === "string") return { value: t, reasons: [], comment: "" };
  return t.value ? { value: t.value, reasons: parseReasons(t.reasons), comment: t.comment || "" } : null;
}

/** Thumbs up/down for one stored answer: immediate vote, then optional reasons and comment.
 * Returns the thumbs row; its `.panel` (reasons and comment) is placed by the caller under
 * the answer, so opening it never moves the thumbs. */
/** Saves the bar's vote in order (each save waits for the one before); returns save(what),
 *  which shows `what` in the status line once the server has it. */
function saver(id, state, root, status) {
  let queue = Promise.resolve();
  return (what = "Saved") => {
    const body = { value: state.value, reasons: [...state.reasons], comment: state.comment };
    queue = queue.then(async () => {
      status.textContent = "Saving…";
      try {
        if (body.value) await api.put(`/api/messages/${id}/thumbs`, body);
        else await api.del(`/api/messages/${id}/thumbs`);
        status.textContent = what;
        root.dataset.saved = body.value || "none";
      } catch (err) {
        status.textContent = "";
        toast(`Feedback not saved: ${err.message}`, "error");
      }
    });
    return queue;
  };
}

/** The open details panel of a vote: reason chips, the comment box and the actions.
 *  `on.toggled` runs after a reason chip is toggled in state.reasons. */
function panelContent(state, on) {
  const g = getGuidelines();
  const reasons = state.value === "up" ? g.reasons_up : g.reasons_down;
  const chips = el("div", { class: "chips", role: "group", "aria-label": "Reasons" },
    (reasons || []).map((r) => el("button", {
      type: "button", class: "chip", "aria-pressed": String(state.reasons.has(r)), dataset: { reason: r },
      onclick: (e) => {
        if (state.reasons.has(r)) state.reasons.delete(r); else state.reasons.add(r);
        e.currentTarget.setAttribute("aria-pressed", String(state.reasons.has(r)));
        on.toggled();
      },
    }, reasonLabel(r))));
  const comment = el("textarea", { class: "input comment", rows: "2", maxlength: "2000",
    placeholder: "Anything else? (optional)", "aria-label": "Comment on this answer" });
  comment.value = state.comment;
  return [
    el("p", { class: "small muted", text: state.value === "up" ? "What was good?" : "What went wrong?" }),
    chips,
    comment,
    el("div", { class: "feedback-actions" },
      button({ label: "Save comment", text: "Save comment", cls: "btn btn-small btn-primary",
        onclick: on.saveComment }),
      button({ label: "Clear vote", text: "Clear vote", cls: "btn btn-small btn-ghost",
        onclick: on.clear }),
      button({ label: "Done", text: "Done", cls: "btn btn-small btn-ghost", onclick: on.done })),
  ];
}

export function feedbackBar(message) {
  const id = message.id;
  const state = { value: null, reasons: new Set(), comment: "", open: false };
  const root = el("div", { class: "feedback", dataset: { messageId: id } });
  const status = el("span", { class: "feedback-status muted small", role: "status" });
  const up = button({ label: "Good answer (thumbs up)", iconName: "up", cls: "btn-icon thumb thumb-up",
    "aria-pressed": "false", onclick: () => vote("up") });
  const down = button({ label: "Bad answer (thumbs down)", iconName: "down", cls: "btn-icon thumb thumb-down",
    "aria-pressed": "false", onclick: () => vote("down") });
  const panel = el("div", { class: "feedback-panel", hidden: true, dataset: { messageId: id } });
  root.append(el("div", { class: "feedback-row" }, up, down, guidelinesButton(), status));
  root.panel = panel;

  const save = saver(id, state, root, status);

  // A typed comment is kept whichever way the panel is closed.
  const keepComment = () => {
    const box = panel.querySelector("textarea");
    if (!box || !state.value) return false;
    const text = box.value.trim();
    if (text === state.comment) return false;
    state.comment = text;
    return true;
  };

  function vote(value) {
    if (state.value === value) {          // the selected thumb toggles the details panel
      if (state.open && keepComment()) save("Comment saved");
      state.open = !state.open;
      paint();
      return;
    }
    // A new direction starts clean: "helpful" or a complaint does not carry across.
    keepComment();
    state.reasons.clear();
    state.comment = "";
    state.value = value;
    state.open = true;
    paint();
    save(value === "up" ? "Thanks — marked as good" : "Thanks — marked as bad");
  }

  function paint() {
    up.setAttribute("aria-pressed", String(state.value === "up"));
    down.setAttribute("aria-pressed", String(state.value === "down"));
    root.dataset.value = state.value || "";
    const wasHidden = panel.hidden;
    panel.hidden = !(state.value && state.open);
    panel.replaceChildren();
    if (panel.hidden) return;
    panel.append(...panelContent(state, {
      toggled: () => { keepComment(); save(); },
      saveComment: () => { keepComment(); save("Comment saved"); },
      clear: () => { state.value = null; state.reasons.clear(); state.comment = ""; paint(); save("Vote cleared"); },
      done: () => { if (keepComment()) save("Comment saved"); state.open = false; paint(); up.focus(); },
    }));
    if (wasHidden) requestAnimationFrame(() => panel.scrollIntoView({ block: "nearest", behavior: "smooth" }));
  }

  function apply(t) {
    if (!t) return;
    state.value = t.value;
    state.reasons = new Set(t.reasons);
    state.comment = t.comment;
    paint();
  }

  const known = thumbsOf(message);
  if (known || "thumbs" in message) apply(known);
  else api.get(`/api/messages/${id}`).then((m) => apply(thumbsOf(m))).catch(() => {});
  paint();
  return root;
}
