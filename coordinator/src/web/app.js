// meshprobe's live view. No library: the page is small, and everything from the server is
// put on the page with textContent (never as HTML).
'use strict';

const MAX_ROWS = 60;      // rows shown per layer, worst first; the rest are counted
const MAX_COLS = 60;      // columns likewise
const STALE_MS = 120000;  // a round older than this makes the page say it is stale
const POLL_MS = 2000;
const EPISODE_GAP = 3;    // a finding missing from this many rounds in a row ends its episode

const view = { round: null, report: null, layer: null, layerChosen: false, status: null, statusAt: 0,
               selected: null, timeline: null, error: null, node: null };
// A link names a layer and a node: #layer=pod-to-pod&node=n2 (the strip and the tabs set it).
function readHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  if (h.get('layer')) { view.layer = h.get('layer'); view.layerChosen = true; }
  view.node = h.get('node') || null;
}
function writeHash() {
  const h = new URLSearchParams();
  if (view.layerChosen && view.layer) h.set('layer', view.layer);
  if (view.node) h.set('node', view.node);
  const s = h.toString();
  if (('#' + s) !== location.hash && !(s === '' && location.hash === '')) history.replaceState(null, '', s ? '#' + s : location.pathname + location.search);
}
readHash();
window.addEventListener('hashchange', () => { readHash(); if (view.report) renderReport(); });
window.meshprobe = view; // for the browser test and for curious operators

const $ = (id) => document.getElementById(id);
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

async function getJSON(url) {
  const r = await fetch(url, { cache: 'no-store' });
  if (!r.ok) throw new Error(url + ': HTTP ' + r.status);
  return r.json();
}

async function tick() {
  try {
    const s = await getJSON('v1/status');
    view.status = s; view.statusAt = Date.now(); view.error = null;
    if (s.latestRound !== null && s.latestRound !== view.round) {
      const rep = await getJSON('v1/rounds/latest');
      view.report = rep; view.round = rep.round;
      renderReport();
      try { view.timeline = await getJSON('v1/findings?since=0'); } catch (e) { view.timeline = null; }
      renderTimeline();
    }
  } catch (e) {
    view.error = e.message;
  }
  renderStatus();
}

function ageMs() {
  const s = view.status;
  if (!s || s.latestAgeMs === null || s.latestAgeMs === undefined) return null;
  return s.latestAgeMs + (Date.now() - view.statusAt);
}

function renderStatus() {
  const banners = $('banners');
  banners.replaceChildren();
  const s = view.status;
  const add = (text, cls) => banners.appendChild(el('div', 'banner' + (cls ? ' ' + cls : ''), text));
  if (view.error) add('Cannot reach the coordinator: ' + view.error + '. What is shown is the last state it gave.', 'error');
  if (s && !s.leader) add('This coordinator is the standby replica: it runs no rounds. Open the active one (the Service sends you there).');
  if (s && !s.topologyFresh) add('The Kubernetes API server is unreachable: rounds are planned from the last known topology.');
  if (s && s.historyError) add('The history is not being written (' + s.historyError.op + ', ' + s.historyError.failures + ' failed writes): ' + s.historyError.error + '. Rounds still run; what they found is not kept across a restart.', 'error');
  if (s && s.insecure) add('Authentication is off (--insecure-no-auth): anyone who reaches the coordinator can forge reports.');
  renderAge();
}

function renderAge() {
  const a = ageMs();
  const age = $('age');
  const verdict = $('verdict');
  if (a === null) { age.textContent = ''; return; }
  const stale = a > STALE_MS || view.error;
  age.textContent = 'round ' + view.round + ' finished ' + Math.round(a / 1000) + ' s ago' + (stale ? ': this view is stale' : '');
  age.className = 'age' + (stale ? ' stale' : '');
  if (view.report) {
    if (stale) { verdict.className = 'verdict stale'; verdict.textContent = 'STALE: last known ' + (view.report.healthy ? 'healthy' : 'not healthy'); }
    else renderVerdict();
  }
}

function counts(rep) {
  let ok = 0, fail = 0, unknown = 0;
  for (const m of Object.values(rep.layers)) for (const row of Object.values(m)) for (const c of Object.values(row)) {
    if (c.state === 'ok') ok++; else if (c.state === 'fail') fail++; else unknown++;
  }
  // A summarised report (a big round) counts its ok cells instead of listing them.
  if (rep.summary) for (const n of Object.values(rep.summary.okCellsOmitted || {})) ok += n;
  return { ok, fail, unknown };
}

function renderVerdict() {
  const rep = view.report;
  const c = counts(rep);
  const v = $('verdict');
  if (rep.healthy) { v.className = 'verdict healthy'; v.textContent = 'HEALTHY: all ' + (c.ok) + ' cells ok'; }
  else { v.className = 'verdict broken'; v.textContent = 'NOT HEALTHY: ' + c.fail + ' of ' + (c.ok + c.fail + c.unknown) + ' cells fail, ' + c.unknown + ' unknown'; }
}

function renderReport() {
  const rep = view.report;
  renderVerdict();
  const list = $('findings');
  list.replaceChildren();
  if (rep.findings.length === 0) list.appendChild(el('li', 'muted', 'none'));
  rep.findings.forEach((f) => {
    const li = el('li', 'finding');
    li.dataset.cause = f.cause;
    li.appendChild(el('div', 'summary', f.summary));
    li.appendChild(el('div', 'cause', '[' + f.cause + '] ' + f.direction + (f.rounds > 1 ? ', ' + f.rounds + ' rounds in a row' : '')));
    li.appendChild(el('div', 'hop', 'hop: ' + f.hop));
    // The nodes' own evidence and the reasoning, all of it; then a few of the probe cells
    // that show it, the rest behind a "more" that opens in place.
    const cells = Math.min(f.evidenceCells || 0, f.evidence.length);
    const facts = f.evidence.slice(0, f.evidence.length - cells);
    const probes = f.evidence.slice(f.evidence.length - cells);
    const ev = el('ul', 'evidence');
    facts.forEach((e) => ev.appendChild(el('li', null, e)));
    probes.slice(0, 3).forEach((e) => ev.appendChild(el('li', 'probe', e)));
    li.appendChild(ev);
    if (probes.length > 3) {
      const more = el('details', 'more');
      more.appendChild(el('summary', null, (probes.length - 3) + (probes.length - 3 === 1 ? ' more probe line' : ' more probe lines')));
      const rest = el('ul', 'evidence');
      probes.slice(3).forEach((e) => rest.appendChild(el('li', 'probe', e)));
      more.appendChild(rest);
      li.appendChild(more);
    }
    li.appendChild(el('div', 'fix', 'next: ' + f.fix));
    list.appendChild(li);
  });
  const layers = Object.keys(rep.layers);
  renderNodes();
  // Until someone picks a layer, show the one where the node the first finding names (or
  // the picked node) fails most; else the first one with failures.
  if (!view.layerChosen || !rep.layers[view.layer]) {
    const focus = view.node || (rep.findings[0] && rep.findings[0].nodes[0]);
    const touching = (l) => focus ? badFor(rep.layers[l], focus) : 0;
    const best = layers.slice().sort((a, b) => touching(b) - touching(a))[0];
    view.layer = (best && touching(best) > 0 ? best : null) || layers.find((l) => bad(rep.layers[l]) > 0) || layers[0] || null;
  }
  const tabs = $('layers');
  tabs.replaceChildren();
  layers.forEach((l) => {
    const b = el('button', l === view.layer ? 'active' : '', l);
    b.dataset.layer = l;
    const n = bad(rep.layers[l]);
    if (n > 0) b.appendChild(el('span', 'bad', n));
    b.addEventListener('click', () => { view.layer = l; view.layerChosen = true; writeHash(); renderReport(); });
    tabs.appendChild(b);
  });
  renderGrid();
  if (view.selected) showCell(view.selected.from, view.selected.to);
}

// A node's failing (or unknown) cells in a layer: its row and its column.
function badFor(m, node) {
  let n = 0;
  for (const [r, row] of Object.entries(m)) for (const [c, cell] of Object.entries(row)) {
    if (cell.state !== 'ok' && (r === node || c === node)) n++;
  }
  return n;
}

// One chip per node: its worst state over every layer and the layer it is worst in; a
// click shows that layer with the node's row and column marked.
function renderNodes() {
  const rep = view.report;
  const strip = $('nodes');
  strip.replaceChildren();
  const blamed = new Set(rep.findings.flatMap((f) => f.nodes));
  rep.nodes.forEach((n) => {
    let fail = 0, unknown = 0, worstLayer = null, worstN = 0;
    for (const [l, m] of Object.entries(rep.layers)) {
      let lf = 0;
      for (const [r, row] of Object.entries(m)) for (const [c, cell] of Object.entries(row)) {
        if (r !== n && c !== n) continue;
        if (cell.state === 'fail') { fail++; lf++; } else if (cell.state === 'unknown') unknown++;
      }
      if (lf > worstN) { worstN = lf; worstLayer = l; }
    }
    const state = blamed.has(n) ? 'blamed' : fail > 0 ? 'fail' : unknown > 0 ? 'unknown' : 'ok';
    const b = el('button', 'node ' + state + (view.node === n ? ' active' : ''), n);
    b.dataset.node = n;
    b.dataset.state = state;
    b.title = n + ': ' + (blamed.has(n) ? 'named by a finding; ' : '') + fail + ' failing cells' + (worstLayer ? ', most in ' + worstLayer : '') + (unknown ? ', ' + unknown + ' unknown' : '');
    b.addEventListener('click', () => {
      view.node = view.node === n ? null : n;
      if (view.node && worstLayer) { view.layer = worstLayer; view.layerChosen = true; }
      writeHash();
      renderReport();
    });
    strip.appendChild(b);
  });
}

function bad(m) {
  let n = 0;
  for (const row of Object.values(m)) for (const c of Object.values(row)) if (c.state !== 'ok') n++;
  return n;
}

function cellClass(c) {
  if (!c) return 'cell none';
  if (c.state === 'fail') return 'cell fail';
  if (c.state === 'unknown') return 'cell unknown';
  if (c.lossPct > 0) return 'cell lossy';
  return 'cell ok';
}

function renderGrid() {
  const rep = view.report;
  const grid = $('grid');
  grid.replaceChildren();
  $('collapsed').textContent = '';
  if (!view.layer) return;
  const omitted = rep.summary && (rep.summary.okCellsOmitted || {})[view.layer];
  const note = omitted ? omitted + ' ok cells of this layer are counted, not shown (the round is summarised: over 100,000 cells). ' : '';
  const m = rep.layers[view.layer];
  const nodeOrder = new Map(rep.nodes.map((n, i) => [n, i]));
  const rows = Object.keys(m);
  const cols = [];
  for (const r of rows) for (const c of Object.keys(m[r])) if (!cols.includes(c)) cols.push(c);
  const order = (a, b) => (nodeOrder.has(a) ? nodeOrder.get(a) : 1e9) - (nodeOrder.has(b) ? nodeOrder.get(b) : 1e9) || (a < b ? -1 : a > b ? 1 : 0);
  const rowBad = (r) => Object.values(m[r]).filter((c) => c.state !== 'ok').length;
  const colBad = (c) => rows.filter((r) => m[r][c] && m[r][c].state !== 'ok').length;
  // Worst first, so that at 1,000 nodes the broken part is what is on screen; and one
  // order for a node as a row and as a column (its failures both ways), so that the
  // diagonal stays a diagonal. Columns that are not nodes (CoreDNS pods, ingresses) follow.
  const worst = new Map();
  for (const n of new Set([...rows, ...cols])) worst.set(n, (m[n] ? rowBad(n) : 0) + (cols.includes(n) ? colBad(n) : 0));
  const byWorst = (a, b) => worst.get(b) - worst.get(a) || order(a, b);
  rows.sort(byWorst);
  const rank = new Map(rows.map((r, i) => [r, i]));
  cols.sort((a, b) => (rank.has(a) ? rank.get(a) : 1e9) - (rank.has(b) ? rank.get(b) : 1e9) || byWorst(a, b));
  const shownRows = rows.slice(0, MAX_ROWS);
  const shownCols = cols.slice(0, MAX_COLS);
  grid.style.gridTemplateColumns = 'minmax(4rem, 10rem) repeat(' + shownCols.length + ', 14px)';
  grid.appendChild(el('div', 'label muted', 'from \\ to'));
  shownCols.forEach((c) => grid.appendChild(el('div', 'collabel', c)));
  const rtts = [];
  for (const r of rows) for (const c of Object.values(m[r])) if (c.rttMs !== null && c.rttMs !== undefined) rtts.push(c.rttMs);
  const maxRtt = Math.max(1, ...rtts);
  shownRows.forEach((r) => {
    grid.appendChild(el('div', 'label' + (r === view.node ? ' focus' : ''), r));
    shownCols.forEach((c) => {
      const cell = m[r][c];
      const d = el('div', cellClass(cell) + (view.node && (r === view.node || c === view.node) ? ' focus' : ''));
      d.dataset.from = r; d.dataset.to = c;
      if (cell) {
        d.dataset.state = cell.state;
        if (cell.state === 'ok' && !(cell.lossPct > 0)) {
          const light = 82 - 44 * Math.min(1, (cell.rttMs || 0) / maxRtt);
          d.style.background = 'hsl(130 55% ' + light.toFixed(0) + '%)';
        }
        d.title = r + ' -> ' + c + ': ' + cell.state + (cell.rttMs != null ? ', ' + cell.rttMs.toFixed(2) + ' ms' : '') + (cell.lossPct ? ', loss ' + cell.lossPct.toFixed(0) + '%' : '');
        d.addEventListener('click', () => showCell(r, c));
      }
      grid.appendChild(d);
    });
  });
  const hiddenRows = rows.length - shownRows.length, hiddenCols = cols.length - shownCols.length;
  $('collapsed').textContent = note;
  if (hiddenRows > 0 || hiddenCols > 0) {
    const hiddenBad = rows.slice(MAX_ROWS).filter((r) => rowBad(r) > 0).length;
    $('collapsed').textContent = note + 'Collapsed: ' + hiddenRows + ' more rows (' + hiddenBad + ' with failures) and ' + hiddenCols + ' more columns, all ordered worst first.';
  }
}

function showCell(from, to) {
  const rep = view.report;
  const cell = rep.layers[view.layer] && rep.layers[view.layer][from] && rep.layers[view.layer][from][to];
  view.selected = { from, to };
  document.querySelectorAll('.cell.selected').forEach((e) => e.classList.remove('selected'));
  document.querySelectorAll('.cell').forEach((e) => { if (e.dataset.from === from && e.dataset.to === to) e.classList.add('selected'); });
  const aside = $('detail');
  if (!cell) { aside.hidden = true; return; }
  aside.hidden = false;
  $('detail-title').textContent = view.layer + ': ' + from + ' -> ' + to;
  const dl = $('detail-fields');
  dl.replaceChildren();
  const field = (k, v) => { dl.appendChild(el('dt', null, k)); dl.appendChild(el('dd', null, v)); };
  field('state', cell.state);
  field('probes', cell.ok + ' of ' + cell.sent + ' ok');
  field('loss', cell.lossPct === null || cell.lossPct === undefined ? '-' : cell.lossPct.toFixed(1) + '%');
  field('RTT', cell.rttMs === null || cell.rttMs === undefined ? '-' : cell.rttMs.toFixed(2) + ' ms');
  field('last failure', cell.detail || '-');
  const fs = $('detail-findings');
  fs.replaceChildren();
  const claims = rep.findings.filter((f) => (f.cells || []).some((c) => c.layer === view.layer && c.from === from && c.to === to));
  if (claims.length) {
    fs.appendChild(el('h3', null, 'Explained by'));
    claims.forEach((f) => fs.appendChild(el('p', 'summary', f.summary + ' [' + f.cause + ']')));
  }
  const p = $('detail-pcap');
  p.replaceChildren();
  // Only capture rounds (`check --pcap`) keep packets; the status lists them.
  const captured = view.status && (view.status.captureRounds || []).includes(rep.round);
  if (captured && rep.nodes.includes(to) && from !== to) {
    const a = el('a', null, 'Download the packets ' + from + ' captured with ' + to + ' (pcap)');
    a.href = 'v1/rounds/' + rep.round + '/pcap?node=' + encodeURIComponent(from) + '&peer=' + encodeURIComponent(to);
    p.appendChild(a);
  }
}

function renderTimeline() {
  const t = view.timeline;
  const box = $('timeline');
  box.replaceChildren();
  if (!t || t.oldestRound === null) { box.appendChild(el('p', 'muted', 'no history yet')); return; }
  if (t.findings.length === 0) { box.appendChild(el('p', 'muted', 'no finding in rounds ' + t.oldestRound + ' to ' + t.newestRound)); return; }
  const last = t.newestRound;
  const first = Math.max(t.oldestRound, last - 119);
  // Each finding's rounds, cut into episodes: three clean rounds in a row end one (a
  // round or two without it is flapping, the same episode). An episode that ended before
  // the newest round is resolved.
  const episodes = [];
  t.findings.forEach((f) => {
    let cur = null;
    f.rounds.slice().sort((a, b) => a - b).forEach((r) => {
      if (cur && r - cur.last <= EPISODE_GAP) { cur.last = r; cur.rounds.push(r); return; }
      cur = { f, first: r, last: r, rounds: [r] };
      episodes.push(cur);
    });
  });
  episodes.sort((a, b) => b.last - a.last || b.first - a.first);
  episodes.slice(0, 20).forEach((e) => {
    const resolved = e.last < last;
    const row = el('div', 'row episode' + (resolved ? ' resolved' : ' ongoing'));
    row.dataset.cause = e.f.cause;
    const strip = el('div', 'strip');
    const on = new Set(e.rounds);
    for (let r = first; r <= last; r++) {
      const i = el('i', on.has(r) ? 'on' : '');
      i.title = 'round ' + r;
      strip.appendChild(i);
    }
    row.appendChild(strip);
    row.appendChild(el('span', 'cause', e.f.cause + ' ' + e.f.nodes.join(',')));
    row.appendChild(el('span', 'state', resolved ? 'resolved' : 'ongoing'));
    row.appendChild(el('span', 'muted', 'rounds ' + e.first + ' to ' + e.last + (resolved ? ', resolved by round ' + (e.last + 1) : ', still made')));
    box.appendChild(row);
  });
}

tick();
setInterval(tick, POLL_MS);
setInterval(renderAge, 1000);
