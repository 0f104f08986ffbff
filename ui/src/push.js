// Push a model file into the store: POST /admin/models/{m}/versions/{v} with the file as the body
// (an archive from `router package` / modelkit.package, or a bare .pt / .pt2). The daemon validates it
// in a throwaway worker before it answers; the answer's meta.json shows the signature it found.
import { pushFile } from "./api.js";
import { fill, h, newId, setText } from "./dom.js";
import { fmtBytes } from "./format.js";
import { Outcome } from "./ui.js";
import { signature } from "./versions.js";

export class PushPanel {
  constructor(ctx, model) {
    this.ctx = ctx;
    this.model = model;
    this.file = null;
    this.outcome = new Outcome("push");
    const fid = newId("file");
    const vid = newId("version");
    const did = newId("description");
    this.input = h("input", { id: fid, type: "file", class: "file-input", name: "file",
      accept: ".tar.gz,.tgz,.zip,.pt,.pt2,application/gzip,application/zip",
      onchange: () => this.pick(this.input.files[0]) });
    this.chosen = h("span", { class: "chosen" }, "No file chosen");
    this.zone = h("div", { class: "dropzone" },
      h("label", { for: fid }, h("strong", {}, "Drop a model file here"), " or choose one — an archive from ",
        h("code", {}, "router package"), " or ", h("code", {}, "modelkit.package"), " (.tar.gz, .zip), or a bare .pt / .pt2"),
      this.input, this.chosen);
    for (const ev of ["dragenter", "dragover"]) {
      this.zone.addEventListener(ev, (e) => {
        e.preventDefault();
        this.zone.classList.add("over");
      });
    }
    for (const ev of ["dragleave", "drop"]) this.zone.addEventListener(ev, () => this.zone.classList.remove("over"));
    this.zone.addEventListener("drop", (e) => {
      e.preventDefault();
      if (e.dataTransfer && e.dataTransfer.files.length) this.pick(e.dataTransfer.files[0]);
    });
    this.version = h("input", { id: vid, name: "version", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._-]*",
      autocomplete: "off", "aria-describedby": `${vid}-help` });
    this.description = h("input", { id: did, name: "description", autocomplete: "off",
      "aria-describedby": `${did}-help` });
    this.progress = h("progress", { max: "100", value: "0", "aria-label": "Upload progress" });
    this.progressText = h("span", { class: "progress-text" }, "");
    this.button = h("button", { type: "submit", class: "primary" }, "Push");
    this.result = h("dl", { class: "meta", hidden: true });
    this.el = h("form", { class: "push", onsubmit: (e) => this.submit(e) },
      this.zone,
      h("div", { class: "form-grid" },
        h("div", { class: "field" }, h("label", { for: vid }, "Version"), this.version,
          h("p", { id: `${vid}-help`, class: "help" }, "A new name: stored versions never change.")),
        h("div", { class: "field wide" }, h("label", { for: did }, "Description (optional)"), this.description,
          h("p", { id: `${did}-help`, class: "help" }, "Used where the file's meta.json has none."))),
      h("div", { class: "actions" }, this.button, h("div", { class: "progress" }, this.progress, this.progressText)),
      this.outcome.el, this.result);
  }

  pick(file) {
    this.file = file || null;
    setText(this.chosen, file ? `${file.name} (${fmtBytes(file.size)})` : "No file chosen");
  }

  async submit(e) {
    e.preventDefault();
    if (!this.file) {
      this.outcome.error(new Error("choose a model file first"));
      return;
    }
    const version = this.version.value.trim();
    this.button.disabled = true;
    this.result.hidden = true;
    this.progress.value = 0;
    this.outcome.busy(`Uploading ${this.file.name}…`);
    try {
      const { status, data } = await pushFile(this.model, version, this.file, this.description.value.trim(),
        (loaded, total, done) => {
          this.progress.value = total ? Math.round((100 * loaded) / total) : 0;
          setText(this.progressText, `${fmtBytes(loaded)} of ${fmtBytes(total)}`);
          if (done) this.outcome.busy("Uploaded; the router checks it: it loads the model in a throwaway worker "
            + "and runs its example…");
        });
      this.outcome.ok(status === 201
        ? `Stored ${this.model} v${data.version}: it loaded and answered its example (validation passed).`
        : `${this.model} v${data.version} was already stored with these contents (200); nothing changed.`);
      this.show(data.meta);
      if (this.onChanged) await this.onChanged();
    } catch (err) {
      this.outcome.error(err);
    } finally {
      this.button.disabled = false;
    }
  }

  show(meta) {
    const row = (k, v) => [h("dt", {}, k), h("dd", {}, v)];
    fill(this.result,
      ...row("Signature", signature(meta)),
      ...row("Platform", meta.platform || "–"),
      ...row("Size", fmtBytes(meta.size)),
      ...row("sha256", h("code", {}, meta.sha256 || "–")),
      ...row("Pushed", meta.created || "–"),
      ...row("Description", meta.description || "–"));
    this.result.hidden = false;
  }
}
