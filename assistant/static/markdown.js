// A small, safe Markdown renderer for model output.
//
// Safety model: the WHOLE input is HTML-escaped first, so nothing the model writes can ever
// become markup. Only the tags this file emits itself are real HTML, and links are emitted
// only for http(s) URLs. Supported: paragraphs, line breaks, **bold**, *italic*,
// `inline code`, fenced ``` code blocks (with a language class), bullet and numbered lists,
// headings, block quotes, horizontal rules and [links](https://...).

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

const FENCE = /^ {0,3}```\s*([\w+#.-]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const ORDERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^ {0,3}&gt;\s?(.*)$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;

/** Render Markdown text to an HTML string that is safe to assign to innerHTML. */
export function renderMarkdown(source) {
  const text = escapeHtml(String(source ?? "").replace(/\r\n?/g, "\n").replace(/\u0000/g, ""));
  return renderBlocks(text.split("\n"));
}

function renderBlocks(lines) {
  const out = [];
  let para = [];
  const flush = () => {
    if (para.length) out.push(`<p>${para.map(inline).join("<br>")}</p>`);
    para = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    let m;
    if ((m = line.match(FENCE))) {
      flush();
      const lang = m[1];
      const body = [];
      i++;
      while (i < lines.length && !/^ {0,3}```\s*$/.test(lines[i])) body.push(lines[i++]);
      const cls = lang ? ` class="language-${lang}"` : "";
      const label = lang ? ` data-lang="${lang}"` : "";
      out.push(`<pre${label}><code${cls}>${body.join("\n")}</code></pre>`);
    } else if (!line.trim()) {
      flush();
    } else if ((m = line.match(HEADING))) {
      flush();
      const level = m[1].length;
      out.push(`<h${level}>${inline(m[2])}</h${level}>`);
    } else if (RULE.test(line) && !para.length) {
      flush();
      out.push("<hr>");
    } else if (BULLET.test(line) || ORDERED.test(line)) {
      flush();
      const ordered = !BULLET.test(line);
      const pattern = ordered ? ORDERED : BULLET;
      const items = [];
      let start = ordered ? Number(line.match(ORDERED)[1]) : 1;
      while (i < lines.length) {
        const cur = lines[i];
        const item = cur.match(pattern);
        if (item) {
          items.push([ordered ? item[2] : item[1]]);
        } else if (cur.trim() && /^\s+/.test(cur) && items.length) {
          items[items.length - 1].push(cur.trim());   // an indented continuation line
        } else {
          break;
        }
        i++;
      }
      i--;
      const tag = ordered ? "ol" : "ul";
      const startAttr = ordered && start !== 1 ? ` start="${start}"` : "";
      const lis = items.map((parts) => `<li>${parts.map(inline).join("<br>")}</li>`).join("");
      out.push(`<${tag}${startAttr}>${lis}</${tag}>`);
    } else if (QUOTE.test(line)) {
      flush();
      const quoted = [];
      while (i < lines.length && QUOTE.test(lines[i])) quoted.push(lines[i++].match(QUOTE)[1]);
      i--;
      out.push(`<blockquote>${renderBlocks(quoted)}</blockquote>`);
    } else {
      para.push(line);
    }
  }
  flush();
  return out.join("");
}

// Inline formatting on already-escaped text. Code spans and link targets are set aside as
// placeholders first so that `*` or `_` inside them is never taken for emphasis.
function inline(text) {
  const held = [];
  const hold = (html) => `\u0000${held.push(html) - 1}\u0000`;
  let s = text.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g,
    (_, ticks, code) => hold(`<code>${code.trim() || code}</code>`));
  s = s.replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s()<>]+)\)/gi,
    (_, label, url) => `${hold(`<a href="${url}" target="_blank" rel="noopener noreferrer">`)}${label}${hold("</a>")}`);
  s = s.replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>");
  s = s.replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>");
  s = s.replace(/(^|[^*\w])\*(?=[^\s*])([^*\n]*?[^\s*])?\*(?!\*)/g,
    (m, pre) => `${pre}<em>${m.slice(pre.length + 1, -1)}</em>`);
  s = s.replace(/(^|[^\w])_(?=[^\s_])([^_\n]*?[^\s_])?_(?!\w)/g,
    (m, pre) => `${pre}<em>${m.slice(pre.length + 1, -1)}</em>`);
  return s.replace(/\u0000(\d+)\u0000/g, (_, n) => held[Number(n)]);
}

/** Render `source` into `element` (replacing its content). */
export function renderInto(element, source) {
  element.innerHTML = renderMarkdown(source);
  return element;
}

// ---- code blocks: syntax highlighting (highlight.js, vendored) and a copy button ----------

let hljsLoad = null;
const loadHljs = () => (hljsLoad ??= import("./vendor/highlight/highlight.min.js").then((m) => m.default));

/** Highlight every code block in `root` and give each a copy button (idempotent). */
export async function enhanceCode(root) {
  const blocks = [...root.querySelectorAll("pre > code:not([data-enhanced])")];
  if (!blocks.length) return;
  for (const code of blocks) {
    code.dataset.enhanced = "";
    const copyBtn = document.createElement("button");
    copyBtn.type = "button";
    copyBtn.className = "code-copy";
    copyBtn.textContent = "Copy";
    copyBtn.setAttribute("aria-label", "Copy code");
    copyBtn.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(code.textContent);
        copyBtn.textContent = "Copied";
      } catch {
        copyBtn.textContent = "Select to copy";
      }
      setTimeout(() => { copyBtn.textContent = "Copy"; }, 1500);
    });
    code.parentElement.append(copyBtn);
  }
  let hljs;
  try { hljs = await loadHljs(); } catch { return; }
  for (const code of blocks) {
    if (!code.isConnected) continue;
    const lang = (code.className.match(/language-([\w+#.-]+)/) || [])[1];
    const known = lang && hljs.getLanguage(lang);
    const result = known ? hljs.highlight(code.textContent, { language: lang, ignoreIllegals: true })
      : hljs.highlightAuto(code.textContent);
    code.innerHTML = result.value;        // highlight.js escapes the text it wraps in spans
    code.classList.add("hljs");
  }
}
