// The definition editor: line numbers beside the text, the lines the daemon's errors are
// about marked, and a click on "line N" puts the cursor there.
"use strict";
(() => {
  const text = document.getElementById("definition");
  const gutter = document.getElementById("gutter");
  const errors = new Set(JSON.parse(gutter.dataset.errors || "[]"));

  function number() {
    const count = text.value.split("\n").length;
    gutter.replaceChildren();
    for (let i = 1; i <= count; i += 1) {
      const line = document.createElement("span");
      line.textContent = String(i);
      line.id = `line-${i}`;
      if (errors.has(i)) line.className = "bad";
      gutter.append(line, "\n");
    }
    gutter.scrollTop = text.scrollTop;
  }

  function goTo(n) {
    const lines = text.value.split("\n");
    const start = lines.slice(0, n - 1).reduce((sum, l) => sum + l.length + 1, 0);
    text.focus();
    text.setSelectionRange(start, start + (lines[n - 1] || "").length);
    const height = text.scrollHeight / Math.max(1, lines.length);
    text.scrollTop = Math.max(0, (n - 3) * height);
  }

  text.addEventListener("input", () => { errors.clear(); number(); });
  text.addEventListener("scroll", () => { gutter.scrollTop = text.scrollTop; });
  for (const link of document.querySelectorAll("a.at-line")) {
    link.addEventListener("click", (event) => { event.preventDefault(); goTo(Number(link.dataset.line)); });
  }
  number();
  const first = document.querySelector("a.at-line");
  if (first) goTo(Number(first.dataset.line));
})();
