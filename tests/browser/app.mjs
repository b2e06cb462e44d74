// Drives one application scenario for tests/browser/app.rs.
//
//   node tests/browser/app.mjs <scenario> <flavour> <base-url> <screenshot-dir>
//
// The server is a BroadcastManager under /sse (setup_broadcast_routes) and
// a Notifier under /notifications/{channel}, with a test layer:
//   GET  /lab/state    {generation, backend, resetOnRestart, count, registry,
//                       toastListeners, requests, notes, added}
//   POST /lab/publish?from=A&to=B[&cut_after=N][&gap_ms=M]  <li>n</li> as `num`
//   POST /lab/add?text=T       adds T to the list's database, broadcasts `item`
//   POST /lab/toast?text=T&level=L[&channel=C]   Notifier::send
//   POST /lab/cut              ends every open stream without the close event
//   POST /lab/release          lets the render-gap page's held stream request through
//   POST /lab/restart[?add=T][&publish=U]  a new server process (new manager) on
//                       the same port; T is written while no process runs (and,
//                       on Redis, broadcast by a second instance), U added by the
//                       new process before it serves
// Scenario `restart-redis` is `restart` on a server whose managers use Redis.
// Saves <screenshot-dir>/app-<scenario>-<flavour>.png (…-FAILED.png on
// failure). Exits 0 when every assertion held, 1 otherwise, 2 on misuse.

import { args, check, eq, run, server, sleep, texts, waitFor, waitOpen } from './harness.mjs';

const TOAST_MS = 1500; // as the toast page is configured (tests/browser/app.rs)
const PRESENCE_GRACE_MS = 1500; // the managers' presence grace (tests/browser/app.rs)
const HOSTILE = '<img src=x onerror="window.__pwned=1">';

const ARGS = args();
const { flavour } = ARGS;
const { call, state, serverWait } = server(ARGS.base);

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => String(from + i));

// The htmx events that mean a swap went wrong (a target id that does not
// exist, say): any of them fails the scenario.
const SWAP_ERRORS = ['htmx:swapError', 'htmx:targetError', 'htmx:oobErrorNoTarget',
  'htmx:partialErrorNoTarget', 'htmx:error'];

// Runs in every page before its scripts: records htmx's SSE and error
// events, the helpers' reset events, and how often the tab loaded a page.
function recorder(recorded) {
  const rec = { htmx: [], resets: [], loads: 0, toasts: [], badge: [] };
  window.__rec = rec;
  const t0 = performance.now();
  const t = () => Math.round(performance.now() - t0);
  try {
    rec.loads = Number(sessionStorage.getItem('htmx-sse-test-loads') || 0) + 1;
    sessionStorage.setItem('htmx-sse-test-loads', String(rec.loads));
  } catch (e) {
    rec.loads = -1;
  }
  document.addEventListener('htmx-sse:reset', (e) => rec.resets.push({ ...e.detail, t: t() }));
  // When each toast came and went, by the page's own clock.
  new MutationObserver((changes) => {
    // Every text the presence badge showed, in order.
    const badge = document.getElementById('viewers');
    if (badge && badge.textContent !== rec.badge[rec.badge.length - 1]) rec.badge.push(badge.textContent);
    for (const c of changes) {
      for (const [what, nodes] of [['added', c.addedNodes], ['removed', c.removedNodes]]) {
        for (const n of nodes) {
          if (n.nodeType === 1 && n.classList.contains('alert')) rec.toasts.push({ what, level: n.dataset.level, t: t() });
        }
      }
    }
  }).observe(document, { childList: true, subtree: true });
  for (const type of recorded) {
    document.addEventListener(type, (e) => {
      const d = e.detail || {};
      const err = d.error ? String(d.error.message || d.error) : undefined;
      // htmx 2 follows every error event with htmx:error; errorInfo.error
      // names it (htmx:targetError …), except for htmx:sseError, whose
      // errorInfo carries the failed source instead.
      const info = d.errorInfo;
      const cause = !info ? undefined
        : typeof info.error === 'string' ? info.error : info.source ? 'htmx:sseError' : 'unknown';
      rec.htmx.push({ type, t: t(), target: e.target && e.target.id, error: err, cause });
    }, true);
  }
}

const RECORDED = ['htmx:sseOpen', 'htmx:sseError', 'htmx:sseClose', 'htmx:sse:after:connection',
  'htmx:sse:error', 'htmx:sse:close', ...SWAP_ERRORS];

const qs = (o) => new URLSearchParams(o).toString();

// --- Looking at pages ----------------------------------------------------------

// Waits until `selector` matches at least as many elements as `want`, lets
// anything late or doubled arrive, then requires exactly `want`.
async function waitTexts(page, selector, want, what, { settle = 300 } = {}) {
  await waitFor(page, ([s, n]) => document.querySelectorAll(s).length >= n, [selector, want.length],
    `${what} to hold ${JSON.stringify(want)}`, { state: () => texts(page, selector) });
  await sleep(settle);
  eq(await texts(page, selector), want, what);
}

// --- 1. Toasts -------------------------------------------------------------------

async function toasts({ open, shoot }) {
  const page = await open();
  await serverWait((s) => s.toastListeners === 1, 'the toast container to listen on channel ops');
  const alerts = '.htmx-sse-toasts .alert';
  const read = () => page.evaluate((sel) => [...document.querySelectorAll(sel)].map((a) => ({
    text: a.textContent,
    level: a.dataset.level,
    role: a.getAttribute('role'),
    // without the classes htmx adds while it settles
    class: [...a.classList].filter((c) => !c.startsWith('htmx-')).join(' '),
  })), alerts);

  const nobody = await call('POST', `/lab/toast?${qs({ text: 'nobody hears this', level: 'info', channel: 'elsewhere' })}`);
  eq(nobody.reached, 0, 'pages reached on a channel nobody listens to');

  const sent = await call('POST', `/lab/toast?${qs({ text: HOSTILE, level: 'success' })}`);
  eq(sent.reached, 1, 'pages the first toast reached');
  await waitFor(page, (s) => document.querySelectorAll(s).length === 1, alerts, 'the first toast', { state: read });
  eq(await read(), [{ text: `Success: ${HOSTILE}`, level: 'success', role: 'status', class: 'alert alert-success' }],
    'the toast (its text escaped)');
  check(await page.locator(alerts).first().isVisible(), 'the toast is not visible');

  const urgent = await call('POST', `/lab/toast?${qs({ text: 'Disk full', level: 'error' })}`);
  eq(urgent.reached, 1, 'pages the second toast reached');
  await waitFor(page, (s) => document.querySelectorAll(s).length === 2, alerts, 'the second toast', { state: read });
  eq((await read())[1], { text: 'Error: Disk full', level: 'error', role: 'alert', class: 'alert alert-error' },
    'the second toast');
  await shoot(page, 'visible');

  // The two leave ~125 ms apart: too close to watch from here on a busy
  // machine, so the order is read from what the page recorded.
  await waitFor(page, (s) => document.querySelectorAll(s).length === 0, alerts, 'both toasts to go',
    { timeout: TOAST_MS + 3000, state: read });
  const seen = await page.evaluate(() => window.__rec.toasts);
  eq(seen.map((x) => `${x.what} ${x.level}`), ['added success', 'added error', 'removed success', 'removed error'],
    'toasts added and removed, in order');
  const lasted = (level) => seen.find((x) => x.what === 'removed' && x.level === level).t
    - seen.find((x) => x.what === 'added' && x.level === level).t;
  const [firstLasted, secondLasted] = [lasted('success'), lasted('error')];
  for (const [which, ms] of [['first', firstLasted], ['second', secondLasted]]) {
    // A timer never fires early; a busy machine may make it late.
    check(ms >= TOAST_MS - 20 && ms <= TOAST_MS + 1500,
      `the ${which} toast stayed ${ms} ms; it should stay ${TOAST_MS} ms`);
  }
  eq(await page.evaluate(() => typeof window.__pwned), 'undefined', 'typeof window.__pwned');
  eq(await page.evaluate(() => document.querySelectorAll('img').length), 0, '<img> elements on the page');
  console.log(`toasts stayed ${firstLasted} and ${secondLasted} ms (dismiss after ${TOAST_MS} ms)`);
  return page;
}

// --- 2. Two tabs in sync ---------------------------------------------------------

async function tabSync({ open }) {
  const tabs = [await open(), await open()];
  const ids = [];
  for (const [i, p] of tabs.entries()) {
    await waitFor(p, () => !!document.querySelector('#note-form input[name=connection_id]')?.value, undefined,
      `tab ${i}: the connection id in the form`, { state: () => p.evaluate(() => document.querySelector('#note-form').outerHTML) });
    ids.push(await p.evaluate(() => document.querySelector('#note-form input[name=connection_id]').value));
  }
  check(ids[0] !== ids[1], `both tabs have connection id ${ids[0]}`);
  await serverWait((s) => s.count === 2, 'two connections');
  const notes = (p) => texts(p, '#notes > li');

  const post = async (p, text) => {
    await p.fill('#note-form input[name=text]', text);
    await p.click('#note-form button');
  };
  await post(tabs[0], 'from A');
  // Tab A shows its note from the hx-post answer, tab B from the broadcast.
  await waitTexts(tabs[1], '#notes > li', ['from A'], 'tab B', { settle: 0 });
  await waitTexts(tabs[0], '#notes > li', ['from A'], 'tab A (no echo of its own note)', { settle: 500 });
  eq(await notes(tabs[1]), ['from A'], 'tab B');

  await post(tabs[1], 'from B');
  await waitTexts(tabs[0], '#notes > li', ['from A', 'from B'], 'tab A', { settle: 0 });
  await waitTexts(tabs[1], '#notes > li', ['from A', 'from B'], 'tab B (no echo of its own note)', { settle: 500 });
  eq(await notes(tabs[0]), ['from A', 'from B'], 'tab A');

  const s = await state();
  eq(s.notes.map((n) => [n.text, n.from, n.delivered]), [['from A', ids[0], 1], ['from B', ids[1], 1]],
    'what the server broadcast: [text, excluded connection, connections reached]');
  return tabs[0];
}

// --- 3. A cut while the server keeps publishing ------------------------------------

async function cut({ open }) {
  const page = await open();
  await waitOpen(page, flavour);
  await serverWait((s) => s.count === 1 && s.requests.length === 1, 'the page to connect');
  const publish = (q) => call('POST', `/lab/publish?${qs(q)}`);
  const log = '#log > li';
  const timings = [];

  await publish({ from: 1, to: 10, gap_ms: 10 });
  await waitTexts(page, log, range(1, 10), 'the log', { settle: 0 });

  let cutAt = Date.now();
  const first = await publish({ from: 11, to: 30, cut_after: 15, gap_ms: 40 });
  await serverWait((s) => s.requests.length === 2 && s.count === 1, 'the page to reconnect after the first cut');
  timings.push(Date.now() - cutAt);

  cutAt = Date.now();
  const second = await publish({ from: 31, to: 50, cut_after: 40, gap_ms: 40 });
  await serverWait((s) => s.requests.length === 3 && s.count === 1, 'the page to reconnect after the second cut');
  timings.push(Date.now() - cutAt);

  await publish({ from: 51, to: 60, gap_ms: 10 });
  await waitTexts(page, log, range(1, 60), 'the log: every message once, in order', { settle: 500 });

  // Published while the page was away: queued for no connection, caught up
  // from the history through Last-Event-ID.
  check(first.delivered.slice(5).includes(0) && second.delivered.slice(10).includes(0),
    `no message was published while the page was away: ${JSON.stringify([first.delivered, second.delivered])}`);
  const s = await state();
  eq(s.requests.map((r) => !!r.header), [false, true, true], 'stream requests with a Last-Event-ID header');
  check(s.requests[1].header !== s.requests[2].header, `both reconnections sent ${s.requests[1].header}`);
  console.log(`reconnected (by the ${flavour === 'htmx2' ? 'browser\'s EventSource' : 'hx-sse extension'}) `
    + `within ${timings.join(' and ')} ms of the publishing that cut; delivered per message: `
    + `${JSON.stringify(first.delivered)} ${JSON.stringify(second.delivered)}`);
  return page;
}

// --- 4. A restarted server ---------------------------------------------------------

// In memory the new process has a new epoch and an empty history: the page
// gets `reset` and fetches its list again, which shows m3 (written while
// down). On Redis the history is shared: m3, broadcast by a second instance
// while the process is down, and m4, by the new process before it serves,
// reach the page by resuming from its Last-Event-ID, without a reset.
async function restart({ open }) {
  const page = await open();
  await waitOpen(page, flavour);
  const items = (want, what) => waitTexts(page, '#items > li', want, what, { settle: 0 });
  const gen = () => page.evaluate(() => document.getElementById('gen').textContent);
  await waitFor(page, () => document.getElementById('gen').textContent === '1', undefined,
    'the page to show server process 1');
  await items(['m0'], 'the list as loaded');
  const s1 = await serverWait((s) => s.count === 1, 'the page to connect');
  eq(s1.generation, 1, 'server process');
  for (const m of ['m1', 'm2']) eq((await call('POST', `/lab/add?text=${m}`)).delivered, 1, `connections ${m} reached`);
  await items(['m0', 'm1', 'm2'], 'the list with two live items');

  const want = s1.resetOnRestart;
  const restartAt = Date.now();
  await call('POST', `/lab/restart?${qs(want ? { add: 'm3' } : { add: 'm3', publish: 'm4' })}`);
  await serverWait((s) => s.generation === 2 && s.count === 1, 'a new server process, and the page connected to it');
  const reconnected = Date.now() - restartAt;
  let live;
  if (want) {
    // m3 is written while no process runs: only a reload of the list shows it.
    await waitFor(page, () => window.__rec.resets.length > 0, undefined, 'the htmx-sse:reset event',
      { state: () => page.evaluate(() => window.__rec) });
    await waitFor(page, () => document.getElementById('gen').textContent === '2', undefined,
      'the page to show server process 2 (fetched again on reset)');
    await items(['m0', 'm1', 'm2', 'm3'], 'the list fetched again on reset');
    live = 'm4';
  } else {
    // Caught up from the shared history: appended by the page's own swaps.
    await items(['m0', 'm1', 'm2', 'm3', 'm4'], 'the list caught up from the Redis history');
    live = 'm5';
  }
  eq(await page.evaluate(() => window.__rec.resets.map((r) => r.reason)), want ? [want] : [],
    `reasons of the reset events (${s1.backend} backend)`);
  eq((await call('POST', `/lab/add?text=${live}`)).delivered, 1, `connections ${live} reached`);
  const all = range(0, Number(live.slice(1))).map((n) => `m${n}`);
  await items(all, 'the list after the restart');
  await sleep(300);
  eq(await texts(page, '#items > li'), all, 'the list, settled');
  eq(await page.evaluate(() => window.__rec.resets.length), want ? 1 : 0, 'reset events, settled');
  // Without a reset nothing fetched the regions again.
  eq(await gen(), want ? '2' : '1', 'the server process the page shows');
  eq(await page.evaluate(() => window.__rec.loads), 1, 'page loads in the tab (the reset reloaded regions, not the page)');
  const s = await state();
  if (!want) {
    eq(s.added.map((a) => [a.text, a.by, a.delivered]),
      [['m1', 'process 1', 1], ['m2', 'process 1', 1], ['m3', 'second instance', 0], ['m4', 'process 2', 0],
        ['m5', 'process 2', 1]],
      'items published: [text, by, connections reached]');
  }
  console.log(`${s.backend} backend: new process and the page connected to it ${reconnected} ms after the restart `
    + `request; stream requests: ${JSON.stringify(s.requests)}; items: ${JSON.stringify(s.added)}`);
  return page;
}

// --- 5. A closed tab leaves the registry --------------------------------------------

async function tabClose({ open }) {
  const a = await open();
  const b = await open();
  await waitOpen(a, flavour);
  await waitOpen(b, flavour);
  await serverWait((s) => s.count === 2 && s.registry === 2, 'two connections in the registry');
  const closedAt = Date.now();
  await b.close();
  const s = await serverWait((x) => x.count === 1 && x.registry === 1,
    'the closed tab\'s connection to leave the registry', { timeout: 5000 });
  const gone = Date.now() - closedAt;
  eq(s.requests.length, 2, 'stream requests (no tab reconnected)');
  const sent = await call('POST', '/sse/broadcast', { type: 'chat', data: '<li>m1</li>' });
  eq(sent.delivered, 1, 'connections a broadcast reaches after the tab closed');
  await waitTexts(a, '#log > li', ['m1'], 'the log of the tab left open');
  console.log(`the registry dropped to 1 connection ${gone} ms after the tab closed`);
  return a;
}

// --- 6. Published between the render and the connect ----------------------------

// The page is rendered at the manager's resume point; the server holds its
// stream request while 1..3 are published (queued for no connection); once
// let through, the stream replays them from the point in its URL, and
// what follows arrives live: every message once, in order, no reset.
async function renderGap({ open }) {
  const page = await open();
  await serverWait((s) => s.requests.length === 1, 'the stream request (held by the test)');
  const before = await call('POST', '/lab/publish?from=1&to=3');
  eq(before.delivered, [0, 0, 0], 'connections 1..3 were queued for while the stream was held');
  await call('POST', '/lab/release');
  await waitOpen(page, flavour);
  await waitTexts(page, '#log > li', range(1, 3), 'what was published before the stream opened', { settle: 0 });
  await call('POST', '/lab/publish?from=4&to=5');
  await waitTexts(page, '#log > li', range(1, 5), 'every message once, in order', { settle: 500 });
  const s = await state();
  check(/[?&]resumeFrom=[0-9a-f]{8}-0(&|$)/.test(s.requests[0].uri), `the stream URL carries the render point: ${s.requests[0].uri}`);
  eq(s.requests.length, 1, 'stream requests');
  eq(await page.evaluate(() => window.__rec.resets.length), 0, 'reset events');
  return page;
}

// --- 7. A presence badge -------------------------------------------------------------

// The badge (`presence_badge` of everyone's connections, `<b>N</b>` in
// #viewers) counts the tabs 1, 2, 3; a tab reloaded within the grace comes
// back showing 3 and no tab ever shows anything else meanwhile; as tabs
// close, the others show 2, then 1. Every tab's whole history of badge
// texts is checked: no flicker.
async function presence({ open }) {
  const badge = (p) => p.evaluate(() => document.getElementById('viewers').textContent);
  const waitBadge = (p, n, what) => waitFor(p, (want) => document.getElementById('viewers').textContent === want,
    n, `${what} to show ${n}`, { state: () => badge(p) });
  const tabs = [];
  for (const n of ['1', '2', '3']) {
    const tab = await open();
    tabs.push(tab);
    await waitOpen(tab, flavour);
    for (const [i, t] of tabs.entries()) await waitBadge(t, n, `tab ${i}`);
  }
  const [a, b, c] = tabs;
  const reloadedAt = Date.now();
  await c.reload({ waitUntil: 'load' });
  await waitOpen(c, flavour);
  eq(await badge(c), '3', 'the reloaded tab, rendered by the server within the grace');
  // Longer than the grace after the reload: nothing changed anywhere.
  await sleep(Math.max(0, PRESENCE_GRACE_MS + 700 - (Date.now() - reloadedAt)));
  for (const [i, t] of tabs.entries()) eq(await badge(t), '3', `tab ${i} after the reload and the grace`);
  eq((await state()).badge, '<b class="count">3</b>', 'the badge on the server');
  eq(await c.evaluate(() => window.__rec.badge), ['3'], 'every text the reloaded tab showed');
  await c.close();
  await waitBadge(a, '2', 'tab 0');
  await waitBadge(b, '2', 'tab 1');
  await sleep(300);
  eq(await b.evaluate(() => window.__rec.badge), ['1', '2', '3', '2'], 'every text tab 1 showed');
  await b.close();
  await waitBadge(a, '1', 'tab 0');
  await sleep(300);
  eq(await a.evaluate(() => window.__rec.badge), ['0', '1', '2', '3', '2', '1'], 'every text tab 0 showed');
  console.log(`the reloaded tab came back within ${PRESENCE_GRACE_MS} ms with no leave and no join`);
  return a;
}

const SCENARIOS = { toasts, 'tab-sync': tabSync, cut, restart, 'restart-redis': restart, 'tab-close': tabClose, 'render-gap': renderGap, presence };

await run(ARGS, {
  name: `app-${ARGS.scenario}-${flavour}`,
  scenarios: SCENARIOS,
  recorder,
  recorderArg: RECORDED,
  async verify(pages) {
    for (const [i, p] of pages.entries()) {
      if (p.isClosed()) continue;
      // A lost connection is no swap error (htmx 2 reports it as
      // htmx:sseError, then htmx:error).
      const bad = (await p.evaluate(() => window.__rec.htmx))
        .filter((e) => SWAP_ERRORS.includes(e.type) && e.cause !== 'htmx:sseError');
      eq(bad, [], `tab ${i}: htmx swap error events`);
    }
  },
  serverState: state,
});
