// Pages whose forms post as they are (Storage, Networks): the ones that lose something
// (a delete, an undefine, stopping a network) ask first, in their data-confirm words.
"use strict";
(() => {
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) event.preventDefault();
  });
})();
