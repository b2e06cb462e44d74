// Drives the "strings are text" scenario for tests/browser/xss.rs.
//
//   node tests/browser/xss.mjs entry-points <flavour> <base-url> <screenshot-dir>
//
// The server mounts, with nothing trusted, a BroadcastManager under /sse
// (BroadcastRoutes) and at /hub (TopicRoutes), and a Notifier at
// /notifications/{channel}; the page has a broadcast stream swapping type
// `xss` into #feed-log, a topic stream (#topic-log) and a toast container.
// The test layer:
//   GET  /lab/state    {count, userConnections, topicSubscribers, toastListeners}
//   POST /lab/publish?via=V&text=T[&connection=ID]   publishes T from Rust
//        through V (broadcast, send_to, send_to_user, message, topics,
//        notifier, notifier-all); `trusted` and `trusted-topic` publish the
//        server's own Fragment::trusted HTML (the positive controls)
// Saves <screenshot-dir>/xss-entry-points-<flavour>.png (…-FAILED.png on
// failure). Exits 0 when every assertion held, 1 otherwise, 2 on misuse.

import { args, check, eq, run, server, sleep, waitFor } from './harness.mjs';

const ARGS = args();
const { flavour } = ARGS;
const { call, state, serverWait } = server(ARGS.base);

// What a user typed: an image whose error handler runs, and a script, each
// recording in window.__pwned which entry point let it run.
const hostile = (via) => `[${via}] <img src=x onerror="(window.__pwned||=[]).push('${via} img')">`
  + `<script>(window.__pwned||=[]).push('${via} script')</script>`;

const TOPIC = 'xss/room';
const REGIONS = { feed: '#feed-log', topic: '#topic-log', toasts: '.htmx-sse-toasts' };

// Every entry point: where the page shows it, how it is published, and how
// many connections it must reach (the topic stream is a connection of the
// same manager, so messages for everyone reach it too, as a type it does
// not swap).
const ENTRY_POINTS = [
  { via: 'broadcast', region: 'feed', delivered: 2 },
  { via: 'send_to', region: 'feed', delivered: 1 },
  { via: 'send_to_user', region: 'feed', delivered: 1 },
  { via: 'message', region: 'feed', delivered: 2 },
  { via: 'topics', region: 'topic', delivered: 1 },
  { via: 'notifier', region: 'toasts', delivered: 1 },
  { via: 'notifier-all', region: 'toasts', delivered: 1 },
  { via: 'POST /sse/broadcast', region: 'feed', delivered: 2, http: () => ['/sse/broadcast', { type: 'xss' }] },
  { via: 'POST /sse/send/{id}', region: 'feed', delivered: 1, http: (cid) => [`/sse/send/${cid}`, { type: 'xss' }] },
  { via: 'POST /hub', region: 'topic', delivered: 1, http: () => ['/hub', { topics: [TOPIC] }] },
];

// The htmx events that mean a swap went wrong: any of them fails the run.
const SWAP_ERRORS = ['htmx:swapError', 'htmx:targetError', 'htmx:oobErrorNoTarget',
  'htmx:partialErrorNoTarget', 'htmx:error'];

// Runs in the page before its scripts: records htmx's SSE and error events
// and, once the page has loaded, every element added anywhere, with the
// region it went into.
function recorder(recorded) {
  const rec = { htmx: [], added: [], scriptsAtLoad: -1, loaded: false };
  window.__rec = rec;
  const t0 = performance.now();
  const t = () => Math.round(performance.now() - t0);
  document.addEventListener('DOMContentLoaded', () => {
    rec.scriptsAtLoad = document.scripts.length;
    rec.loaded = true;
  });
  new MutationObserver((changes) => {
    if (!rec.loaded) return;
    for (const c of changes) {
      for (const n of c.addedNodes) {
        if (n.nodeType !== 1) continue;
        // The element with an id it went into (null: outside the page's
        // regions, as htmx 4's own scratch elements are).
        const region = n.parentElement && n.parentElement.closest('[id]');
        const into = region ? region.id : null;
        for (const e of [n, ...n.querySelectorAll('*')]) rec.added.push({ tag: e.tagName.toLowerCase(), into, t: t() });
      }
    }
  }).observe(document, { childList: true, subtree: true });
  for (const type of recorded) {
    document.addEventListener(type, (e) => {
      const d = e.detail || {};
      const info = d.errorInfo;
      const cause = !info ? undefined
        : typeof info.error === 'string' ? info.error : info.source ? 'htmx:sseError' : 'unknown';
      rec.htmx.push({ type, t: t(), target: e.target && e.target.id, cause });
    }, true);
  }
}

const RECORDED = ['htmx:sseOpen', 'htmx:sseError', 'htmx:sse:after:connection', 'htmx:sse:error',
  ...SWAP_ERRORS];

const qs = (o) => new URLSearchParams(o).toString();

// What ran or was made from the published strings: window.__pwned, <img>
// and <script> elements added after load (even if removed again), and
// those in the regions now.
const damage = (page) => page.evaluate((regions) => ({
  pwned: window.__pwned === undefined ? null : window.__pwned,
  addedAfterLoad: window.__rec.added.filter((a) => a.tag === 'img' || a.tag === 'script'),
  inRegions: Object.fromEntries(Object.entries(regions)
    .map(([k, sel]) => [k, [...document.querySelectorAll(`${sel} img, ${sel} script`)].map((e) => e.outerHTML)])),
  images: document.images.length,
  newScripts: document.scripts.length - window.__rec.scriptsAtLoad,
}), REGIONS);

const regionText = (page, region) => page.evaluate((s) => document.querySelector(s)?.textContent ?? null, REGIONS[region]);

async function entryPoints({ open }) {
  const page = await open();
  await page.setViewportSize({ width: 1000, height: 520 });
  // The broadcast stream (with its user) and the topic stream on the
  // manager, and the toast container on the notifier.
  await serverWait((s) => s.count === 2 && s.userConnections === 1 && s.topicSubscribers === 1
    && s.toastListeners === 1, 'the page\'s three streams');
  await waitFor(page, () => !!document.querySelector('#cid input[name=connection_id]')?.value, undefined,
    'the broadcast stream\'s connection id', { state: () => page.evaluate(() => document.getElementById('feed').outerHTML) });
  const cid = await page.evaluate(() => document.querySelector('#cid input[name=connection_id]').value);

  const started = Date.now();
  const reached = {};
  for (const e of ENTRY_POINTS) {
    const text = hostile(e.via);
    let answer;
    if (e.http) {
      const [path, body] = e.http(cid);
      answer = await call('POST', path, { ...body, data: `${text}\n` });
    } else {
      answer = await call('POST', `/lab/publish?${qs({ via: e.via, text: `${text}\n`, connection: cid })}`);
    }
    reached[e.via] = answer.delivered;
  }
  for (const via of ['trusted', 'trusted-topic']) reached[via] = (await call('POST', `/lab/publish?via=${via}`)).delivered;
  eq(reached, { ...Object.fromEntries(ENTRY_POINTS.map((e) => [e.via, e.delivered])), trusted: 2, 'trusted-topic': 1 },
    'connections each publish reached');

  // Each marker in its region (whether as text or around markup), and the
  // positive controls.
  await waitFor(page, ([entries, regions]) => entries.every((e) =>
    (document.querySelector(regions[e.region])?.textContent || '').includes(`[${e.via}]`))
    && !!document.querySelector('#feed-log > b#ok') && !!document.querySelector('#topic-log > b#ok-topic'),
  [ENTRY_POINTS.map(({ via, region }) => ({ via, region })), REGIONS], 'every published message in its region',
  { state: () => page.evaluate((r) => Object.fromEntries(Object.entries(r)
    .map(([k, s]) => [k, document.querySelector(s)?.innerHTML])), REGIONS) });
  const shown = Date.now() - started;
  // Long enough for <img src=x> to fail to load and run its handler.
  await sleep(500);

  eq(await damage(page), { pwned: null, addedAfterLoad: [], inRegions: { feed: [], topic: [], toasts: [] }, images: 0, newScripts: 0 },
    'what ran, or was made, from the published strings (window.__pwned, <img>/<script> elements)');

  for (const e of ENTRY_POINTS) {
    const text = await regionText(page, e.region);
    const want = hostile(e.via);
    const times = text.split(want).length - 1;
    check(times === 1, `${e.via}: the ${e.region} region shows the string as text ${times} times, not once;`
      + ` want ${JSON.stringify(want)}; the region reads ${JSON.stringify(text)}`);
    check(text.includes('<img src=x onerror=') && text.includes('<script>'), `${e.region}: no literal markup in its text`);
  }
  const toasts = await page.evaluate((s) => [...document.querySelectorAll(`${s} .alert`)].map((a) => a.textContent.trim()), REGIONS.toasts);
  eq(toasts, [`Warning: ${hostile('notifier')}`, `Warning: ${hostile('notifier-all')}`], 'the toasts');

  // The positive controls: the same path, with HTML the server vouches for.
  eq(await page.evaluate(() => [...document.querySelectorAll('#feed-log > b, #topic-log > b')]
    .map((b) => `${b.id}: ${b.textContent}`)), ['ok: bold', 'ok-topic: bold topic'], 'trusted HTML as elements');
  for (const sel of ['#ok', '#ok-topic']) check(await page.locator(sel).isVisible(), `${sel} is not visible`);

  console.log(`${ENTRY_POINTS.length} entry points and 2 trusted controls published and shown within ${shown} ms; `
    + `reached: ${JSON.stringify(reached)}`);
  return page;
}

await run(ARGS, {
  name: `xss-${ARGS.scenario}-${flavour}`,
  scenarios: { 'entry-points': entryPoints },
  recorder,
  recorderArg: RECORDED,
  async verify(pages) {
    for (const [i, p] of pages.entries()) {
      const bad = (await p.evaluate(() => window.__rec.htmx))
        .filter((e) => SWAP_ERRORS.includes(e.type) && e.cause !== 'htmx:sseError');
      eq(bad, [], `tab ${i}: htmx swap error events`);
    }
  },
  report: async (page) => console.log(`recorded in the page: ${JSON.stringify(await page.evaluate(() => ({
    htmx: window.__rec.htmx, added: window.__rec.added.map((a) => `${a.tag}→${a.into}`).join(' '),
  })))}`),
  serverState: state,
});
