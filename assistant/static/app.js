// Entry point: sign in, the app shell (sidebar + main), and the hash router.
//   #/        new chat          #/c/<id>   a conversation
//   #/me      my assistant      #/admin    admin (admins only; others see "admin role needed")

import { ApiError, api, auth } from "./api.js";
import { isStreaming, setChatUser, showChat, stopGeneration } from "./chat.js";
import { loadGuidelines } from "./feedback.js";
import { showAdmin, showMe } from "./pages.js";
import { loadSettings } from "./prefs.js";
import { paintConversations, refreshConversations } from "./sidebar.js";
import { button, el, icon } from "./ui.js";

const root = document.getElementById("app");
let user = null;

/** Who this key belongs to: /api/me, or (if that is not there) probe the chat and admin APIs. */
async function whoAmI() {
  try {
    return await api.get("/api/me");
  } catch (err) {
    if (!err.missing) throw err;
  }
  await api.get("/api/conversations");           // throws 401 for a bad key
  let role = "user";
  try { await api.get("/admin/users"); role = "admin"; } catch { role = "user"; }
  return { name: null, role };
}

function signInView(message = "") {
  document.title = "Sign in · Personal assistant";
  const input = el("input", { id: "api-key", class: "input", type: "password", autocomplete: "off",
    spellcheck: "false", placeholder: "pa-…", "aria-describedby": "key-help", required: true });
  const error = el("p", { class: "error", id: "signin-error", role: "alert", text: message });
  const submit = el("button", { type: "submit", class: "btn btn-primary btn-block" }, "Sign in");
  const form = el("form", { class: "signin-card", "aria-labelledby": "signin-title",
    onsubmit: async (e) => {
      e.preventDefault();
      const key = input.value.trim();
      if (!key) { error.textContent = "Paste your API key first."; return; }
      submit.disabled = true;
      error.textContent = "";
      auth.set(key);
      try {
        await start();
      } catch (err) {
        auth.clear();
        submit.disabled = false;
        error.textContent = err.status === 401
          ? "That key was not accepted. Check it, or ask your administrator for a new one."
          : `Could not sign in: ${err.message}`;
        input.focus();
        input.select();
      }
    } },
    el("div", { class: "brand brand-lg" }, el("span", { class: "logo", "aria-hidden": "true", text: "◐" }), "Personal assistant"),
    el("h1", { id: "signin-title", text: "Sign in" }),
    el("label", { for: "api-key", class: "label", text: "API key" }),
    input,
    el("p", { id: "key-help", class: "small muted", text: "Your administrator gives you a key. It is kept in this browser until you sign out." }),
    error,
    submit);
  root.replaceChildren(el("main", { class: "signin", id: "main" }, form));
  input.focus();
}

function navLink(href, text, iconName, id) {
  return el("a", { href, class: "nav-link", id }, icon(iconName), el("span", { text }));
}

function shell() {
  const sidebar = el("aside", { class: "sidebar", id: "sidebar", "aria-label": "Conversations and navigation" },
    el("div", { class: "sidebar-top" },
      el("a", { href: "#/", class: "brand" }, el("span", { class: "logo", "aria-hidden": "true", text: "◐" }), "Assistant"),
      button({ label: "Close menu", iconName: "close", cls: "btn-icon only-narrow", onclick: closeMenu })),
    el("a", { href: "#/", class: "btn btn-primary btn-block new-chat", "aria-label": "New chat" }, icon("plus"), el("span", { text: "New chat" })),
    el("nav", { class: "conv-nav", "aria-label": "Conversations" },
      el("h2", { class: "sidebar-h", text: "Recent" }),
      el("input", { id: "conv-search", class: "input conv-search", type: "search", "aria-label": "Search conversations",
        placeholder: "Search conversations", autocomplete: "off", oninput: paintConversations }),
      el("ul", { id: "conv-list", class: "conv-list" })),
    el("nav", { class: "sidebar-foot", "aria-label": "Pages" },
      navLink("#/", "Chat", "chat", "nav-chat"),
      navLink("#/me", "My assistant", "user", "nav-me"),
      user.role === "admin" ? navLink("#/admin", "Admin", "shield", "nav-admin") : null,
      el("div", { class: "whoami" },
        el("span", { class: "avatar", "aria-hidden": "true", text: (user.name || "?").slice(0, 1).toUpperCase() }),
        el("span", { class: "whoami-name", text: user.name || "Signed in" }),
        button({ label: "Sign out", iconName: "out", cls: "btn-icon", onclick: signOut, id: "sign-out" }))));
  const main = el("main", { class: "main", id: "main" },
    el("header", { class: "topbar" },
      button({ label: "Open menu", iconName: "menu", cls: "btn-icon only-narrow", onclick: openMenu, id: "menu-btn",
        "aria-controls": "sidebar", "aria-expanded": "false" }),
      el("h1", { class: "page-title", id: "page-title", text: "" })),
    el("div", { class: "view", id: "view" }));
  const scrim = el("div", { class: "scrim", onclick: closeMenu });
  root.replaceChildren(el("div", { class: "shell" }, sidebar, scrim, main));
}

function openMenu() {
  document.body.classList.add("menu-open");
  document.getElementById("menu-btn")?.setAttribute("aria-expanded", "true");
}

function closeMenu() {
  document.body.classList.remove("menu-open");
  document.getElementById("menu-btn")?.setAttribute("aria-expanded", "false");
}

function signOut() {
  stopGeneration();
  auth.clear();
  user = null;
  closeMenu();
  history.replaceState(null, "", "#/");
  signInView("");
}

async function route() {
  if (!user) return;
  closeMenu();
  const view = document.getElementById("view");
  const hash = location.hash || "#/";
  for (const a of document.querySelectorAll(".nav-link")) {
    const on = a.getAttribute("href") === hash || (a.id === "nav-chat" && (hash === "#/" || hash.startsWith("#/c/")));
    a.toggleAttribute("aria-current", on);
    if (on) a.setAttribute("aria-current", "page");
  }
  const title = document.getElementById("page-title");
  const conv = hash.match(/^#\/c\/(\d+)$/);
  if (conv) return showChat(view, Number(conv[1]));
  if (hash === "#/me") {
    stopGeneration();
    title.textContent = "My assistant";
    document.title = "My assistant";
    refreshConversations();
    return showMe(view, { onDeleted: signOut });
  }
  if (hash === "#/admin") {
    stopGeneration();
    title.textContent = "Admin";
    document.title = "Admin · Personal assistant";
    refreshConversations();
    return showAdmin(view);
  }
  document.title = "Personal assistant";
  return showChat(view, null);
}

async function start() {
  user = await whoAmI();
  setChatUser(user);
  await Promise.all([loadGuidelines(), loadSettings()]);
  shell();
  await route();
}

window.addEventListener("hashchange", route);
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && isStreaming()) { e.preventDefault(); stopGeneration(); }
  else if (e.key === "Escape" && document.body.classList.contains("menu-open")) closeMenu();
});

(async () => {
  if (!auth.key) return signInView();
  try {
    await start();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      auth.clear();
      signInView("Your saved key is no longer valid. Please sign in again.");
    } else {
      signInView(`Could not reach the assistant: ${err.message}`);
    }
  }
})();
