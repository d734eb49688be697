// The newest analysed frame on a canvas, shared by the per-stream page (app.js) and the
// dashboard (dashboard.js): the frame's headers as /frame.jpg sends them, the line under the
// canvas, and the picture with the face box and the label's plate drawn over it.
// Loaded before the page's own script; everything it draws is text on a canvas.
"use strict";

window.cerFrame = (function () {
  const BOX_COLOUR = "#ff00ff"; // the face box; no chart series uses it
  const DASH = "\u2013";

  // a /frame.jpg response's X-Frame-* headers: {index (text), time (s), box ([x0, y0, x1, y1] or null)}
  function meta(res) {
    const boxText = res.headers.get("X-Frame-Box") || "";
    return {
      index: res.headers.get("X-Frame-Index"),
      time: Number(res.headers.get("X-Frame-Time")),
      box: boxText ? boxText.split(",").map(Number) : null,
    };
  }

  // the line under the canvas: "frame 12 at 0.48 s" (" (no face)" without a box)
  function info(m) {
    const time = typeof m.time === "number" && isFinite(m.time) ? m.time.toFixed(2) : DASH;
    return "frame " + m.index + " at " + time + " s" + (m.box ? "" : " (no face)");
  }

  // Draw `bitmap` on `canvas` (resized to it), the face `box` over it and `label` on a plate
  // above the box (below it when there is no room).  The sizes are the canvas width divided by
  // `sizes.lineDivisor` (the box's line), `fontDivisor` (the label) and `plateDivisor` (the
  // plate's height).  Returns the box as drawn, [x0, y0, x1, y1, line width], or null.
  function draw(canvas, bitmap, box, label, sizes) {
    if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
    }
    const ctx = canvas.getContext("2d");
    ctx.drawImage(bitmap, 0, 0);
    if (!box || box.length !== 4 || !box.every((v) => isFinite(v))) return null;
    const [x0, y0, x1, y1] = box;
    const lw = Math.max(3, Math.round(canvas.width / sizes.lineDivisor));
    ctx.lineWidth = lw;
    ctx.strokeStyle = BOX_COLOUR;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    if (label) {
      ctx.font = "bold " + Math.max(14, Math.round(canvas.width / sizes.fontDivisor)) + "px system-ui, sans-serif";
      const w = ctx.measureText(label).width + 10;
      const h = Math.max(20, Math.round(canvas.width / sizes.plateDivisor));
      const ty = y0 - lw - h >= 0 ? y0 - lw - h : y1 + lw;
      ctx.fillStyle = "rgba(0, 0, 0, 0.75)";
      ctx.fillRect(x0 - lw / 2, ty, w, h);
      ctx.fillStyle = "#ffffff";
      ctx.textBaseline = "middle";
      ctx.fillText(label, x0 - lw / 2 + 5, ty + h / 2);
    }
    return [x0, y0, x1, y1, lw];
  }

  return Object.freeze({ BOX_COLOUR: BOX_COLOUR, meta: meta, info: info, draw: draw });
})();
