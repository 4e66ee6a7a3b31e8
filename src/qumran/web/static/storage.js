// The Storage page: the forms post as they are; the ones that lose something (a delete,
// undefining a pool) ask first.
"use strict";
(() => {
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) event.preventDefault();
  });
})();
