// The Create VM form: picking an image takes its command line; typing a kernel path
// selects the "by path" boot.
"use strict";
(() => {
  const image = document.getElementById("image");
  const cmdline = document.getElementById("cmdline");
  const radio = (value) => document.querySelector(`input[name=boot][value=${value}]`);
  if (image) {
    image.addEventListener("change", () => {
      const chosen = image.selectedOptions[0];
      if (chosen.dataset.cmdline) cmdline.value = chosen.dataset.cmdline;
      radio("image").checked = true;
    });
  }
  for (const name of ["kernel", "initrd"]) {
    document.querySelector(`input[name=${name}]`).addEventListener("input", () => { radio("kernel").checked = true; });
  }
  document.querySelector("input[name=boot_disk]").addEventListener("input", () => { radio("disk").checked = true; });
})();
