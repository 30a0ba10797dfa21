// The chat view: conversation list, streamed answers, stop, regenerate, compare and rank.

import { api, streamChat } from "./api.js";
import { feedbackBar, getGuidelines, guidelinesButton } from "./feedback.js";
import { renderMarkdown } from "./markdown.js";
import { button, clear, confirmDialog, el, icon, toast } from "./ui.js";

const S = {
  user: null,
  convId: null,
  detail: null,
  mode: "single",              // single | compare | rank
  pending: new Map(),          // user turn id -> {kind, ids}: candidates awaiting a verdict
  streaming: null,             // {controller}
  epoch: 0,                    // bumps when the view changes, so stale work does not render
  thread: null, input: null, sendBtn: null, stopBtn: null, note: null,
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const LETTERS = ["A", "B", "C", "D"];

export function setChatUser(user) { S.user = user; S.pending.clear(); }
export const isStreaming = () => Boolean(S.streaming);
export function stopGeneration() { S.streaming?.controller.abort(); }

// ---- conversation list (sidebar) ----------------------------------------------------------

export async function refreshConversations() {
  const list = document.getElementById("conv-list");
  if (!list) return;
  let convs;
  try {
    convs = await api.get("/api/conversations");
  } catch (err) {
    list.replaceChildren(el("li", { class: "muted small empty", text: err.message }));
    return;
  }
  if (!convs.length) {
    list.replaceChildren(el("li", { class: "muted small empty", text: "No conversations yet." }));
    return;
  }
  list.replaceChildren(...convs.map((c) => {
    const title = c.title || "Untitled";
    const active = c.id === S.convId && location.hash.startsWith("#/c/");
    return el("li", { class: active ? "conv active" : "conv", dataset: { id: c.id } },
      el("a", { href: `#/c/${c.id}`, class: "conv-link", "aria-current": active ? "page" : null },
        el("span", { class: "conv-title", text: title }),
        el("span", { class: "conv-meta", text: `${c.turns ?? 0} ${c.turns === 1 ? "turn" : "turns"}` })),
      button({ label: `Delete conversation “${title}”`, iconName: "trash", cls: "btn-icon conv-delete",
        onclick: () => deleteConversation(c.id, title) }));
  }));
}

async function deleteConversation(id, title) {
  const ok = await confirmDialog({ title: "Delete this conversation?",
    body: `“${title}” and the feedback on it will be deleted. This cannot be undone.`,
    confirm: "Delete", danger: true });
  if (!ok) return;
  try {
    await api.del(`/api/conversations/${id}`);
    toast("Conversation deleted");
    if (S.convId === id) location.hash = "#/";
    refreshConversations();
  } catch (err) {
    toast(err.message, "error");
  }
}

// ---- the view -----------------------------------------------------------------------------

export async function showChat(view, convId) {
  stopGeneration();
  S.epoch++;
  S.convId = convId;
  S.detail = null;
  S.thread = el("div", { class: "thread", id: "thread", "aria-live": "polite", "aria-busy": "false" });
  view.replaceChildren(el("div", { class: "chat" }, S.thread, composer()));
  setTitle(convId ? "Loading…" : "New chat");
  refreshConversations();
  if (!convId) {
    S.thread.append(welcome());
    S.input.focus();
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
    placeholder: "Message your assistant…", maxlength: "20000" });
  S.input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  S.input.addEventListener("input", grow);
  S.sendBtn = button({ label: "Send message", iconName: "send", cls: "btn-send", onclick: send });
  S.stopBtn = button({ label: "Stop generating", iconName: "stop", cls: "btn-send btn-stop", hidden: true,
    onclick: stopGeneration });
  const modes = [["single", "Single", "One answer"], ["compare", "Compare", "Two answers side by side"],
    ["rank", "Rank 3", "Three answers to put in order"]];
  const seg = el("div", { class: "seg", role: "group", "aria-label": "Answer mode" },
    modes.map(([value, text, label]) => el("button", { type: "button", class: "seg-btn",
      "aria-pressed": String(S.mode === value), "aria-label": `${text}: ${label}`, title: label,
      dataset: { mode: value }, onclick: (e) => setMode(value, e.currentTarget.parentElement) }, text)));
  S.note = el("span", { class: "composer-note small muted", role: "status" });
  return el("form", { class: "composer", onsubmit: (e) => { e.preventDefault(); send(); } },
    el("div", { class: "composer-box" }, S.input, S.sendBtn, S.stopBtn),
    el("div", { class: "composer-bar" }, seg, S.note,
      el("span", { class: "hint small muted", text: "Enter to send · Shift+Enter new line · Esc to stop" })));
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

function setBusy(busy) {
  S.sendBtn.hidden = busy;
  S.stopBtn.hidden = !busy;
  S.thread.setAttribute("aria-busy", String(busy));
  if (!busy) S.input.focus();
}

// ---- loading and rendering a conversation -------------------------------------------------

async function reload(waitForTurn = null) {
  const epoch = S.epoch;
  let detail;
  for (let attempt = 0; attempt < 20; attempt++) {
    try {
      detail = await api.get(`/api/conversations/${S.convId}`);
    } catch (err) {
      if (epoch !== S.epoch) return;
      setTitle("Not found");
      S.thread.replaceChildren(el("div", { class: "empty-state" },
        el("h2", { text: err.status === 404 ? "Conversation not found" : "Could not load the conversation" }),
        el("p", { class: "muted", text: err.message }),
        el("a", { href: "#/", class: "btn btn-primary", text: "Start a new chat" })));
      return;
    }
    const turn = waitForTurn && detail.turns.find((t) => t.id === waitForTurn);
    if (!turn || turn.candidates.length) break;
    await sleep(150);                 // a stopped answer is stored a moment after the stop
  }
  if (epoch !== S.epoch) return;
  S.detail = detail;
  setTitle(detail.title || "Conversation");
  renderThread();
}

function renderThread() {
  const turns = S.detail.turns;
  S.thread.replaceChildren(...turns.map((t, i) => turnEl(t, i === turns.length - 1)));
  scrollDown();
}

function scrollDown() {
  S.thread.scrollTop = S.thread.scrollHeight;
}

function userBubble(text) {
  return el("div", { class: "msg msg-user" }, el("div", { class: "bubble", text }));
}

function turnEl(turn, isLast) {
  const article = el("article", { class: "turn", dataset: { turnId: turn.id } }, userBubble(turn.content));
  const pending = S.pending.get(turn.id);
  if (pending) {
    const cands = pending.ids.map((id) => turn.candidates.find((c) => c.id === id)).filter(Boolean);
    if (cands.length === pending.ids.length) {
      article.append(verdictBlock(turn, cands, pending.kind));
      return article;
    }
    S.pending.delete(turn.id);
  }
  const chosen = turn.candidates.find((c) => c.chosen) || turn.candidates[turn.candidates.length - 1];
  if (!chosen) {
    article.append(el("div", { class: "msg msg-assistant" },
      el("p", { class: "muted small", text: "No answer was stored for this message." }),
      isLast ? el("div", { class: "answer-foot" }, regenButton(turn)) : null));
    return article;
  }
  article.append(answerEl(chosen, turn, isLast));
  return article;
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
  const extra = turn.candidates.length > 1
    ? el("span", { class: "tag", text: `chosen of ${turn.candidates.length}` }) : null;
  return el("div", { class: "msg msg-assistant", dataset: { messageId: msg.id } },
    md,
    el("div", { class: "answer-foot" },
      el("div", { class: "answer-info" }, modelBadge(msg), finishTag(msg), extra),
      feedbackBar(msg),
      el("div", { class: "answer-actions" },
        button({ label: "Copy answer", iconName: "copy", cls: "btn-icon", onclick: () => copy(msg.content) }),
        isLast ? regenButton(turn) : null)));
}

function regenButton(turn) {
  return button({ label: "Regenerate answer", text: "Regenerate", iconName: "redo", cls: "btn btn-ghost btn-small",
    onclick: () => regenerate(turn) });
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
    const pick = button({ label: `Rank answer ${LETTERS[i]} next`, text: "Pick", cls: "btn btn-small btn-choice rank-pick",
      onclick: () => { if (!order.includes(c.id)) order.push(c.id); paint(); } });
    return { c, i, pick, card: candidateCard(c, i, el("div", { class: "cand-foot" }, pick)) };
  });
  const paint = () => {
    if (order.length === cands.length - 1) {         // the last one is implied
      const rest = cands.find((c) => !order.includes(c.id));
      if (rest) order.push(rest.id);
    }
    for (const { c, card, pick } of cards) {
      const pos = order.indexOf(c.id);
      card.dataset.rank = pos >= 0 ? String(pos + 1) : "";
      pick.disabled = pos >= 0;
      pick.querySelector("span").textContent = pos >= 0 ? `#${pos + 1}` : `Pick as #${order.length + 1}`;
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
  return button({ label: "Skip rating and keep answer A", text: "Skip", cls: "btn btn-ghost btn-skip",
    onclick: () => { S.pending.delete(turn.id); renderThread(); } });
}

async function submit(turn, path, body, section) {
  for (const b of section.querySelectorAll("button")) b.disabled = true;
  try {
    await api.post(path, body);
    S.pending.delete(turn.id);
    toast("Thanks — your choice was saved");
    await reload();
  } catch (err) {
    for (const b of section.querySelectorAll("button")) b.disabled = false;
    toast(err.missing ? "Comparisons aren't available on this server yet." : err.message, "error");
  }
}

// ---- sending and streaming ----------------------------------------------------------------

function turnCounterKey() { return `assistant.turns.${S.user?.id ?? S.user?.name ?? "me"}`; }

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
  if ([...S.pending.keys()].some((id) => S.detail?.turns.some((t) => t.id === id))) {
    toast("Please rate the answers above first (or skip).", "error");
    return;
  }
  const { n, auto } = pickN();
  S.note.textContent = auto ? `Comparison turn: every ${getGuidelines().compare_every}th answer asks you to pick the better one.` : "";
  S.input.value = "";
  grow();
  if (!S.convId) clear(S.thread);
  const article = el("article", { class: "turn" }, userBubble(content));
  S.thread.append(article);
  const body = { content, n };
  if (S.convId) body.conversation_id = S.convId;
  await runStream(body, article, n);
}

async function regenerate(turn) {
  if (S.streaming) return;
  const article = S.thread.querySelector(`.turn[data-turn-id="${turn.id}"]`);
  article.replaceChildren(userBubble(turn.content));
  await runStream({ regenerate: turn.id, n: 1 }, article, 1);
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
    start(d) { for (const info of infos) info.replaceWith(modelBadge({ model: d.model })); },
    delta(d) { texts[d.index] = (texts[d.index] || "") + d.text; if (!timer) timer = setTimeout(paint, 30); },
    end(message) {
      paint();
      for (const md of mds) md.classList.remove("streaming");
      if (message) block.append(el("p", { class: "small muted stop-note", text: message }));
    },
  };
}

async function runStream(body, article, n) {
  const epoch = S.epoch;
  const live = liveBlock(article, n);
  const controller = new AbortController();
  S.streaming = { controller };
  setBusy(true);
  let turnId = null;
  let convId = S.convId;
  let stopped = false;
  try {
    const done = await streamChat(body, {
      start: (d) => {
        convId = d.conversation_id;
        turnId = d.message?.id;
        live.start(d);
        if (epoch === S.epoch && S.convId !== convId) {   // a new conversation: show it at once
          S.convId = convId;
          history.replaceState(null, "", `#/c/${convId}`);
          setTitle(d.message?.content?.split(/\s+/).join(" ").slice(0, 60) || "Conversation");
          refreshConversations();
        }
      },
      delta: (d) => live.delta(d),
    }, controller.signal);
    turnId = done.message?.id ?? turnId;
    const ids = (done.candidates || []).map((c) => c.id);
    if (ids.length > 1) S.pending.set(turnId, { kind: ids.length === 2 ? "compare" : "rank", ids });
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
      article.append(el("p", { class: "error", role: "alert", text: `Something went wrong: ${err.message}` }));
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
