/* One film: the heat map coloured here from its grey PNG (so its opacity is the viewer's to choose), laid over
   the crop box; contour and box as vectors. Also used by the print page. */
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);

  for (const b of document.querySelectorAll(".pbar")) b.style.width = (100 * parseFloat(b.dataset.value)) + "%";

  function colourHeat(img) {
    const src = new Image();
    src.onload = () => {
      const c = document.createElement("canvas");
      c.width = src.naturalWidth; c.height = src.naturalHeight;
      const g = c.getContext("2d");
      g.drawImage(src, 0, 0);
      const px = g.getImageData(0, 0, c.width, c.height);
      const d = px.data;
      for (let i = 0; i < d.length; i += 4) {
        const v = d[i] / 255, [r, gg, b] = TB.jet(v);
        d[i] = r; d[i + 1] = gg; d[i + 2] = b; d[i + 3] = Math.round(255 * v); /* cold = transparent */
      }
      g.putImageData(px, 0, 0);
      img.setAttribute("href", c.toDataURL("image/png"));
      img.dataset.ready = "1";
      document.body.dataset.heatReady = "1";
    };
    src.onerror = () => { document.body.dataset.heatReady = "error"; };
    src.src = img.dataset.src;
  }

  const heat = $("heat-img");
  if (heat) colourHeat(heat);
  const film = $("film-img");
  if (film) {
    const probe = new Image();
    probe.onload = () => { document.body.dataset.filmReady = "1"; };
    probe.onerror = () => { document.body.dataset.filmReady = "error"; };
    probe.src = film.getAttribute("href");
  }

  const layer = $("heat-layer") || $("overlay-layer");
  const opacity = $("heat-opacity"), show = $("show-heat");
  function applyHeat() {
    if (!layer) return;
    layer.setAttribute("opacity", String(opacity ? opacity.value / 100 : 0.6));
    layer.style.display = show && !show.checked ? "none" : "";
  }
  if (opacity) opacity.addEventListener("input", applyHeat);
  if (show) show.addEventListener("change", applyHeat);
  applyHeat();
  for (const [box, id] of [["show-contour", "contour-layer"], ["show-box", "crop-box"]]) {
    const b = $(box), l = $(id);
    if (b && l) b.addEventListener("change", () => { l.style.display = b.checked ? "" : "none"; });
  }
  const p = $("do-print");
  if (p) p.addEventListener("click", () => window.print());
})();
