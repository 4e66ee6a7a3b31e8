// The Create VM form: the mode's fieldsets show by CSS (:has); here, switching modes swaps
// an untouched memory default, picking a disk image takes its disk size, picking an image
// takes its command line, typing a kernel path selects the "by path" boot, and a volume
// picked is added to the disks as a volume: line.
"use strict";
(() => {
  const image = document.getElementById("image");
  const cmdline = document.getElementById("cmdline");
  const memory = document.getElementById("memory");
  const radio = (value) => document.querySelector(`input[name=boot][value=${value}]`);
  // The untouched default of the other mode becomes this mode's: on a switch, and once now,
  // for a switch made while the page was still loading (the mode checked is not the page's).
  const takeDefault = (mode) => {
    const other = mode === "image" ? "custom" : "image";
    if (memory.value === memory.dataset[other]) memory.value = memory.dataset[mode];
  };
  for (const mode of document.querySelectorAll("input[name=mode]")) {
    mode.addEventListener("change", () => takeDefault(mode.value));
  }
  const checked = document.querySelector("input[name=mode]:checked");
  if (checked && !checked.defaultChecked) takeDefault(checked.value);
  const diskImage = document.getElementById("disk-image");
  if (diskImage) {
    diskImage.addEventListener("change", () => {
      document.getElementById("disk-size").value = diskImage.selectedOptions[0].dataset.size;
    });
  }
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
  // Without this script the form still works: the server adds the picked volume.
  const pick = document.getElementById("add-volume");
  const disks = document.getElementById("disks");
  pick.addEventListener("change", () => {
    if (!pick.value) return;
    const text = disks.value.replace(/\s+$/, "");
    disks.value = (text ? `${text}\n` : "") + pick.value;
    pick.value = "";
  });
})();
