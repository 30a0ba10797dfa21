// The chat view: conversation list, streamed answers, stop, regenerate, edit, compare and rank.
//
// A conversation is a tree: an edited message is a sibling of the one it replaces (same
// parent), and a turn may hold several answers (a comparison, a ranking, regenerations).
// The thread shows one path through it; "‹ 1/2 ›" switchers reach every sibling and answer.

import { api, streamChat } from "./api.js";
import { feedbackBar, getGuidelines, guidelinesButton } from "./feedback.js";
import { enhanceCode, renderMarkdown } from "./markdown.js";
import { LENGTHS, deletedIds, getLength, markDeleted, setLength, setPrefsUser, settled, userKey } from "./prefs.js";
import { refreshConversations, setActiveConversation } from "./sidebar.js";
import { threadPath, verdictText } from "./thread.js";
import { button, el, toast } from "./ui.js";

const S = {
  user: null,
  limits: { max_prompt_chars: 8000, max_tokens_default: 256, max_tokens_limit: 1024 },
  convId: null,
  detail: null,
  verdicts: [],
  mode: "single",              // single | compare | rank
  pending: new Map(),          // user turn id -> {kind, ids}: candidates awaiting a verdict
  askRegen: new Map(),         // user turn id -> {now, before}: "better / worse / same?"
  branch: new Map(),           // sibling-group key -> user turn id shown
  shown: new Map(),            // user turn id -> answer id shown
  streaming: null,             // {controller}
  epoch: 0,                    // bumps when the view changes, so stale work does not render
  failed: null,                // {body, content, message}: the last send that did not go through
  thread: null, input: null, sendBtn: null, stopBtn: null, note: null, counter: null, alert: null,
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const LETTERS = ["A", "B", "C", "D"];

export function setChatUser(user) {
  S.user = user;
  setPrefsUser(user);
  S.limits = { ...S.limits, ...(user.limits || {}) };
  S.pending = new Map(JSON.parse(localStorage.getItem(pendingKey()) || "[]"));
}
setActiveConversation(() => S.convId);

export const isStreaming = () => Boolean(S.streaming);
export function stopGeneration() { S.streaming?.controller.abort(); }

const pendingKey = () => userKey("pending");
function savePending() { localStorage.setItem(pendingKey(), JSON.stringify([...S.pending].slice(-50))); }

// ---- the view -----------------------------------------------------------------------------

export async function showChat(view, convId) {
  stopGeneration();
  S.epoch++;
  S.convId = convId;
  S.detail = null;
  S.verdicts = [];
  S.branch.clear();
  S.shown.clear();
  S.thread = el("div", { class: "thread", id: "thread", "aria-busy": "false" });
  view.replaceChildren(el("div", { class: "chat" }, S.thread, composer()));
  setTitle(convId ? "Loading…" : "New chat");
  refreshConversations();
  if (!convId) {
    S.thread.append(welcome());
    S.input.focus();
    return;
  }
  if (deletedIds().has(convId)) {
    notFound("This conversation was deleted.", 404);
    return;
  }
  await reload();
  S.input.focus();
}

function setTitle(text) {
  const t = document.getElementById("page-title");
  if (t) t.textContent = text;
}

function welcome() {
  const name = S.user?.name ? `, ${S.user.name}` : "";
  return el("div", { class: "welcome" },
    el("h2", { text: `Hello${name}. What can I help with?` }),
    el("p", { class: "muted", text: "Your assistant learns from your feedback: rate answers with a thumbs up or down, and now and then pick the better of two." }),
    el("ul", { class: "tips" },
      el("li", {}, el("kbd", { text: "Enter" }), " sends, ", el("kbd", { text: "Shift+Enter" }), " adds a line"),
      el("li", {}, el("kbd", { text: "Esc" }), " stops an answer"),
      el("li", {}, "Compare mode shows two answers side by side")));
}

function composer() {
  S.input = el("textarea", { id: "prompt", class: "prompt", rows: "1", "aria-label": "Message",
    placeholder: "Message your assistant…", "aria-describedby": "char-count" });
  S.input.value = localStorage.getItem(userKey("draft")) || "";
  S.input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  S.input.addEventListener("input", () => { grow(); count(); localStorage.setItem(userKey("draft"), S.input.value); });
  S.sendBtn = button({ label: "Send message", iconName: "send", cls: "btn-send", onclick: send });
  S.stopBtn = button({ label: "Stop generating", iconName: "stop", cls: "btn-send btn-stop", hidden: true,
    onclick: stopGeneration });
  const modes = [["single", "Single", "one answer"], ["compare", "Compare", "two answers side by side"],
    ["rank", "Rank 3", "three answers to put in order"]];
  const seg = el("div", { class: "seg", role: "group", "aria-label": "Answer mode" },
    modes.map(([value, text, label]) => el("button", { type: "button", class: "seg-btn",
      "aria-pressed": String(S.mode === value), "aria-label": `${text}: ${label}`, title: label,
      dataset: { mode: value }, onclick: (e) => setMode(value, e.currentTarget.parentElement) }, text)));
  const length = el("select", { class: "input input-small", id: "answer-length", "aria-label": "Answer length",
    title: "How long answers may be", onchange: (e) => setLength(e.target.value).catch((err) => toast(`Answer length not saved: ${err.message}`, "error")) },
  LENGTHS.map(([v, text]) => el("option", { value: v, text: `${text} answers`, selected: v === getLength() })));
  S.note = el("span", { class: "composer-note small muted", role: "status" });
  S.counter = el("span", { class: "char-count small", id: "char-count", "aria-live": "polite" });
  S.alert = el("div", { class: "send-error", role: "alert", hidden: true });
  const form = el("form", { class: "composer", onsubmit: (e) => { e.preventDefault(); send(); } },
    S.alert,
    el("div", { class: "composer-box" }, S.input, S.sendBtn, S.stopBtn),
    el("div", { class: "composer-bar" }, seg, length, S.note, S.counter,
      el("span", { class: "hint small muted", text: "Enter to send · Shift+Enter new line · Esc to stop" })));
  queueMicrotask(() => { grow(); count(); });
  return form;
}

function setMode(mode, seg) {
  S.mode = mode;
  for (const b of seg.querySelectorAll(".seg-btn")) b.setAttribute("aria-pressed", String(b.dataset.mode === mode));
  S.note.textContent = "";
}

function grow() {
  S.input.style.height = "auto";
  S.input.style.height = `${Math.min(S.input.scrollHeight, 220)}px`;
}

/** The character counter appears from 80% of the limit and turns red past it. */
function count() {
  const n = S.input.value.length, limit = S.limits.max_prompt_chars;
  const near = n >= limit * 0.8;
  S.counter.textContent = near ? `${n.toLocaleString()} / ${limit.toLocaleString()}` : "";
  S.counter.classList.toggle("over", n > limit);
  S.counter.title = n > limit ? `${(n - limit).toLocaleString()} characters over the limit` : "";
}

function setBusy(busy) {
  S.sendBtn.hidden = busy;
  S.stopBtn.hidden = !busy;
  S.thread.setAttribute("aria-busy", String(busy));
  if (!busy) S.input.focus();
}

function showSendError(message, retry) {
  S.alert.hidden = false;
  S.alert.replaceChildren(el("span", { text: message }),
    retry ? button({ label: "Retry sending", text: "Retry", cls: "btn btn-small", onclick: retry }) : null,
    button({ label: "Dismiss", iconName: "close", cls: "btn-icon", onclick: hideSendError }));
}

function hideSendError() { S.alert.hidden = true; S.alert.replaceChildren(); }

/** A sentence a person can act on, from an API error. */
function humanError(err) {
  const limit = S.limits.max_prompt_chars.toLocaleString();
  if (err.status === 0) return "Can't reach the assistant right now. Your message is still in the box; check your connection and retry.";
  if (err.status === 413) return `Your message is too long: the limit is ${limit} characters. Shorten it and send again.`;
  if (err.status === 401) return "Your key is no longer accepted. Sign in again; your message is still in the box.";
  if (err.status === 429) return "The assistant is busy. Wait a moment, then retry.";
  if (err.status >= 500) return "The assistant had a problem answering. Your message is still in the box; retry in a moment.";
  return `Not sent: ${err.message}`;
}

// ---- loading and rendering a conversation -------------------------------------------------

function notFound(message, status) {
  setTitle("Not found");
  S.thread.replaceChildren(el("div", { class: "empty-state" },
    el("h2", { text: status === 404 ? "Conversation not found" : "Could not load the conversation" }),
    el("p", { class: "muted", text: message }),
    el("a", { href: "#/", class: "btn btn-primary", text: "Start a new chat" })));
}

async function reload(waitForTurn = null) {
  const epoch = S.epoch;
  let detail;
  const deadline = Date.now() + 3000;
  for (;;) {
    try {
      detail = await api.get(`/api/conversations/${S.convId}`);
    } catch (err) {
      if (epoch === S.epoch) notFound(err.message, err.status);
      return;
    }
    const turn = waitForTurn && detail.turns.find((t) => t.id === waitForTurn);
    if (!turn || turn.candidates.length || Date.now() > deadline) break;
    await sleep(100);                 // a stopped answer is stored a moment after the stop
  }
  let verdicts = [];
  try { verdicts = await api.get(`/api/conversations/${S.convId}/verdicts`); } catch { verdicts = []; }
  if (epoch !== S.epoch) return;
  S.detail = detail;
  S.verdicts = verdicts;
  setTitle(detail.title || "Conversation");
  renderThread();
}

/** The answer shown at the end of the thread: what a new message continues from. */
function shownTip() {
  if (!S.detail) return null;
  const steps = threadPath(S.detail, S.branch);
  const turn = steps[steps.length - 1]?.turn;
  if (!turn || !turn.candidates.length) return null;
  const shown = turn.candidates.find((c) => c.id === S.shown.get(turn.id));
  return (shown || turn.candidates.find((c) => c.chosen) || turn.candidates[turn.candidates.length - 1]).id;
}

function renderThread() {
  const steps = threadPath(S.detail, S.branch);
  S.thread.replaceChildren(...steps.map((step, i) => turnEl(step, i === steps.length - 1)));
  for (const md of S.thread.querySelectorAll(".md:not(.streaming)")) enhanceCode(md);
  scrollDown();
}

function scrollDown() {
  S.thread.scrollTop = S.thread.scrollHeight;
}

function switcher(label, one, index, total, go) {
  return el("div", { class: "switcher", role: "group", "aria-label": label },
    button({ label: `Previous ${one}`, iconName: "left", cls: "btn-icon btn-tiny",
      disabled: index === 0, onclick: () => go(index - 1) }),
    el("span", { class: "switcher-n small", text: `${index + 1}/${total}` }),
    button({ label: `Next ${one}`, iconName: "right", cls: "btn-icon btn-tiny",
      disabled: index === total - 1, onclick: () => go(index + 1) }));
}

function userBubble(turn, step) {
  const bubble = el("div", { class: "bubble", text: turn.content });
  const wrap = el("div", { class: "msg msg-user" });
  const tools = el("div", { class: "user-tools" });
  if (step && step.siblings.length > 1) {
    const i = step.siblings.indexOf(turn);
    tools.append(switcher("Versions of this message", "version of this message", i, step.siblings.length, (j) => {
      S.branch.set(step.key, step.siblings[j].id);
      renderThread();
    }));
  }
  if (step) tools.append(button({ label: "Edit message", iconName: "edit", cls: "btn-icon btn-tiny edit-msg",
    onclick: () => startEdit(wrap, turn) }));
  wrap.append(tools, bubble);
  return wrap;
}

function startEdit(wrap, turn) {
  if (S.streaming) return;
  const box = el("textarea", { class: "input edit-box", rows: "3", "aria-label": "Edit your message" });
  box.value = turn.content;
  const save = () => {
    const content = box.value.trim();
    if (!content) return;
    if (content.length > S.limits.max_prompt_chars) { toast(humanError({ status: 413 }), "error"); return; }
    const article = wrap.closest(".turn");
    for (let next = article.nextElementSibling; next; next = article.nextElementSibling) next.remove();
    article.replaceChildren(userBubble({ ...turn, content }));
    runStream({ edit: turn.id, content, n: 1 }, article, 1);
  };
  box.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); save(); }
    if (e.key === "Escape") { e.stopPropagation(); renderThread(); }
  });
  wrap.replaceChildren(el("div", { class: "edit-wrap" }, box,
    el("div", { class: "row row-end" },
      button({ label: "Cancel edit", text: "Cancel", cls: "btn btn-small btn-ghost", onclick: () => renderThread() }),
      button({ label: "Send edited message", text: "Send", cls: "btn btn-small btn-primary", onclick: save }))));
  box.focus();
}

function turnEl(step, isLast) {
  const turn = step.turn;
  const article = el("article", { class: "turn", dataset: { turnId: turn.id } }, userBubble(turn, step));
  const pending = S.pending.get(turn.id);
  if (pending && !verdictOf(pending.ids)) {
    const cands = pending.ids.map((id) => turn.candidates.find((c) => c.id === id)).filter(Boolean);
    if (cands.length === pending.ids.length) {
      article.append(verdictBlock(turn, cands, pending.kind));
      return article;
    }
  }
  if (pending) { S.pending.delete(turn.id); savePending(); }
  const cands = turn.candidates;
  if (!cands.length) {
    article.append(el("div", { class: "msg msg-assistant" },
      el("p", { class: "muted small", text: "No answer was stored for this message." }),
      el("div", { class: "answer-foot" }, regenButton(turn))));
    return article;
  }
  const shownId = S.shown.get(turn.id);
  const msg = cands.find((c) => c.id === shownId) || cands.find((c) => c.chosen) || cands[cands.length - 1];
  article.append(answerEl(msg, turn, isLast));
  const ask = S.askRegen.get(turn.id);
  if (ask && !verdictOf([ask.now, ask.before])) article.append(regenQuestion(turn, ask));
  return article;
}

// ---- verdicts -----------------------------------------------------------------------------

function verdictOf(ids) {
  return S.verdicts.find((v) => ids.every((id) => v.message_ids.includes(id)));
}

function modelBadge(msg) {
  const model = msg.model || "base";
  if (model === "personal") {
    const v = msg.adapter_version != null ? ` · v${msg.adapter_version}` : "";
    return el("span", { class: "badge badge-personal", title: "Answered by your personal assistant",
      text: `Personal${v}` });
  }
  return el("span", { class: "badge badge-base", title: "Answered by the shared base model",
    text: model === "base" ? "Base model" : model });
}

function finishTag(msg) {
  if (msg.finish_reason === "cancelled") return el("span", { class: "tag", text: "stopped" });
  if (msg.finish_reason === "length") return el("span", { class: "tag", text: "cut at length limit" });
  return null;
}

function answerEl(msg, turn, isLast) {
  const md = el("div", { class: "md" });
  md.innerHTML = renderMarkdown(msg.content);
  const cands = turn.candidates;
  const index = cands.indexOf(msg);
  const words = verdictText(msg, turn, S.verdicts);
  const unrated = cands.length > 1 && !S.verdicts.some((v) => v.message_ids.some((id) => cands.some((c) => c.id === id)));
  const fb = feedbackBar(msg);
  return el("div", { class: "msg msg-assistant", dataset: { messageId: msg.id } },
    md,
    words.length ? el("p", { class: "verdict-note small" }, words.join(" · ")) : null,
    el("div", { class: "answer-foot" },
      el("div", { class: "answer-info" }, modelBadge(msg), finishTag(msg),
        cands.length > 1 ? switcher("Answers", "answer", index, cands.length, (j) => { S.shown.set(turn.id, cands[j].id); renderThread(); }) : null,
        cands.length > 1 && !msg.chosen ? el("span", { class: "tag", text: "not followed" }) : null),
      fb,
      el("div", { class: "answer-actions" },
        unrated ? button({ label: "Compare these answers", text: "Compare", cls: "btn btn-ghost btn-small",
          onclick: () => openCompare(turn, msg) }) : null,
        button({ label: "Copy answer", iconName: "copy", cls: "btn-icon", onclick: () => copy(msg.content) }),
        regenButton(turn))),
    fb.panel);
}

function openCompare(turn, msg) {
  const cands = turn.candidates;
  const ids = cands.length === 3 ? cands.map((c) => c.id)
    : [cands.find((c) => c.id !== msg.id).id, msg.id].sort((a, b) => a - b);
  S.pending.set(turn.id, { kind: ids.length === 3 ? "rank" : "compare", ids });
  savePending();
  renderThread();
}

function regenButton(turn) {
  return button({ label: "Regenerate answer", text: "Regenerate", iconName: "redo", cls: "btn btn-ghost btn-small",
    onclick: () => regenerate(turn) });
}

function regenQuestion(turn, ask) {
  const box = el("div", { class: "regen-ask", role: "group", "aria-label": "Compare with the previous answer" });
  const choose = (choice) => submit(turn, "/api/comparisons", { message_ids: [ask.now, ask.before], choice }, box,
    () => S.askRegen.delete(turn.id));
  box.append(el("span", { class: "small", text: "Is this answer better than the previous one?" }),
    button({ label: "Better than the previous answer", text: "Better", cls: "btn btn-small btn-choice", onclick: () => choose("a") }),
    button({ label: "Worse than the previous answer", text: "Worse", cls: "btn btn-small btn-choice", onclick: () => choose("b") }),
    button({ label: "Same as the previous answer", text: "Same", cls: "btn btn-small btn-ghost", onclick: () => choose("tie") }),
    button({ label: "Don't compare", iconName: "close", cls: "btn-icon btn-tiny", onclick: () => { S.askRegen.delete(turn.id); box.remove(); } }));
  return box;
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    toast("Copied");
  } catch {
    toast("Copy is not available here", "error");
  }
}

// ---- compare (2) and rank (3) -------------------------------------------------------------

function candidateCard(msg, index, extra) {
  const md = el("div", { class: "md" });
  md.innerHTML = renderMarkdown(msg.content);
  return el("div", { class: "cand", dataset: { messageId: msg.id, letter: LETTERS[index] } },
    el("div", { class: "cand-head" },
      el("span", { class: "cand-letter", text: `Answer ${LETTERS[index]}` }), modelBadge(msg), finishTag(msg)),
    md, extra);
}

function verdictBlock(turn, cands, kind) {
  const g = getGuidelines();
  const section = el("section", { class: `verdict verdict-${kind}`, "aria-label": kind === "rank" ? "Rank answers" : "Compare answers" });
  const head = el("div", { class: "verdict-head" },
    el("p", { class: "criterion", text: kind === "rank"
      ? "Put the answers in order: click the best first." : g.criterion || "Which answer is better?" }),
    guidelinesButton(true));
  if (kind === "rank") return rankBlock(section, head, turn, cands);
  const grid = el("div", { class: "cands cands-2" }, cands.map((c, i) => candidateCard(c, i)));
  const choose = (choice) => submit(turn, "/api/comparisons",
    { message_ids: cands.map((c) => c.id), choice }, section);
  section.append(head, grid, el("div", { class: "verdict-actions" },
    button({ label: "A is better", text: "A is better", cls: "btn btn-choice", onclick: () => choose("a") }),
    button({ label: "B is better", text: "B is better", cls: "btn btn-choice", onclick: () => choose("b") }),
    button({ label: "Tie", text: "Tie", cls: "btn btn-ghost", onclick: () => choose("tie") }),
    button({ label: "Both bad", text: "Both bad", cls: "btn btn-ghost", onclick: () => choose("both_bad") }),
    skipButton(turn)));
  return section;
}

function rankBlock(section, head, turn, cands) {
  const order = [];
  const summary = el("p", { class: "rank-summary small muted", role: "status" });
  const submitBtn = button({ label: "Submit ranking", text: "Submit ranking", cls: "btn btn-primary", disabled: true,
    onclick: () => submit(turn, "/api/rankings", { message_ids: order }, section) });
  const cards = cands.map((c, i) => {
    const pick = el("button", { type: "button", class: "btn btn-small btn-choice rank-pick",
      title: `Rank answer ${LETTERS[i]} next`, dataset: { letter: LETTERS[i] },
      onclick: () => { if (!order.includes(c.id)) order.push(c.id); paint(); } });
    return { c, i, pick, card: candidateCard(c, i, el("div", { class: "cand-foot" }, pick)) };
  });
  const paint = () => {
    if (order.length === cands.length - 1) {         // the last one is implied
      const rest = cands.find((c) => !order.includes(c.id));
      if (rest) order.push(rest.id);
    }
    for (const { c, card, pick, i } of cards) {
      const pos = order.indexOf(c.id);
      card.dataset.rank = pos >= 0 ? String(pos + 1) : "";
      pick.disabled = pos >= 0;
      pick.textContent = pos >= 0 ? `Answer ${LETTERS[i]} is #${pos + 1}` : `Rank answer ${LETTERS[i]} #${order.length + 1}`;
    }
    const letters = order.map((id) => LETTERS[cands.findIndex((c) => c.id === id)]);
    summary.textContent = letters.length ? `Your order: ${letters.join(" › ")}` : "Nothing ranked yet.";
    submitBtn.disabled = order.length !== cands.length;
  };
  paint();
  section.append(head, el("div", { class: `cands cands-${cands.length}` }, cards.map((x) => x.card)),
    el("div", { class: "verdict-actions" }, summary, submitBtn,
      button({ label: "Reset ranking", text: "Reset", cls: "btn btn-ghost", onclick: () => { order.length = 0; paint(); } }),
      skipButton(turn)));
  return section;
}

function skipButton(turn) {
  return button({ label: "Skip rating for now", text: "Skip", cls: "btn btn-ghost btn-skip",
    onclick: () => { S.pending.delete(turn.id); savePending(); renderThread(); } });
}

async function submit(turn, path, body, section, after) {
  for (const b of section.querySelectorAll("button")) b.disabled = true;
  try {
    await api.post(path, body);
    S.pending.delete(turn.id);
    savePending();
    after?.();
    toast("Thanks — your choice was saved");
    await reload();
  } catch (err) {
    for (const b of section.querySelectorAll("button")) b.disabled = false;
    toast(err.message, "error");
  }
}

// ---- sending and streaming ----------------------------------------------------------------

function turnCounterKey() { return userKey("turns"); }

function pickN() {
  if (S.mode === "compare") return { n: 2 };
  if (S.mode === "rank") return { n: 3 };
  const every = Number(getGuidelines().compare_every) || 0;
  const count = Number(localStorage.getItem(turnCounterKey()) || 0);
  if (every > 0 && (count + 1) % every === 0) return { n: 2, auto: true };
  return { n: 1 };
}

async function send() {
  const content = S.input.value.trim();
  if (!content || S.streaming) return;
  if (content.length > S.limits.max_prompt_chars) {
    showSendError(humanError({ status: 413 }));
    return;
  }
  const open = [...S.pending.keys()].find((id) => S.thread.querySelector(`.turn[data-turn-id="${id}"] .verdict`));
  if (open) {
    toast("Please rate the answers above first (or skip).", "error");
    return;
  }
  hideSendError();
  const { n, auto } = pickN();
  S.note.textContent = auto ? `Comparison turn: every ${getGuidelines().compare_every}th answer asks you to pick the better one.` : "";
  if (!S.convId) S.thread.replaceChildren();
  const article = el("article", { class: "turn" }, userBubble({ content }));
  S.thread.append(article);
  const body = { content, n };         // max_tokens: the server applies the answer length
  if (S.convId) body.conversation_id = S.convId;
  const tip = shownTip();
  if (tip != null) body.follow = tip;          // continue the branch on screen
  await runStream(body, article, n);
}

async function regenerate(turn) {
  if (S.streaming) return;
  const before = (turn.candidates.find((c) => c.id === S.shown.get(turn.id)) || turn.candidates.find((c) => c.chosen))?.id;
  const article = S.thread.querySelector(`.turn[data-turn-id="${turn.id}"]`);
  for (let next = article.nextElementSibling; next; next = article.nextElementSibling) next.remove();
  article.replaceChildren(userBubble(turn));
  await runStream({ regenerate: turn.id, n: 1 }, article, 1, before);
}

function liveBlock(article, n) {
  const texts = Array(n).fill("");
  const mds = texts.map(() => el("div", { class: "md streaming" }));
  const infos = texts.map(() => el("span", { class: "badge badge-wait", text: "Thinking…" }));
  const block = n === 1
    ? el("div", { class: "msg msg-assistant live" }, mds[0], el("div", { class: "answer-foot" }, el("div", { class: "answer-info" }, infos[0])))
    : el("div", { class: "verdict live" }, el("div", { class: `cands cands-${n}` }, mds.map((md, i) =>
      el("div", { class: "cand" }, el("div", { class: "cand-head" },
        el("span", { class: "cand-letter", text: `Answer ${LETTERS[i]}` }), infos[i]), md))));
  article.append(block);
  scrollDown();
  let timer = null;
  const paint = () => {
    timer = null;
    const stick = S.thread.scrollHeight - S.thread.scrollTop - S.thread.clientHeight < 80;
    texts.forEach((t, i) => { mds[i].innerHTML = renderMarkdown(t); });
    if (stick) scrollDown();
  };
  return {
    block,
    start(d) { for (const info of infos) info.replaceWith(modelBadge({ model: d.model })); },
    delta(d) { texts[d.index] = (texts[d.index] || "") + d.text; if (!timer) timer = setTimeout(paint, 30); },
    end(message) {
      clearTimeout(timer);
      paint();
      for (const md of mds) md.classList.remove("streaming");
      for (const info of block.querySelectorAll(".badge-wait")) info.remove();
      if (message) block.append(el("p", { class: "small muted stop-note", text: message }));
    },
  };
}

async function runStream(body, article, n, before = null) {
  const epoch = S.epoch;
  const live = liveBlock(article, n);
  const controller = new AbortController();
  S.streaming = { controller };
  setBusy(true);
  let turnId = null;
  let convId = S.convId;
  let stopped = false;
  let accepted = false;
  const draft = body.content;
  try {
    await settled();              // a just-changed answer length is saved before it is used
    const done = await streamChat(body, {
      start: (d) => {
        accepted = true;
        convId = d.conversation_id;
        turnId = d.message?.id;
        live.start(d);
        if (d.notice) S.note.textContent = d.notice;      // e.g. served by an earlier version
        if (draft != null && body.edit == null && S.input.value.trim() === draft) {   // accepted: the draft goes
          S.input.value = "";
          localStorage.removeItem(userKey("draft"));
          grow();
          count();
        }
        if (epoch === S.epoch && S.convId !== convId) {   // a new conversation: show it at once
          S.convId = convId;
          markDeleted(convId, false);
          history.replaceState(null, "", `#/c/${convId}`);
          setTitle(d.message?.content?.split(/\s+/).join(" ").slice(0, 60) || "Conversation");
          refreshConversations();
        }
      },
      delta: (d) => live.delta(d),
    }, controller.signal);
    turnId = done.message?.id ?? turnId;
    const ids = (done.candidates || []).map((c) => c.id);
    if (ids.length > 1) { S.pending.set(turnId, { kind: ids.length === 2 ? "compare" : "rank", ids }); savePending(); }
    if (body.regenerate != null && before != null && ids.length === 1) S.askRegen.set(turnId, { now: ids[0], before });
    if (ids.length === 1) S.shown.set(turnId, ids[0]);
    if (body.regenerate == null) {
      localStorage.setItem(turnCounterKey(), String(Number(localStorage.getItem(turnCounterKey()) || 0) + 1));
    }
    live.end();
  } catch (err) {
    if (err.name === "AbortError") {
      stopped = true;
      live.end("Stopped — the partial answer was kept.");
    } else {
      live.end();
      live.block.remove();
      const retry = () => { hideSendError(); retrySend(body, article, n, accepted, turnId); };
      if (!accepted) {
        if (body.regenerate == null && body.edit == null) {
          article.remove();
          if (!S.input.value.trim()) { S.input.value = draft; grow(); count(); }
        }
        showSendError(humanError(err), retry);
      } else {
        article.append(el("p", { class: "error", role: "alert" }, "The answer was interrupted. ",
          button({ label: "Retry the answer", text: "Retry", cls: "btn btn-small", onclick: retry })));
      }
      return;
    }
  } finally {
    S.streaming = null;
    if (epoch === S.epoch) setBusy(false);
  }
  if (epoch !== S.epoch || convId == null) return;
  if (S.convId !== convId) {
    S.convId = convId;
    history.replaceState(null, "", `#/c/${convId}`);
  }
  if (turnId != null) await reload(stopped ? turnId : null);
  refreshConversations();
}

/** Send again what failed: the same request, or (once the turn was stored) an answer to it. */
function retrySend(body, article, n, accepted, turnId) {
  if (S.streaming) return;
  if (accepted && turnId != null) {
    article.querySelector(".error")?.remove();
    runStream({ regenerate: turnId, n }, article, n);
    return;
  }
  if (body.regenerate != null || body.edit != null) {
    runStream(body, article, n);
    return;
  }
  S.input.value = body.content;
  send();
}
