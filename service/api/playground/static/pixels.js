// Images on canvases: painting model outputs (levels 0..levels-1, white on black as in MNIST), and the 28x28 pad a
// person draws on with the mouse, a pen, the keyboard, or by dropping an image file.

export const SIZE = 28;

/** An image as it travels, [H][W] or [1][H][W] (one channel), -> its [H][W] rows. */
export const rowsOf = (image) => (Array.isArray(image[0][0]) ? image[0] : image);

const gray = (value, levels) => Math.round(255 * Math.min(1, Math.max(0, value / (levels - 1))));

/** A new canvas of `width` x `height` pixels (shown enlarged by CSS), labelled for screen readers. */
export function blankCanvas(label, width = SIZE, height = SIZE) {
  const canvas = Object.assign(document.createElement("canvas"), { width, height, className: "digit" });
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", label);
  const context = canvas.getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, width, height);
  return canvas;
}

/** Paint one row `y` of a canvas from `row` [W] (or [1][W]) of levels. */
export function paintRow(canvas, y, row, levels) {
  const values = Array.isArray(row[0]) ? row[0] : row;
  const context = canvas.getContext("2d");
  const line = context.createImageData(values.length, 1);
  values.forEach((value, x) => {
    line.data.fill(gray(value, levels), 4 * x, 4 * x + 3);
    line.data[4 * x + 3] = 255;
  });
  context.putImageData(line, 0, y);
}

/** A canvas showing `image` ([H][W] or [1][H][W] levels, integers or expected values). */
export function imageCanvas(image, levels, label) {
  const rows = rowsOf(image);
  const canvas = blankCanvas(label, rows[0].length, rows.length);
  rows.forEach((row, y) => paintRow(canvas, y, row, levels));
  return canvas;
}

/** The drawing pad: `values` [28*28] in 0..1 (ink), and with `masking` an erase brush that hides pixels from the
 * model (`observed` 0); keyboard: arrows move the cursor, Space paints, Delete erases or hides. */
export class Pad {
  constructor(canvas, { masking = false, onchange = () => {} } = {}) {
    this.canvas = canvas;
    this.masking = masking;
    this.onchange = onchange;
    this.values = new Float32Array(SIZE * SIZE);
    this.observed = new Uint8Array(SIZE * SIZE).fill(1);
    this.brush = "ink";  // "ink" or "erase" (masking pads: hide from the model)
    this.cursor = { x: SIZE / 2, y: SIZE / 2, shown: false };
    canvas.width = canvas.height = SIZE;
    canvas.tabIndex = 0;
    this.listen();
    this.render();
  }

  listen() {
    const cell = (event) => {
      const box = this.canvas.getBoundingClientRect();
      return { x: ((event.clientX - box.left) / box.width) * SIZE, y: ((event.clientY - box.top) / box.height) * SIZE };
    };
    let last = null;
    this.canvas.addEventListener("pointerdown", (event) => {
      this.canvas.setPointerCapture(event.pointerId);
      last = cell(event);
      this.stroke(last, last, event.button === 2 || event.shiftKey);
    });
    this.canvas.addEventListener("pointermove", (event) => {
      if (!last) return;
      const next = cell(event);
      this.stroke(last, next, event.shiftKey);
      last = next;
    });
    const end = () => {
      if (last) this.onchange();
      last = null;
    };
    this.canvas.addEventListener("pointerup", end);
    this.canvas.addEventListener("pointercancel", end);
    this.canvas.addEventListener("contextmenu", (event) => event.preventDefault());
    this.canvas.addEventListener("keydown", (event) => this.key(event));
    this.canvas.addEventListener("blur", () => ((this.cursor.shown = false), this.render()));
    this.canvas.addEventListener("dragover", (event) => event.preventDefault());
    this.canvas.addEventListener("drop", (event) => {
      event.preventDefault();
      const [file] = event.dataTransfer.files;
      if (file) this.loadFile(file);
    });
  }

  key(event) {
    const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    const { cursor } = this;
    if (event.key in moves) {
      const [dx, dy] = moves[event.key];
      cursor.x = Math.min(SIZE - 0.5, Math.max(0.5, Math.floor(cursor.x) + 0.5 + dx));
      cursor.y = Math.min(SIZE - 0.5, Math.max(0.5, Math.floor(cursor.y) + 0.5 + dy));
      if (event.shiftKey) this.stroke(cursor, cursor, false);
    } else if (event.key === " " || event.key === "Delete" || event.key === "Backspace") {
      this.stroke(cursor, cursor, event.key !== " ");
      this.onchange();
    } else {
      return;
    }
    event.preventDefault();
    cursor.shown = true;
    this.render();
  }

  /** Paint (or, with `reverse`, undo: remove ink, or un-hide) along the segment a -> b, a round brush of radius 1.4. */
  stroke(a, b, reverse) {
    const steps = Math.max(1, Math.ceil(Math.hypot(b.x - a.x, b.y - a.y) * 2));
    for (let s = 0; s <= steps; s++) {
      const cx = a.x + ((b.x - a.x) * s) / steps, cy = a.y + ((b.y - a.y) * s) / steps;
      for (let y = Math.floor(cy - 2); y <= cy + 2; y++) {
        for (let x = Math.floor(cx - 2); x <= cx + 2; x++) {
          if (x < 0 || y < 0 || x >= SIZE || y >= SIZE) continue;
          const strength = Math.min(1, Math.max(0, 1.4 - Math.hypot(x + 0.5 - cx, y + 0.5 - cy)));
          if (strength > 0) this.touch(y * SIZE + x, strength, reverse);
        }
      }
    }
    this.render();
  }

  touch(i, strength, reverse) {
    if (this.masking && this.brush === "erase") this.observed[i] = reverse ? 1 : 0;
    else this.values[i] = reverse ? Math.min(this.values[i], 1 - strength) : Math.max(this.values[i], strength);
  }

  clear() {
    this.values.fill(0);
    this.observed.fill(1);
    this.render();
    this.onchange();
  }

  /** Take an image ([H][W] or [1][H][W] of levels 0..levels-1; 28x28), all pixels observed. */
  load(image, levels) {
    rowsOf(image).forEach((row, y) => row.forEach((value, x) => (this.values[y * SIZE + x] = value / (levels - 1))));
    this.observed.fill(1);
    this.render();
    this.onchange();
  }

  /** Take a dropped image file: scaled to 28x28, gray, inverted when its background is light (ink on paper). */
  async loadFile(file) {
    const bitmap = await createImageBitmap(file);
    const context = new OffscreenCanvas(SIZE, SIZE).getContext("2d");
    context.drawImage(bitmap, 0, 0, SIZE, SIZE);
    const { data } = context.getImageData(0, 0, SIZE, SIZE);
    const gray = this.values.map((_, i) => (data[4 * i] + data[4 * i + 1] + data[4 * i + 2]) / 765);
    const light = gray.reduce((sum, v) => sum + v, 0) / gray.length > 0.5;
    this.values.set(light ? gray.map((v) => 1 - v) : gray);
    this.observed.fill(1);
    this.render();
    this.onchange();
  }

  /** The drawing as a model input [28][28]: levels 0..levels-1 (2 levels: ink at least half). */
  levels(levels) {
    const rows = [];
    for (let y = 0; y < SIZE; y++) {
      const row = Array.from(this.values.subarray(y * SIZE, (y + 1) * SIZE));
      rows.push(row.map((v) => (levels === 2 ? Number(v >= 0.5) : Math.round(v * (levels - 1)))));
    }
    return rows;
  }

  /** The mask [28][28]: 1 observed, 0 hidden (to be completed). */
  mask() {
    return Array.from({ length: SIZE }, (_, y) => Array.from(this.observed.subarray(y * SIZE, (y + 1) * SIZE)));
  }

  get inked() {
    return this.values.some((v) => v > 0);
  }

  render() {
    const context = this.canvas.getContext("2d");
    const image = context.createImageData(SIZE, SIZE);
    this.values.forEach((value, i) => {
      const level = Math.round(255 * value);
      const hidden = !this.observed[i];  // hidden pixels in red: what the model will fill in
      image.data.set(hidden ? [160 + level * 0.37, 40, 60, 255] : [level, level, level, 255], 4 * i);
    });
    context.putImageData(image, 0, 0);
    if (this.cursor.shown) {
      context.strokeStyle = "#3af";
      context.lineWidth = 0.15;
      context.strokeRect(Math.floor(this.cursor.x), Math.floor(this.cursor.y), 1, 1);
    }
  }
}
