// Renders dashboards/htmx-sse.json (the Grafana dashboard) from scrapes of
// a running demo under load, for machines without Grafana: the same
// panels, each computed from its own PromQL expression by a small
// evaluator of the subset the dashboard uses (selectors with label
// matchers, rate, increase, sum/min [by (…)], histogram_quantile).
//
//   node scripts/dashboard.mjs http://127.0.0.1:3000 <out-dir> [seconds]
//
// The demo must be built with `--features metrics` (it then serves GET
// /metrics). While scraping once a second, this script loads the demo:
// 40 streams on /sse, toasts and notes published several times a second,
// a stream closed and resumed with its Last-Event-ID every 2 s, and one
// with an id from nowhere (a reset). Rates are taken over the run so far,
// up to each panel's window. Writes <out-dir>/dashboard.html and
// <out-dir>/dashboard.png, and exits 1 when a panel got no data.

import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { launch } from '../tests/browser/harness.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const [base, outArg, secondsArg = '30'] = process.argv.slice(2);
const outDir = outArg && resolve(outArg);
const seconds = Number(secondsArg);
if (!/^http:\/\/127\.0\.0\.1:\d+$/.test(base ?? '') || !outDir || !(seconds >= 3 && seconds <= 600)) {
  console.error('usage: dashboard.mjs http://127.0.0.1:<port> <out-dir> [seconds, 3..600]');
  process.exit(2);
}
setTimeout(() => { console.error('dashboard: watchdog'); process.exit(1); }, (seconds + 60) * 1000).unref();
const dashboard = JSON.parse(readFileSync(join(root, 'dashboards/htmx-sse.json'), 'utf8'));

// --- The Prometheus text format --------------------------------------------------

function parseScrape(text) {
  const series = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)/.exec(line);
    if (!m) throw new Error(`unreadable sample: ${line}`);
    const labels = {};
    for (const [, k, v] of (m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v;
    series.push({ name: m[1], labels, value: m[4] === '+Inf' ? Infinity : Number(m[4]) });
  }
  return series;
}

// --- A PromQL subset ------------------------------------------------------------

function parse(src) {
  const toks = src.match(/"(?:[^"\\]|\\.)*"|[a-zA-Z_:][a-zA-Z0-9_:]*|\d+(?:\.\d+)?[smh]?|[(){}\[\],=]/g);
  let i = 0;
  const peek = () => toks[i];
  const next = (want) => {
    const t = toks[i++];
    if (want !== undefined && t !== want) throw new Error(`expected ${want}, got ${t} in ${src}`);
    return t;
  };
  const labelsList = () => { const l = []; next('('); while (peek() !== ')') { l.push(next()); if (peek() === ',') next(); } next(')'); return l; };
  function expr() {
    const t = next();
    if (/^\d/.test(t)) return { num: Number(t) };
    if (t === 'sum' || t === 'min') {
      let by = null;
      if (peek() === 'by') { next(); by = labelsList(); }
      next('('); const e = expr(); next(')');
      return { agg: t, by, e };
    }
    if (t === 'rate' || t === 'increase') { next('('); const e = expr(); next(')'); return { fn: t, e }; }
    if (t === 'histogram_quantile') { next('('); const q = expr(); next(','); const e = expr(); next(')'); return { fn: t, q: q.num, e }; }
    const sel = { name: t, match: {} };
    if (peek() === '{') {
      next();
      while (peek() !== '}') { const k = next(); next('='); sel.match[k] = JSON.parse(next()); if (peek() === ',') next(); }
      next('}');
    }
    if (peek() === '[') {
      next(); const d = next(); next(']');
      sel.range = Number(d.slice(0, -1)) * { s: 1, m: 60, h: 3600 }[d.slice(-1)];
    }
    return sel;
  }
  const e = expr();
  if (i !== toks.length) throw new Error(`unparsed rest of ${src}`);
  return e;
}

const key = (labels) => JSON.stringify(Object.entries(labels).sort());

// The vector `e` gives at scrape `at`: [{labels, value}].
function evaluate(e, scrapes, at) {
  if (e.agg) {
    const groups = new Map();
    for (const s of evaluate(e.e, scrapes, at)) {
      const labels = Object.fromEntries((e.by ?? []).map((l) => [l, s.labels[l] ?? '']));
      const k = key(labels);
      const g = groups.get(k);
      if (!g) groups.set(k, { labels, value: s.value });
      else g.value = e.agg === 'sum' ? g.value + s.value : Math.min(g.value, s.value);
    }
    return [...groups.values()];
  }
  if (e.fn === 'rate' || e.fn === 'increase') {
    const sel = e.e;
    const now = scrapes[at];
    let from = at;
    while (from > 0 && now.t - scrapes[from - 1].t <= sel.range) from--;
    // Each series from its own first sample in the window, as Prometheus
    // does (a series that appeared during the run counts from there).
    const out = [];
    for (const s of select(sel, now)) {
      const k = key(s.labels);
      for (let j = from; j < at; j++) {
        const first = select(sel, scrapes[j]).find((x) => key(x.labels) === k);
        if (!first) continue;
        const d = Math.max(0, s.value - first.value);
        out.push({ labels: s.labels, value: e.fn === 'rate' ? d / (now.t - scrapes[j].t) : d });
        break;
      }
    }
    return out;
  }
  if (e.fn === 'histogram_quantile') {
    const buckets = evaluate(e.e, scrapes, at)
      .map((s) => ({ le: s.labels.le === '+Inf' ? Infinity : Number(s.labels.le), value: s.value }))
      .sort((a, b) => a.le - b.le);
    const total = buckets.at(-1)?.value ?? 0;
    if (!total) return [];
    const rank = e.q * total;
    let prevLe = 0, prevCount = 0;
    for (const b of buckets) {
      if (b.value >= rank) {
        if (b.le === Infinity) return [{ labels: {}, value: prevLe }];
        const frac = b.value === prevCount ? 0 : (rank - prevCount) / (b.value - prevCount);
        return [{ labels: {}, value: prevLe + (b.le - prevLe) * frac }];
      }
      prevLe = b.le; prevCount = b.value;
    }
    return [];
  }
  return select(e, scrapes[at]);
}

function select(sel, scrape) {
  return scrape.series
    .filter((s) => s.name === sel.name && Object.entries(sel.match).every(([k, v]) => s.labels[k] === v))
    .map((s) => ({ labels: s.labels, value: s.value }));
}

// --- Load on the demo --------------------------------------------------------------

const streams = new Set();
let lastIds = [];
async function stream(lastEventId) {
  const ctl = new AbortController();
  const entry = { ctl, lastId: null };
  streams.add(entry);
  try {
    const res = await fetch(`${base}/sse`, { signal: ctl.signal, headers: lastEventId ? { 'last-event-id': lastEventId } : {} });
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const frame = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        const id = /^id: (.*)$/m.exec(frame);
        if (id) entry.lastId = id[1];
      }
    }
  } catch (e) {
    if (e.name !== 'AbortError') throw e;
  } finally {
    streams.delete(entry);
  }
}
function form(path, fields) {
  return fetch(base + path, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(fields) });
}

// --- The run ----------------------------------------------------------------------

const scrapes = [];
const started = Date.now();
async function scrape() {
  const res = await fetch(`${base}/metrics`);
  if (res.status !== 200) throw new Error(`GET /metrics answered ${res.status}: is the demo built with --features metrics?`);
  scrapes.push({ t: (Date.now() - started) / 1000, series: parseScrape(await res.text()) });
}

for (let i = 0; i < 40; i++) stream();
await scrape();
let n = 0;
const publisher = setInterval(() => {
  n++;
  form('/toast', { scope: 'everyone', text: `load ${n}`, level: n % 5 ? 'info' : 'warning' });
  if (n % 3 === 0) form('/notes', { text: `note ${n}` });
}, 150);
for (let s = 1; s <= seconds; s++) {
  await new Promise((r) => setTimeout(r, 1000));
  if (s % 2 === 0) {
    // A page goes away and comes back with its last id: an exact resume.
    const [first] = streams;
    if (first?.lastId) { const id = first.lastId; first.ctl.abort(); stream(id); }
  }
  if (s === Math.floor(seconds / 2)) stream('not-an-id'); // a reset
  await scrape();
}
clearInterval(publisher);
for (const s of streams) s.ctl.abort();

// --- The page -------------------------------------------------------------------

const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#17becf'];
function fmt(v, unit) {
  if (!Number.isFinite(v)) return '–';
  const si = (x, suffix) => {
    for (const [d, p] of [[1e9, 'G'], [1e6, 'M'], [1e3, 'k']]) if (Math.abs(x) >= d) return `${(x / d).toFixed(1)} ${p}${suffix}`;
    return `${Number(x.toFixed(2))}${suffix ? ' ' + suffix : ''}`;
  };
  switch (unit) {
    case 's': return v < 1e-3 ? `${(v * 1e6).toFixed(0)} µs` : v < 1 ? `${(v * 1e3).toFixed(2)} ms` : `${v.toFixed(2)} s`;
    case 'bytes': return si(v, 'B');
    case 'Bps': return si(v, 'B/s');
    case 'ops': return si(v, '/s');
    default: return si(v, '');
  }
}
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
const legend = (fmtStr, labels) => (fmtStr || '').replace(/\{\{(\w+)\}\}/g, (_, l) => labels[l] ?? '');

const empty = [];
const cells = dashboard.panels.map((p) => {
  const unitFor = (refId) => p.fieldConfig?.overrides?.find((o) => o.matcher?.options === p.targets.find((t) => t.refId === refId)?.legendFormat)
    ?.properties?.find((x) => x.id === 'unit')?.value ?? p.fieldConfig?.defaults?.unit;
  const lines = [];
  for (const t of p.targets) {
    const ast = parse(t.expr);
    const byKey = new Map();
    scrapes.forEach((s, at) => {
      for (const v of evaluate(ast, scrapes, at)) {
        const name = legend(t.legendFormat, v.labels);
        if (!byKey.has(name)) byKey.set(name, { name, unit: unitFor(t.refId), points: [] });
        byKey.get(name).points.push([s.t, v.value]);
      }
    });
    lines.push(...byKey.values());
  }
  if (!lines.length) empty.push(p.title);
  const style = `grid-column:${p.gridPos.x + 1}/span ${p.gridPos.w};grid-row:${p.gridPos.y + 1}/span ${p.gridPos.h}`;
  if (p.type === 'stat') {
    const mapped = (v, unit) => p.fieldConfig?.defaults?.mappings?.find((m) => m.type === 'value')?.options?.[String(v)]?.text ?? fmt(v, unit);
    const values = lines.map((l) => `<div class="stat"><span>${esc(mapped(l.points.at(-1)?.[1], l.unit))}</span><small>${esc(l.name)}</small></div>`).join('');
    return `<section style="${style}"><h2>${esc(p.title)}</h2><div class="stats">${values || '<em>no data</em>'}</div></section>`;
  }
  const W = 560, H = 170, L = 64;
  const tmax = scrapes.at(-1).t;
  const vmax = Math.max(1e-9, ...lines.flatMap((l) => l.points.map(([, v]) => v)).filter(Number.isFinite));
  const unit = lines[0]?.unit ?? p.fieldConfig?.defaults?.unit;
  const xs = (t) => L + (t / tmax) * (W - L - 8);
  const ys = (v) => 8 + (1 - v / vmax) * (H - 28);
  const grid = [0, 0.5, 1].map((f) => `<line x1="${L}" x2="${W - 8}" y1="${ys(vmax * f)}" y2="${ys(vmax * f)}" class="grid"/><text x="${L - 6}" y="${ys(vmax * f) + 4}" text-anchor="end">${esc(fmt(vmax * f, unit))}</text>`).join('');
  const paths = lines.map((l, i) => `<polyline fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="2" points="${l.points.map(([t, v]) => `${xs(t).toFixed(1)},${ys(v).toFixed(1)}`).join(' ')}"/>`).join('');
  const keys = lines.map((l, i) => `<span><i style="background:${COLORS[i % COLORS.length]}"></i>${esc(l.name)} ${esc(fmt(l.points.at(-1)?.[1], l.unit))}</span>`).join('');
  return `<section style="${style}"><h2>${esc(p.title)}</h2><svg viewBox="0 0 ${W} ${H}">${grid}<text x="${W - 8}" y="${H - 4}" text-anchor="end">${tmax.toFixed(0)} s</text>${paths}</svg><div class="keys">${keys || '<em>no data</em>'}</div></section>`;
});

const html = `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>${esc(dashboard.title)}</title><style>
body{background:#111217;color:#ccccdc;font:13px system-ui,sans-serif;margin:12px}
header{display:flex;justify-content:space-between;align-items:baseline}h1{font-size:18px;margin:4px 0 10px}
main{display:grid;grid-template-columns:repeat(24,1fr);grid-auto-rows:30px;gap:8px}
section{background:#181b1f;border:1px solid #2c3235;border-radius:4px;padding:6px 8px;overflow:hidden}
h2{font-size:13px;font-weight:500;margin:0 0 4px}svg{width:100%;height:calc(100% - 44px)}
svg text{fill:#8e8e8e;font-size:10px}.grid{stroke:#2c3235}.stats{display:flex;gap:16px;align-items:baseline}
.stat span{font-size:26px;color:#73bf69;font-weight:500}.stat small{display:block;color:#8e8e8e}
.keys{display:flex;flex-wrap:wrap;gap:10px;font-size:11px}.keys i{display:inline-block;width:10px;height:3px;margin-right:4px;vertical-align:middle}
</style></head><body><header><h1>${esc(dashboard.title)}</h1><span>rendered from ${scrapes.length} scrapes of the demo under load, ${seconds} s (dashboards/htmx-sse.json, evaluated by scripts/dashboard.mjs; not Grafana)</span></header>
<main>${cells.join('\n')}</main></body></html>`;

mkdirSync(outDir, { recursive: true });
writeFileSync(join(outDir, 'dashboard.html'), html);
const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1150 } });
  await page.goto(`file://${join(outDir, 'dashboard.html')}`);
  await page.screenshot({ path: join(outDir, 'dashboard.png'), fullPage: true });
} finally {
  await browser.close();
}
if (empty.length) {
  console.error(`dashboard: no data for ${empty.join(', ')}`);
  process.exit(1);
}
console.log(`dashboard: ${dashboard.panels.length} panels from ${scrapes.length} scrapes in ${join(outDir, 'dashboard.html')} and dashboard.png`);
process.exit(0);
