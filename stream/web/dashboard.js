// cer-stream serve's dashboard: one card per stream, fed by server-sent events from /events;
// each stream's newest frame from /streams/ID/frame.jpg (at most FRAME_HZ a second, drawn by
// frame.js, loaded first), charts drawn by uPlot (served from /static/vendor/, fetched with npm
// at install time); the shared VLM queue (vlm_queue records) in the header and on each card.
// Everything the server sends is put on the page as text (textContent), never as HTML.
"use strict";

(function () {
  const FRAME_SIZES = { lineDivisor: 160, fontDivisor: 30, plateDivisor: 24 }; // see cerFrame.draw
  const SERIES_COLOURS = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#17becf", "#bcbd22"];
  const FRAME_HZ = 2; // frame requests a second per stream, at most
  const CHART_HEIGHT = 140;
  const DASH = "\u2013";
  const $ = (id) => document.getElementById(id);

  const dash = {
    labels: [],
    historyS: 60,
    statuses: [],
    streams: {}, // id -> stream (see makeStream)
    order: [], // ids in the order of the cards
    vlm: null, // the newest vlm_queue record (the shared VLM queue), or null
    vlmUpdates: 0, // vlm_queue records shown (the state event's included)
    states: 0, // state events applied
    connected: false,
    stream(id) {
      return this.streams[id];
    },
  };
  window.dash = dash;

  function fmt(v, digits) {
    return typeof v === "number" && isFinite(v) ? v.toFixed(digits) : DASH;
  }

  function setText(el, value) {
    el.textContent = value === null || value === undefined || value === "" ? DASH : String(value);
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  // ------------------------------------------------------------------ a stream's card
  function makeStream(id) {
    const card = $("card-template").content.firstElementChild.cloneNode(true);
    const q = (sel) => card.querySelector(sel);
    card.dataset.stream = id;
    const s = {
      id: id,
      card: card,
      el: {
        sid: q(".sid"),
        badge: q(".badge"),
        pid: q(".pid"),
        input: q(".input"),
        canvas: q("canvas.frame"),
        frameInfo: q(".frame-info"),
        label: q(".label"),
        windowInfo: q(".window-info"),
        top3: q(".top3").tBodies[0],
        chart: q(".chart"),
        latency: q(".latency"),
        drops: q(".drops"),
        windows: q(".windows"),
        warnCount: q(".warn-count"),
        restarts: q(".restarts"),
        vlmTerm: q(".vlm-term"),
        vlm: q(".vlm"),
        note: q(".note"),
      },
      status: "starting",
      label: null,
      updates: 0, // window records applied (the history a page gets at once included)
      points: [], // {end, compound: {name: p} | null}
      chart: null,
      chartUpdates: 0,
      counts: { windows: 0, warnings: 0, gaps: 0 },
      restarts: 0,
      frameSource: false,
      framesDrawn: 0,
      lastFrameIndex: null,
      lastBox: null,
      frameLoop: false,
      chartLength() {
        return this.chart ? this.chart.data[0].length : 0;
      },
    };
    s.el.sid.textContent = id;
    $("grid").appendChild(card);
    dash.streams[id] = s;
    dash.order.push(id);
    makeChart(s);
    showVlmOf(s);
    return s;
  }

  function streamOf(id) {
    if (typeof id !== "string" || !id) return null;
    return dash.streams[id] || makeStream(id);
  }

  // ------------------------------------------------------------------ chart
  function chartData(s) {
    const data = [s.points.map((p) => p.end)];
    dash.labels.forEach((name) => data.push(s.points.map((p) => (p.compound ? p.compound[name] : null))));
    return data;
  }

  function makeChart(s) {
    const el = s.el.chart;
    const series = [{ label: "t (s)" }].concat(
      dash.labels.map((name, i) => ({ label: name, stroke: SERIES_COLOURS[i % SERIES_COLOURS.length], width: 1.5 })),
    );
    const opts = {
      width: Math.max(240, el.clientWidth || 340),
      height: CHART_HEIGHT,
      scales: { x: { time: false }, y: { range: [0, 1] } },
      axes: [{ size: 28 }, { size: 34 }],
      series: series,
      legend: { show: false },
      cursor: { show: false },
    };
    if (s.chart) s.chart.destroy();
    s.chart = new uPlot(opts, chartData(s), el);
    s.chartUpdates += 1;
  }

  function redrawChart(s) {
    if (!s.chart) return;
    s.chart.setData(chartData(s));
    s.chartUpdates += 1;
  }

  function addPoint(s, rec) {
    s.points.push({ end: rec.end, compound: rec.compound || null });
    const newest = rec.end || 0;
    s.points = s.points.filter((p) => (p.end || 0) >= newest - dash.historyS);
    s.updates += 1;
  }

  window.addEventListener("resize", () => {
    for (const id of dash.order) {
      const s = dash.streams[id];
      if (s.chart) s.chart.setSize({ width: Math.max(240, s.el.chart.clientWidth), height: CHART_HEIGHT });
    }
  });

  // ------------------------------------------------------------------ panels
  function showSummary(s, sum) {
    s.status = sum.status || "starting";
    s.el.badge.className = "badge st-" + s.status.replace(/[^a-z]+/g, "-");
    s.el.badge.textContent = s.status;
    s.restarts = typeof sum.restarts === "number" ? sum.restarts : 0;
    s.counts = sum.counts || { windows: 0, warnings: 0, gaps: 0 };
    s.el.pid.textContent = typeof sum.pid === "number" ? "pid " + sum.pid : "";
    s.el.windows.textContent = String(s.counts.windows);
    s.el.warnCount.textContent = s.counts.warnings + " / " + s.counts.gaps;
    s.el.restarts.textContent = String(s.restarts);
    const had = s.frameSource;
    s.frameSource = !!sum.frame_source;
    if (s.frameSource && !had) frameLoop(s);
    showTotals();
  }

  function showStart(s, start) {
    if (!start) return;
    s.el.input.textContent = (start.source || "") + ": " + (start.input || "");
  }

  function showTop3(s, compound) {
    const body = s.el.top3;
    body.replaceChildren();
    if (!compound) return;
    const rows = Object.entries(compound)
      .sort((a, b) => b[1] - a[1])
      .slice(0, 3);
    for (const [name, p] of rows) {
      const tr = document.createElement("tr");
      const tdName = document.createElement("td");
      const swatch = document.createElement("span"); // the label's colour on the chart
      swatch.className = "swatch";
      const i = dash.labels.indexOf(name);
      if (i >= 0) swatch.style.background = SERIES_COLOURS[i % SERIES_COLOURS.length];
      tdName.append(swatch, document.createTextNode(name));
      const tdBar = document.createElement("td");
      tdBar.className = "bar";
      const fill = document.createElement("div");
      fill.className = "fill";
      fill.style.width = Math.round(Math.max(0, Math.min(1, Number(p) || 0)) * 100) + "%";
      tdBar.appendChild(fill);
      const tdP = document.createElement("td");
      tdP.textContent = fmt(p, 3);
      tr.append(tdName, tdBar, tdP);
      body.appendChild(tr);
    }
  }

  function showWindow(s, rec) {
    s.label = rec.label || null;
    setText(s.el.label, rec.label || "no prediction");
    s.el.windowInfo.textContent = "window " + rec.index + " (" + fmt(rec.start, 1) + DASH + fmt(rec.end, 1) + " s)";
    showTop3(s, rec.compound);
    s.el.latency.textContent = fmt(rec.latency_ms, 0) + " ms";
    const drops = Object.entries(rec.drops || {}).filter(([, v]) => v);
    s.el.drops.textContent = drops.length ? drops.map(([k, v]) => k + " " + v).join(" \u00b7 ") : "none";
  }

  function showNote(s, rec) {
    let text = "";
    if (rec.type === "gap") {
      text = "gap (" + (rec.reason || "source lost") + "): " + fmt(rec.start, 1) + DASH + fmt(rec.end, 1) + " s";
    } else if (rec.type === "warning") {
      text = (rec.sink ? "[" + rec.sink + "] " : "") + (rec.message || "");
    } else if (rec.type === "supervisor") {
      text = "analyzer " + (rec.event || "");
      if (rec.signal) text += " (" + rec.signal + ")";
      else if (typeof rec.exit_code === "number") text += " (exit " + rec.exit_code + ")";
      if (typeof rec.delay_s === "number") text += ", restart in " + fmt(rec.delay_s, 1) + " s";
      if (rec.message) text += ": " + rec.message;
    } else if (rec.type === "end") {
      text = "ended: " + (rec.reason || "");
    }
    s.el.note.textContent = text;
    s.el.note.classList.toggle("warn", rec.type === "warning" || rec.type === "gap");
  }

  function showTotals() {
    const by = {};
    let windows = 0;
    let warnings = 0;
    let gaps = 0;
    let restarts = 0;
    for (const id of dash.order) {
      const s = dash.streams[id];
      by[s.status] = (by[s.status] || 0) + 1;
      windows += s.counts.windows || 0;
      warnings += s.counts.warnings || 0;
      gaps += s.counts.gaps || 0;
      restarts += s.restarts || 0;
    }
    $("total-streams").textContent = String(dash.order.length);
    for (const st of ["running", "reconnecting", "restarting", "gave up", "ended"]) {
      $("total-" + st.replace(" ", "-")).textContent = String(by[st] || 0);
    }
    $("total-windows").textContent = String(windows);
    $("total-warnings").textContent = String(warnings);
    $("total-gaps").textContent = String(gaps);
    $("total-restarts").textContent = String(restarts);
  }

  // ------------------------------------------------------------------ frames
  async function frameLoop(s) {
    if (s.frameLoop) return;
    s.frameLoop = true;
    const url = "/streams/" + encodeURIComponent(s.id) + "/frame.jpg";
    try {
      while (s.frameSource && dash.streams[s.id] === s) {
        const t0 = performance.now();
        try {
          const res = await fetch(url, { cache: "no-store" });
          if (res.status === 200) {
            const index = res.headers.get("X-Frame-Index");
            const blob = await res.blob();
            if (index !== s.lastFrameIndex) {
              const m = cerFrame.meta(res);
              const bitmap = await createImageBitmap(blob);
              drawFrame(s, bitmap, m.box);
              bitmap.close();
              s.lastFrameIndex = index;
              s.el.frameInfo.textContent = cerFrame.info(m);
            }
          }
        } catch (err) {
          // the server or the analyzer went away between two frames: keep the last picture
        }
        const wait = 1000 / FRAME_HZ - (performance.now() - t0);
        if (wait > 0) await sleep(wait);
      }
    } finally {
      s.frameLoop = false;
    }
  }

  function drawFrame(s, bitmap, box) {
    s.lastBox = cerFrame.draw(s.el.canvas, bitmap, box, s.label, FRAME_SIZES);
    s.framesDrawn += 1;
  }

  // ------------------------------------------------------------------ the shared VLM queue
  function count(v) {
    return typeof v === "number" && isFinite(v) ? String(v) : DASH;
  }

  function ms(v) {
    return typeof v === "number" && isFinite(v) ? v.toFixed(0) + " ms" : DASH;
  }

  // the header: "VLM queue: N waiting, M at the endpoint (of C)"; hidden without a vlm_queue record
  function showVlm() {
    const q = dash.vlm;
    const el = $("vlm-queue");
    el.hidden = !q;
    el.textContent = q
      ? "VLM queue: " + count(q.queued) + " waiting, " + count(q.in_flight) + " at the endpoint (of " + count(q.concurrency) + ")"
      : "";
    el.title = q && typeof q.endpoint === "string" ? q.endpoint : "";
    for (const id of dash.order) showVlmOf(dash.streams[id]);
  }

  // a card: its stream's captions (answered / failed) and queue wait, hidden when the newest
  // record has nothing of it
  function showVlmOf(s) {
    const streams = dash.vlm && dash.vlm.streams;
    const own = streams && typeof streams === "object" && Object.prototype.hasOwnProperty.call(streams, s.id);
    const c = own && streams[s.id] && typeof streams[s.id] === "object" ? streams[s.id] : null;
    s.el.vlmTerm.hidden = s.el.vlm.hidden = !c;
    s.el.vlm.textContent = c
      ? count(c.ok) + " ok \u00b7 " + count(c.errors) + " errors \u00b7 wait p95 " + ms(c.wait_ms_p95)
      : "";
  }

  function applyVlm(rec) {
    dash.vlm = rec && typeof rec === "object" ? rec : null;
    if (dash.vlm) dash.vlmUpdates += 1;
    showVlm();
  }

  // ------------------------------------------------------------------ events
  function applyState(st) {
    dash.labels = st.compound_labels || [];
    dash.historyS = st.history_s || 60;
    dash.statuses = st.statuses || [];
    for (const id of dash.order) {
      const s = dash.streams[id];
      if (s.chart) s.chart.destroy();
    }
    dash.streams = {};
    dash.order = [];
    $("grid").replaceChildren();
    for (const snap of st.streams || []) {
      const s = makeStream(snap.stream_id);
      showStart(s, snap.start);
      for (const w of snap.windows || []) addPoint(s, w);
      redrawChart(s);
      if (snap.last) showWindow(s, snap.last);
      const notes = (snap.warnings || []).concat(snap.supervisor || []);
      notes.sort((a, b) => (a.wall_time || 0) - (b.wall_time || 0));
      if (snap.end) notes.push(snap.end);
      if (notes.length) showNote(s, notes[notes.length - 1]);
      showSummary(s, snap);
    }
    showTotals();
    applyVlm(st.vlm_queue);
    dash.states += 1;
    dash.connected = true;
    setConn("live", "live");
  }

  function setConn(kind, label) {
    const el = $("conn");
    el.className = "conn " + kind;
    el.textContent = label;
  }

  const handlers = {
    start(s, rec) {
      s.points = [];
      showStart(s, rec);
      redrawChart(s);
    },
    window(s, rec) {
      addPoint(s, rec);
      showWindow(s, rec);
      redrawChart(s);
    },
    warning: showNote,
    gap: showNote,
    end: showNote,
    supervisor: showNote,
  };

  function connect() {
    const es = new EventSource("/events");
    es.addEventListener("state", (ev) => applyState(JSON.parse(ev.data)));
    for (const [kind, fn] of Object.entries(handlers)) {
      es.addEventListener(kind, (ev) => {
        const rec = JSON.parse(ev.data);
        const s = streamOf(rec.stream_id);
        if (s) fn(s, rec);
      });
    }
    es.addEventListener("vlm_queue", (ev) => applyVlm(JSON.parse(ev.data)));
    es.addEventListener("stream", (ev) => {
      const sum = JSON.parse(ev.data);
      const s = streamOf(sum.stream_id);
      if (s) showSummary(s, sum);
    });
    es.onerror = () => {
      dash.connected = false;
      setConn("lost", "disconnected (retrying)");
    };
  }

  connect();
})();
