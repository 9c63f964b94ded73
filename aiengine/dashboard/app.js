// The aiengine dashboard: follows GET api/events (server-sent events: a
// snapshot, then diffs of the rows that changed) and draws the tables from
// what it holds. Only the rows of the current page are in the document, so
// ten thousand channels cost a sort, not ten thousand table rows.
"use strict";

const HISTORY = 120;   // seconds of rate history drawn per row
const PAGE_SIZE = 100;
// Failing first: the states a person must look at before the others.
const STATE_RANK = { waiting: 0, connecting: 1, stopped: 2, idle: 3, connected: 4 };

const state = {
  offset: 0,           // server clock minus ours, in seconds
  phase: null,         // the fraction of a second the feed ticks at
  actions: false,
  columns: {},
  rows: { channels: new Map(), listeners: new Map(), topics: new Map() },
  // name -> { total, points: [[second, delta], ...] }: what the graphs draw
  history: { channels: new Map(), topics: new Map() },
};

const $ = (selector) => document.querySelector(selector);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  node.append(...children);
  return node;
}

function serverNow() {
  return Date.now() / 1000 + state.offset;
}

function setText(node, text) {
  text = String(text);
  if (node.textContent !== text) node.textContent = text;
}

function count(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en");
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = n / 1024, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

function duration(seconds) {
  if (seconds === null || !isFinite(seconds)) return "–";
  seconds = Math.max(0, seconds);
  if (seconds < 60) return `${Math.floor(seconds)}s`;
  const s = Math.floor(seconds);
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d${String(Math.floor(s % 86400 / 3600)).padStart(2, "0")}h`;
}

// -- rates --------------------------------------------------------------------

// Diffs come once a second, each a few milliseconds after the feed's tick:
// seconds are counted from the ticks' phase, so that jitter never puts two
// ticks in one second (a spike) and none in the next (a gap).
function second(now) {
  return state.phase === null ? Math.floor(now) : Math.round(now - state.phase);
}

function record(kind, name, total, now) {
  const history = state.history[kind];
  const entry = history.get(name);
  if (entry === undefined) {
    history.set(name, { total, points: [] });
    return;
  }
  const delta = total - entry.total;
  entry.total = total;
  const at = second(now);
  // A diff comes within a second of the change: the delta belongs to now.
  if (delta > 0) entry.points.push([at, delta]);
  while (entry.points.length && entry.points[0][0] <= at - HISTORY) entry.points.shift();
}

function perSecond(kind, name, now) {
  const bins = new Array(HISTORY).fill(0);
  const entry = state.history[kind].get(name);
  if (entry === undefined) return bins;
  const last = state.phase === null ? Math.floor(now) : Math.floor(now - state.phase);
  for (const [at, delta] of entry.points) {
    const index = HISTORY - 1 - (last - at);
    if (index >= 0 && index < HISTORY) bins[index] += delta;
  }
  return bins;
}

const SVG = "http://www.w3.org/2000/svg";

function sparkline() {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${HISTORY} 20`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "spark");
  svg.append(document.createElementNS(SVG, "polyline"));
  return svg;
}

function drawSparkline(svg, bins) {
  const max = Math.max(1, ...bins);
  const points = bins.map((v, i) => `${i},${(19 - (v / max) * 18).toFixed(1)}`).join(" ");
  const line = svg.firstChild;
  if (line.getAttribute("points") !== points) line.setAttribute("points", points);
  const recent = bins.slice(-10).reduce((a, b) => a + b, 0) / 10;
  setTitle(svg, `${recent.toFixed(1)}/s over the last 10 s, peak ${max}/s`);
  return recent;
}

function setTitle(svg, text) {
  let title = svg.querySelector("title");
  if (!title) svg.append(title = document.createElementNS(SVG, "title"));
  setText(title, text);
}

// -- tables -------------------------------------------------------------------

// One table of rows kept in state.rows[kind], shown a page at a time: rows
// keep their element while they stay on the page, so an update changes
// text, not the document's structure.
class PagedTable {
  constructor(kind, { key, build, update, match, compare, pageSize = PAGE_SIZE }) {
    Object.assign(this, { kind, key, build, update, match, compare, pageSize });
    this.body = $(`#${kind}-rows`);
    this.pager = $(`#${kind}-pager`);
    this.page = 0;
    this.filter = "";
    this.shown = new Map();   // name -> <tr> on the page now
  }

  render(now) {
    let rows = [...state.rows[this.kind].values()];
    const filter = this.filter.toLowerCase();
    if (this.match) rows = rows.filter((row) => this.match(row, filter));
    if (this.compare) rows.sort(this.compare);
    const pages = Math.max(1, Math.ceil(rows.length / this.pageSize));
    this.page = Math.min(this.page, pages - 1);
    const start = this.page * this.pageSize;
    const page = rows.slice(start, start + this.pageSize);
    const keep = new Map();
    const elements = page.map((row) => {
      let tr = this.shown.get(row.name);
      if (tr === undefined) {
        tr = this.build(row);
        tr.setAttribute(this.key, row.name);
      }
      keep.set(row.name, tr);
      this.update(tr, row, now);
      return tr;
    });
    this.shown = keep;
    const same = elements.length === this.body.children.length
      && elements.every((tr, i) => this.body.children[i] === tr);
    if (!same) this.body.replaceChildren(...elements);
    setText($(`#${this.kind}-count`), rows.length === state.rows[this.kind].size
      ? `(${rows.length})` : `(${rows.length} of ${state.rows[this.kind].size})`);
    if (this.pager) this.drawPager(rows.length, pages, start, page.length);
  }

  drawPager(total, pages, start, shown) {
    if (pages <= 1) {
      this.pager.replaceChildren();
      return;
    }
    const previous = el("button", { type: "button" }, "‹");
    const next = el("button", { type: "button" }, "›");
    previous.disabled = this.page === 0;
    next.disabled = this.page >= pages - 1;
    previous.onclick = () => { this.page -= 1; scheduleRender(); };
    next.onclick = () => { this.page += 1; scheduleRender(); };
    this.pager.replaceChildren(previous,
      ` ${start + 1}–${start + shown} of ${total} `, next);
  }
}

const channels = new PagedTable("channels", {
  key: "data-channel",
  build(row) {
    const tr = el("tr");
    for (let i = 0; i < 10; i++) tr.append(el("td", i >= 4 ? { class: "num" } : {}));
    tr.cells[0].className = "name";
    tr.cells[1].append(el("span", { class: "state" }));
    tr.append(el("td", { class: "graph" }, sparkline()));
    const actions = el("td", { class: "actions" });
    for (const action of ["connect", "disconnect"]) {
      const button = el("button", { type: "button", "data-action": action },
        action === "connect" ? "Connect" : "Disconnect");
      button.onclick = () => channelAction(row.name, action, button);
      actions.append(button);
    }
    tr.append(actions);
    return tr;
  },
  update(tr, row, now) {
    if (tr.dataset.state !== row.state) tr.dataset.state = row.state;
    const cells = tr.cells;
    setText(cells[0], row.name);
    if (row.lastError) cells[0].title = row.lastError; else cells[0].removeAttribute("title");
    const badge = cells[1].firstChild;
    setText(badge, row.state);
    badge.className = `state state-${row.state}`;
    setText(cells[2], row.peer);
    setText(cells[3], row.since === null ? "–" : duration(now - row.since));
    setText(cells[4], count(row.messagesIn));
    setText(cells[5], count(row.messagesOut));
    setText(cells[6], bytes(row.bytesIn));
    setText(cells[7], bytes(row.bytesOut));
    setText(cells[8], count(row.queued));
    setText(cells[9], count(row.dropped));
    cells[9].classList.toggle("bad", row.dropped > 0);
    drawSparkline(cells[10].firstChild, perSecond("channels", row.name, now));
    for (const button of cells[11].children) {
      const pointless = button.dataset.action === "connect"
        ? row.state === "connected" : row.state === "stopped";
      button.disabled = !state.actions || pointless;
    }
  },
  match(row, filter) {
    return (!channelState.value || row.state === channelState.value)
      && (!filter || row.name.toLowerCase().includes(filter)
        || row.peer.toLowerCase().includes(filter));
  },
  compare(a, b) {
    if (channelSort.value === "failing") {
      const rank = STATE_RANK[a.state] - STATE_RANK[b.state];
      if (rank) return rank;
    }
    return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
  },
});

const listeners = new PagedTable("listeners", {
  key: "data-listener",
  pageSize: Number.MAX_SAFE_INTEGER,   // a handful: one page
  build() {
    const tr = el("tr");
    for (let i = 0; i < 7; i++) tr.append(el("td", i >= 2 ? { class: "num" } : {}));
    return tr;
  },
  update(tr, row) {
    const cells = tr.cells;
    tr.classList.toggle("down", row.address === null);
    setText(cells[0], row.name);
    setText(cells[1], row.address === null ? "not listening" : row.address);
    setText(cells[2], count(row.connections));
    setText(cells[3], count(row.accepted));
    setText(cells[4], count(row.refused));
    setText(cells[5], count(row.messagesIn));
    setText(cells[6], count(row.messagesOut));
  },
  compare: (a, b) => (a.name < b.name ? -1 : 1),
});

const topics = new PagedTable("topics", {
  key: "data-topic",
  build() {
    const tr = el("tr");
    for (let i = 0; i < 6; i++) tr.append(el("td", i >= 1 ? { class: "num" } : {}));
    const graph = el("td", { class: "graph" }, sparkline(), el("span", { class: "rate" }));
    tr.append(graph);
    return tr;
  },
  update(tr, row, now) {
    const cells = tr.cells;
    setText(cells[0], row.name);
    setText(cells[1], count(row.published));
    setText(cells[2], count(row.delivered));
    setText(cells[3], count(row.unrouted));
    setText(cells[4], count(row.dropped));
    setText(cells[5], count(row.subscribers));
    cells[3].classList.toggle("bad", row.unrouted > 0);
    cells[4].classList.toggle("bad", row.dropped > 0);
    const rate = drawSparkline(cells[6].firstChild, perSecond("topics", row.name, now));
    setText(cells[6].lastChild, `${rate.toFixed(1)}/s`);
  },
  match: (row, filter) => !filter || row.name.toLowerCase().includes(filter),
  compare: (a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
});

const channelState = $("#channels-state");
const channelSort = $("#channels-sort");
const tables = [channels, listeners, topics];

let renderPending = false;
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => {
    renderPending = false;
    const now = serverNow();
    for (const table of tables) table.render(now);
    drawSummary();
  });
}

function drawSummary() {
  const byState = {};
  for (const row of state.rows.channels.values()) byState[row.state] = (byState[row.state] || 0) + 1;
  const parts = Object.keys(STATE_RANK).filter((s) => byState[s]).map((s) => `${byState[s]} ${s}`);
  setText($("#summary"), parts.join(" · "));
}

// -- the event stream ---------------------------------------------------------

function rowObject(kind, values) {
  const row = {};
  state.columns[kind].forEach((column, i) => { row[column] = values[i]; });
  return row;
}

function applyRows(kind, rows, now) {
  const map = state.rows[kind];
  for (const values of rows) {
    const row = rowObject(kind, values);
    map.set(row.name, row);
    if (kind === "channels") record(kind, row.name, row.messagesIn + row.messagesOut, now);
    if (kind === "topics") record(kind, row.name, row.published, now);
  }
}

function applySnapshot(data) {
  state.offset = data.now - Date.now() / 1000;
  state.phase = null;  // a new stream may tick at another phase
  state.actions = data.actions;
  const notice = $("#notice");
  notice.hidden = data.actions;
  if (!data.actions) setText(notice, `Actions are off: ${data.actionsRefused}`);
  $("#logout").hidden = !data.auth;
  for (const kind of Object.keys(state.rows)) {
    state.columns[kind] = data[kind].columns;
    const names = new Set(data[kind].rows.map((values) => values[0]));
    for (const name of [...state.rows[kind].keys()]) {
      if (!names.has(name)) forget(kind, name);
    }
    applyRows(kind, data[kind].rows, data.now);
  }
  scheduleRender();
}

function applyDiff(data) {
  state.offset = data.now - Date.now() / 1000;
  if (state.phase === null) state.phase = data.now % 1;
  for (const kind of Object.keys(state.rows)) {
    const change = data[kind];
    if (!change) continue;
    for (const name of change.removed) forget(kind, name);
    applyRows(kind, change.rows, data.now);
  }
  scheduleRender();
}

function forget(kind, name) {
  state.rows[kind].delete(name);
  if (state.history[kind]) state.history[kind].delete(name);
}

function setLive(status, text) {
  const live = $("#live");
  live.dataset.live = status;
  setText(live, text);
}

function follow() {
  const source = new EventSource("api/events");
  source.addEventListener("snapshot", (e) => {
    setLive("live", "live");
    applySnapshot(JSON.parse(e.data));
  });
  source.addEventListener("diff", (e) => applyDiff(JSON.parse(e.data)));
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      // Refused (a session that ended): only a reload can log in again.
      setLive("closed", "disconnected: reload the page");
    } else {
      setLive("reconnecting", "reconnecting…");
    }
  };
}

// -- actions ------------------------------------------------------------------

// Every action carries X-Aiengine: 1, which a cross-site form cannot send.
async function post(url, body, type) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "X-Aiengine": "1", "Content-Type": type },
    body,
  });
  return response;
}

async function errorText(response) {
  try {
    const data = await response.json();
    return data.error || response.statusText;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

function flash(text) {
  const notice = $("#notice");
  notice.hidden = false;
  setText(notice, text);
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { notice.hidden = state.actions; }, 8000);
}

async function channelAction(name, action, button) {
  button.disabled = true;
  try {
    const url = `api/channels/${encodeURIComponent(name)}/${action}`;
    const response = await post(url, "", "text/plain");
    if (!response.ok) flash(`${action} ${name}: ${await errorText(response)}`);
  } catch (error) {
    flash(`${action} ${name}: ${error}`);
  }
  // The row shows the outcome with the next diff.
}

async function sendConsole() {
  const input = $("[data-console-input]");
  const output = $("[data-console-output]");
  const text = input.value.trim();
  if (!text) return;
  setText(output, "…");
  try {
    const response = await post("api/console", text, "application/xml");
    setText(output, response.ok ? await response.text() : await errorText(response));
  } catch (error) {
    setText(output, String(error));
  }
}

async function publish(event) {
  event.preventDefault();
  const form = event.target;
  const output = $("[data-publish-output]");
  setText(output, "…");
  const body = JSON.stringify({
    topic: form.topic.value, message: form.message.value, type: form.type.value,
  });
  try {
    const response = await post("api/publish", body, "application/json");
    const data = await response.json();
    setText(output, data.ok ? `published ${data.messageId}` : data.error);
  } catch (error) {
    setText(output, String(error));
  }
}

async function loadExamples() {
  const response = await fetch("api/examples", { credentials: "same-origin" });
  if (!response.ok) return;
  const { examples } = await response.json();
  const box = $("#examples");
  const seen = {};
  examples.forEach((text, i) => {
    const match = /class="(\w+)" method="(\w+)"/.exec(text);
    let label = match ? `${match[1]}.${match[2]}` : `example ${i + 1}`;
    seen[label] = (seen[label] || 0) + 1;
    if (seen[label] > 1) label += ` (${seen[label]})`;
    const button = el("button", { type: "button", "data-example": String(i), title: text }, label);
    button.onclick = () => {
      $("[data-console-input]").value = text;
      $("[data-console-input]").focus();
    };
    box.append(button);
  });
}

async function logout() {
  await post("logout", "", "text/plain");
  location.reload();
}

// -- wiring -------------------------------------------------------------------

function start() {
  $("#channels-filter").addEventListener("input", (e) => {
    channels.filter = e.target.value;
    channels.page = 0;
    scheduleRender();
  });
  $("#topics-filter").addEventListener("input", (e) => {
    topics.filter = e.target.value;
    topics.page = 0;
    scheduleRender();
  });
  for (const select of [channelState, channelSort]) {
    select.addEventListener("change", () => { channels.page = 0; scheduleRender(); });
  }
  $("[data-console-send]").addEventListener("click", sendConsole);
  $("[data-console-input]").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) sendConsole();
  });
  $("#publish").addEventListener("submit", publish);
  $("#logout").addEventListener("click", logout);
  // Time in state and the graphs move on between diffs.
  setInterval(scheduleRender, 1000);
  loadExamples();
  follow();
}

start();
