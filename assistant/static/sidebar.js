// The sidebar's conversation list: search, rename, delete.

import { api } from "./api.js";
import { markDeleted } from "./prefs.js";
import { button, confirmDialog, el, promptDialog, toast } from "./ui.js";

let convs = [];
let activeId = () => null;

/** `getActive` says which conversation is open (it is highlighted). */
export function setActiveConversation(getActive) { activeId = getActive; }

function setTitle(text) {
  const t = document.getElementById("page-title");
  if (t) t.textContent = text;
}

export async function refreshConversations() {
  const list = document.getElementById("conv-list");
  if (!list) return;
  try {
    convs = await api.get("/api/conversations");
  } catch (err) {
    list.replaceChildren(el("li", { class: "muted small empty", text: err.message }));
    return;
  }
  paintConversations();
}

export function paintConversations() {
  const list = document.getElementById("conv-list");
  if (!list) return;
  const query = (document.getElementById("conv-search")?.value || "").trim().toLowerCase();
  const shown = convs.filter((c) => !query || (c.title || "").toLowerCase().includes(query));
  if (!shown.length) {
    list.replaceChildren(el("li", { class: "muted small empty",
      text: convs.length ? "No conversation matches." : "No conversations yet." }));
    return;
  }
  list.replaceChildren(...shown.map((c) => {
    const title = c.title || "Untitled";
    const active = c.id === activeId() && location.hash.startsWith("#/c/");
    return el("li", { class: active ? "conv active" : "conv", dataset: { id: c.id } },
      el("a", { href: `#/c/${c.id}`, class: "conv-link", "aria-current": active ? "page" : null },
        el("span", { class: "conv-title", text: title }),
        el("span", { class: "conv-meta", text: `${c.turns ?? 0} ${c.turns === 1 ? "turn" : "turns"}` })),
      button({ label: `Rename conversation “${title}”`, iconName: "edit", cls: "btn-icon conv-action",
        onclick: () => renameConversation(c.id, title) }),
      button({ label: `Delete conversation “${title}”`, iconName: "trash", cls: "btn-icon conv-action conv-delete",
        onclick: () => deleteConversation(c.id, title) }));
  }));
}

async function renameConversation(id, title) {
  const next = await promptDialog({ title: "Rename conversation", label: "Title", value: title, confirm: "Rename" });
  if (next == null || !next.trim() || next.trim() === title) return;
  try {
    await api.put(`/api/conversations/${id}/title`, { title: next.trim() });
    toast("Renamed");
    if (activeId() === id) setTitle(next.trim());
    refreshConversations();
  } catch (err) {
    toast(err.message, "error");
  }
}

async function deleteConversation(id, title) {
  const ok = await confirmDialog({ title: "Delete this conversation?",
    body: `“${title}” and the feedback on it will be deleted. This cannot be undone.`,
    confirm: "Delete", danger: true });
  if (!ok) return;
  try {
    await api.del(`/api/conversations/${id}`);
    markDeleted(id, true);
    toast("Conversation deleted");
    if (activeId() === id) location.hash = "#/";
    refreshConversations();
  } catch (err) {
    toast(err.message, "error");
  }
}
