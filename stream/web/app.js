// cer-stream live page: server-sent events from /events, the newest frame from /frame.jpg
// (drawn by frame.js, loaded first), the chart drawn by uPlot (served from /static/vendor/,
// fetched with npm at install time).
// Everything the server sends is put on the page as text (textContent), never as HTML.
"use strict";

(function () {
  const FRAME_SIZES = { lineDivisor: 200, fontDivisor: 40, plateDivisor: 30 }; // see cerFrame.draw
  const SERIES_COLOURS = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#17becf", "#bcbd22"];
  const $ = (id) => document.getElementById(id);

  const cer = {
    labels: [],
    basicLabels: [],
    historyS: 60,
    points: [], // {end, compound: {name: p} | null}
    updates: 0, // window records applied (the history a page gets at once included)
    label: null,
    chart: null,
    chartUpdates: 0, // times the chart's data was set
    framesDrawn: 0,
    lastBox: null, // [x0, y0, x1, y1] in canvas pixels, as drawn
    frameWanted: null,
    frameLoading: false,
    ended: false,
    chartLength() {
      return this.chart ? this.chart.data[0].length : 0;
    },
  };
  window.cer = cer;

  function text(id, value) {
    $(id).textContent = value === null || value === undefined || value === "" ? "\u2013" : String(value);
  }

  // a text panel: the text itself, or (muted) why there is none
  function note(id, value, muted) {
    text(id, value);
    $(id).classList.toggle("muted", muted);
  }

  function fmt(v, digits) {
    return typeof v === "number" && isFinite(v) ? v.toFixed(digits) : "\u2013";
  }

  function setStatus(kind, label) {
    const el = $("status");
    el.className = "status " + kind;
    el.textContent = label;
  }

  // ------------------------------------------------------------------ chart
  function makeChart() {
    const el = $("chart");
    const series = [{ label: "t (s)" }].concat(
      cer.labels.map((name, i) => ({ label: name, stroke: SERIES_COLOURS[i % SERIES_COLOURS.length], width: 2, spanGaps: false })),
    );
    const opts = {
      width: Math.max(320, el.clientWidth || 800),
      height: 260,
      scales: { x: { time: false }, y: { range: [0, 1] } },
      axes: [{ label: "media time (s)" }, { label: "p" }],
      series: series,
      legend: { live: false },
      cursor: { show: false },
    };
    if (cer.chart) cer.chart.destroy();
    cer.chart = new uPlot(opts, chartData(), el);
    window.addEventListener("resize", () => cer.chart && cer.chart.setSize({ width: Math.max(320, el.clientWidth), height: 260 }));
  }

  function chartData() {
    const xs = cer.points.map((p) => p.end);
    const data = [xs];
    cer.labels.forEach((name) => data.push(cer.points.map((p) => (p.compound ? p.compound[name] : null))));
    return data;
  }

  function addPoint(rec) {
    cer.points.push({ end: rec.end, compound: rec.compound || null });
    const newest = rec.end || 0;
    cer.points = cer.points.filter((p) => (p.end || 0) >= newest - cer.historyS);
    cer.updates += 1;
    $("updates").textContent = String(cer.updates);
  }

  function redrawChart() {
    if (!cer.chart) return;
    cer.chart.setData(chartData());
    cer.chartUpdates += 1;
  }

  // ------------------------------------------------------------------ panels
  function showStart(start) {
    if (!start) return;
    text("source", (start.source || "") + ": " + (start.input || ""));
    // an audio-only source (a sound file, an audio-only stream, a microphone): no frames come
    cer.audioOnly = start.video === false;
    $("frame").hidden = cer.audioOnly;
    if (cer.audioOnly) text("frame-info", "audio only: no picture (the voice and the words decide)");
  }

  function showProbs(compound) {
    const body = $("probs").tBodies[0];
    body.replaceChildren();
    if (!compound) return;
    const rows = Object.entries(compound).sort((a, b) => b[1] - a[1]);
    for (const [name, p] of rows) {
      const tr = document.createElement("tr");
      const tdName = document.createElement("td");
      tdName.textContent = name;
      const tdBar = document.createElement("td");
      tdBar.className = "bar";
      const fill = document.createElement("div");
      fill.className = "fill";
      fill.style.width = Math.round(Math.max(0, Math.min(1, p)) * 100) + "%";
      tdBar.appendChild(fill);
      const tdP = document.createElement("td");
      tdP.textContent = fmt(p, 3);
      tr.append(tdName, tdBar, tdP);
      body.appendChild(tr);
    }
  }

  function modalityNote(m) {
    if (!m.present) return m.reason || "absent";
    const notes = [];
    if (typeof m.frames_with_face === "number") notes.push("face in " + m.frames_with_face + " frames");
    if (typeof m.confidence === "number") notes.push("confidence " + fmt(m.confidence, 2));
    if (m.asr_language) notes.push(m.asr_language + (m.asr_task === "translate" ? " \u2192 en" : ""));
    const said = m.translation || m.transcript;
    if (said) notes.push("\u201c" + (said.length > 60 ? said.slice(0, 59) + "\u2026" : said) + "\u201d");
    if (typeof m.lag_windows === "number" && m.lag_windows > 0) notes.push("from window " + m.from_window);
    return notes.join(", ");
  }

  function showModalities(mods) {
    const body = $("modalities");
    body.replaceChildren();
    for (const [name, m] of Object.entries(mods || {})) {
      const tr = document.createElement("tr");
      tr.className = m.present ? "present" : "absent";
      const cells = [name, m.present ? "yes" : "no", m.present ? fmt(m.weight, 2) : "\u2013", modalityNote(m)];
      for (const c of cells) {
        const td = document.createElement("td");
        td.textContent = c;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
  }

  function showWindow(rec) {
    cer.label = rec.label;
    text("label", rec.label || "no prediction");
    text("basic-label", rec.basic_label);
    text("window", rec.index + " (" + fmt(rec.start, 1) + "\u2013" + fmt(rec.end, 1) + " s)");
    showProbs(rec.compound);
    const mods = rec.modalities || {};
    showModalities(mods);
    const t = mods.text || {};
    if (t.transcript) {
      note("transcript", t.present ? t.transcript : t.transcript + "  (not used: " + (t.reason || "absent") + ")", false);
    } else {
      note("transcript", t.reason || null, true);
    }
    const s = mods.scene || {};
    if (s.caption) note("caption", s.caption, false);
    else note("caption", s.reason || null, true);
    text("latency", fmt(rec.latency_ms, 0) + " ms");
    text("processing", fmt(rec.processing_ms, 0) + " ms");
    const drops = rec.drops || {};
    text(
      "drops",
      Object.entries(drops)
        .map(([k, v]) => k + " " + v)
        .join(" \u00b7 "),
    );
  }

  function addWarning(rec) {
    const li = document.createElement("li");
    if (rec.type === "gap") {
      li.textContent = "gap (" + (rec.reason || "source lost") + "): " + fmt(rec.start, 1) + "\u2013" + fmt(rec.end, 1) + " s";
    } else {
      li.textContent = (rec.sink ? "[" + rec.sink + "] " : "") + (rec.message || "");
    }
    const list = $("warnings");
    list.insertBefore(li, list.firstChild);
    while (list.children.length > 50) list.removeChild(list.lastChild);
  }

  function showEnd(rec) {
    cer.ended = true;
    setStatus("ended", "ended: " + (rec.reason || ""));
    const lat = rec.latency_ms || {};
    if (typeof lat.p50 === "number") text("latency", "p50 " + fmt(lat.p50, 0) + " ms, p95 " + fmt(lat.p95, 0) + " ms");
  }

  // ------------------------------------------------------------------ frame
  async function loadFrame() {
    if (cer.frameLoading) return;
    cer.frameLoading = true;
    try {
      while (cer.frameWanted !== null) {
        cer.frameWanted = null;
        const res = await fetch("/frame.jpg", { cache: "no-store" });
        if (res.status !== 200) break;
        const m = cerFrame.meta(res);
        const bitmap = await createImageBitmap(await res.blob());
        drawFrame(bitmap, m.box);
        bitmap.close();
        text("frame-info", cerFrame.info(m));
      }
    } catch (err) {
      // the server went away between two frames: keep the last picture
    } finally {
      cer.frameLoading = false;
    }
  }

  function drawFrame(bitmap, box) {
    cer.lastBox = cerFrame.draw($("frame"), bitmap, box, cer.label, FRAME_SIZES);
    cer.framesDrawn += 1;
  }

  // ------------------------------------------------------------------ events
  function applyState(st) {
    cer.labels = st.compound_labels || [];
    cer.basicLabels = st.basic_labels || [];
    cer.historyS = st.history_s || 60;
    cer.points = [];
    cer.updates = 0;
    $("warnings").replaceChildren();
    showStart(st.start);
    for (const w of st.windows || []) addPoint(w);
    $("updates").textContent = String(cer.updates);
    makeChart();
    cer.chartUpdates += 1;
    if (st.last) showWindow(st.last);
    for (const w of st.warnings || []) addWarning(w);
    if (st.end) showEnd(st.end);
    else setStatus("live", "live");
    if (st.frame) {
      cer.frameWanted = st.frame.index;
      loadFrame();
    }
  }

  function connect() {
    const es = new EventSource("/events");
    const on = (kind, fn) => es.addEventListener(kind, (ev) => fn(JSON.parse(ev.data)));
    on("state", applyState);
    on("start", (rec) => {
      cer.points = [];
      showStart(rec);
      redrawChart();
    });
    on("window", (rec) => {
      addPoint(rec);
      showWindow(rec);
      redrawChart();
    });
    on("warning", addWarning);
    on("gap", addWarning);
    on("end", (rec) => {
      showEnd(rec);
      es.close();
    });
    on("frame", (meta) => {
      cer.frameWanted = meta.index;
      loadFrame();
    });
    es.onerror = () => {
      if (!cer.ended) setStatus("lost", "disconnected (retrying)");
    };
  }

  connect();
})();
