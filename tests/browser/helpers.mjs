// Drives one scenario of the browser-side helpers for tests/browser/helpers.rs.
//
//   node tests/browser/helpers.mjs <scenario> <flavour> <base-url> <screenshot-dir>
//
// The server is a BroadcastManager under /sse (setup_broadcast_routes) with
// a test layer: GET /lab/state ({count, requests, statusPolls}),
// POST /lab/cut (ends every open stream without the close event),
// POST /lab/refuse?n=K (the next K stream requests get a 500).
// Messages are published through the crate's own POST /sse/broadcast.
// Saves <screenshot-dir>/helpers-<scenario>-<flavour>.png (…-FAILED.png on
// failure). Exits 0 when every assertion held, 1 otherwise, 2 on misuse.

import { args, check, eq, run, server, sleep, waitFor, waitOpen } from './harness.mjs';

const MAX_RETRIES = 3; // as the pages are configured (tests/browser/helpers.rs)
const PWN = {
  status: '</script><script>window.__pwned=1</script>',
  monitor: '</script><script>window.__pwned=2</script>',
  attr: '"><script>window.__pwned=4</script>',
};

const ARGS = args();
const { flavour, base } = ARGS;
const { call, state, serverWait } = server(base);

// Runs in every page before its scripts: records the helpers' status
// events, htmx's SSE events, and page shows, in window.__rec.
function recorder() {
  const rec = { status: [], htmx: [], shows: [] };
  window.__rec = rec;
  const t0 = performance.now();
  const t = () => Math.round(performance.now() - t0);
  document.addEventListener('htmx-sse:status', (e) => {
    const { state, attempt, url, reason } = e.detail;
    rec.status.push({ state, attempt, t: t(), url, reason });
  });
  for (const type of ['htmx:sseOpen', 'htmx:sseError', 'htmx:sseClose', 'htmx:sse:after:connection',
    'htmx:sse:error', 'htmx:sse:close', 'htmx:swapError', 'htmx:targetError', 'htmx:oobErrorNoTarget',
    'htmx:error']) {
    document.addEventListener(type, () => rec.htmx.push({ type, t: t() }), true);
  }
  window.addEventListener('pageshow', (e) => rec.shows.push({ persisted: e.persisted, t: t() }));
}

// --- Talking to the server ---------------------------------------------------

const publish = (type, text) => call('POST', '/sse/broadcast', { type, data: `<li>${text}</li>` });

// --- Looking at pages ----------------------------------------------------------

const log = (page) => page.evaluate(() => [...document.querySelectorAll('#log > li')].map((e) => e.textContent));
const statusTrail = (page) => page.evaluate(() => window.__rec.status.map((s) => `${s.state}:${s.attempt}`));

async function waitLog(page, want, what = 'the log', { settle = 250 } = {}) {
  await waitFor(page, (n) => document.querySelectorAll('#log > li').length >= n, want.length,
    `${what} to hold ${JSON.stringify(want)}`, { state: () => log(page) });
  await sleep(settle); // anything late or doubled would show up now
  eq(await log(page), want, what);
}

// The same for several tabs, with one pause for late or doubled messages.
async function waitLogs(pages, want, what) {
  for (const [i, p] of pages.entries()) await waitLog(p, want, `${what} (tab ${i})`, { settle: 0 });
  await sleep(250);
  for (const [i, p] of pages.entries()) eq(await log(p), want, `${what} (tab ${i})`);
}

// The state the status element shows.
async function waitStatus(page, want, id = 'status') {
  await waitFor(page, ([i, w]) => document.getElementById(i)?.dataset.state === w, [id, want],
    `the status element to say ${want}`, { state: () => statusTrail(page) });
  eq(await page.evaluate((i) => document.getElementById(i).textContent, id), want, 'the status text');
}

// --- The scenarios -------------------------------------------------------------

// The stream is cut while messages keep coming, and the first two attempts
// to come back are refused: the page must end up with every message once,
// in order, its status having gone reconnecting → open.
async function reconnect({ open }) {
  const page = await open();
  await waitStatus(page, 'open');
  await publish('chat', 'm1');
  await waitLog(page, ['m1']);
  await call('POST', '/lab/refuse?n=2');
  await call('POST', '/lab/cut');
  for (const m of ['m2', 'm3', 'm4']) await publish('chat', m);
  await serverWait((s) => s.requests.length === 4 && s.count === 1, 'the page to come back (4 stream requests, 1 open)');
  await waitLog(page, ['m1', 'm2', 'm3', 'm4']);
  await waitStatus(page, 'open');
  eq(await statusTrail(page),
    ['connecting:0', 'open:0', 'reconnecting:1', 'reconnecting:2', 'reconnecting:3', 'open:0'],
    'the status trail (state:attempt)');
  await publish('chat', 'm5');
  await waitLog(page, ['m1', 'm2', 'm3', 'm4', 'm5']);
  const s = await state();
  eq(s.requests.map((r) => r.status), [200, 500, 500, 200], 'stream answers');
  // Every retry asked to resume: by the runtime's cookie (htmx 2, never in
  // the URL, where access logs keep it) or the header (htmx 4).
  for (const r of s.requests.slice(1)) {
    check(flavour === 'htmx2' ? !!r.cookie && !/lastEventId/.test(r.uri) : !!r.header,
      `a retry without its last event id: ${JSON.stringify(r)}`);
  }
  console.log(`stream requests: ${JSON.stringify(s.requests)}`);
  return page;
}

// Refused for good: `failed` after exactly MAX_RETRIES retries, then nothing.
async function retryLimit({ open }) {
  const page = await open();
  await waitStatus(page, 'open');
  await call('POST', '/lab/refuse?n=1000');
  const cutAt = Date.now();
  await call('POST', '/lab/cut');
  await waitStatus(page, 'failed');
  const failedAfter = Date.now() - cutAt;
  const s1 = await state();
  // The next attempt would have come 1.6 s after the last one.
  await sleep(2500);
  const s2 = await state();
  eq(s2.requests.length, s1.requests.length, 'stream requests after `failed` (none may follow)');
  eq(s2.requests.map((r) => r.status), [200, ...Array(MAX_RETRIES).fill(500)], 'stream answers');
  const trail = await statusTrail(page);
  eq(trail, ['connecting:0', 'open:0', 'reconnecting:1', 'reconnecting:2', 'reconnecting:3', `failed:${MAX_RETRIES}`],
    'the status trail (state:attempt)');
  console.log(`failed ${failedAfter} ms after the cut`);
  return page;
}

// Away to another page and back through the back/forward cache.
async function unload({ open }) {
  const page = await open();
  await waitStatus(page, 'open');
  await publish('chat', 'm1');
  await waitLog(page, ['m1']);
  await page.goto(base + '/other', { waitUntil: 'load' });
  await serverWait((s) => s.count === 0, 'the server to see the connection end after pagehide');
  const away = await publish('chat', 'm2');
  eq(away.delivered, 0, 'connections that m2 was queued for while the page was away');
  await page.goBack({ waitUntil: 'commit' });
  await waitFor(page, () => window.__rec && window.__rec.shows.some((s) => s.persisted), undefined,
    'the page to come back from the back/forward cache (pageshow with persisted)');
  await waitLog(page, ['m1', 'm2'], 'the log after coming back (m2 caught up)');
  await serverWait((s) => s.count === 1, 'one connection again');
  await publish('chat', 'm3');
  await waitLog(page, ['m1', 'm2', 'm3']);
  await waitStatus(page, 'open');
  const s = await state();
  eq([s.count, s.requests.length], [1, 2], '[open connections, stream requests]');
  eq(await page.evaluate(() => window.__rec.shows.map((s) => s.persisted)), [false, true], 'pageshow persisted flags');
  console.log(`status trail: ${JSON.stringify(await statusTrail(page))}`);
  return page;
}

// Ten tabs, one stream; the leader goes and another takes over. Without
// Web Locks (`locks: false`, four tabs) the tabs elect over the channel.
async function shared({ open }, { tabs = 10, locks = true } = {}) {
  const pages = [];
  for (let i = 0; i < tabs; i++) {
    const p = await open(locks ? undefined : () => { delete Navigator.prototype.locks; });
    await waitStatus(p, 'open');
    pages.push(p);
  }
  eq(await pages[0].evaluate(() => 'locks' in navigator), locks, 'Web Locks available');
  let s = await serverWait((x) => x.count === 1, `one connection for ${tabs} tabs`);
  eq(s.requests.length, 1, `stream requests for ${tabs} tabs`);
  await publish('chat', 'm1');
  await waitLogs(pages, ['m1'], 'the log');
  const roles = await Promise.all(pages.map((p) => p.evaluate(() => window.htmxSse.connections().map((c) => c.role).join())));
  eq(roles.filter((r) => r === 'leader').length, 1, `leaders among ${JSON.stringify(roles)}`);
  eq(roles.filter((r) => r === 'follower').length, tabs - 1, `followers among ${JSON.stringify(roles)}`);
  const leader = roles.indexOf('leader');
  const started = Date.now();
  await pages[leader].close();
  pages.splice(leader, 1);
  await publish('chat', 'm2'); // while the tabs hand over
  // Over the channel, two tabs may claim at once for a moment (the one
  // with the larger id then steps down): allow one stream more there.
  s = await serverWait((x) => x.requests.length >= 2 && x.count === 1, 'a new leader\'s stream, and only it');
  const handover = Date.now() - started;
  await publish('chat', 'm3');
  await waitLogs(pages, ['m1', 'm2', 'm3'], 'the log after the hand-over');
  const after = await Promise.all(pages.map((p) => p.evaluate(() => window.htmxSse.connections().map((c) => c.role).join())));
  eq(after.filter((r) => r === 'leader').length, 1, `leaders after the hand-over among ${JSON.stringify(after)}`);
  s = await state();
  eq(s.count, 1, 'open connections');
  if (locks) eq(s.requests.map((r) => r.status), [200, 200], 'stream answers');
  else check(s.requests.length <= 3 && s.requests.every((r) => r.status === 200), `stream requests: ${JSON.stringify(s.requests)}`);
  check(s.requests.slice(1).every((r) => !!r.cookie && !/lastEventId/.test(r.uri)),
    `a new leader did not resume: ${JSON.stringify(s.requests)}`);
  // A follower away and back through the back/forward cache gets what was
  // relayed meanwhile from the leader's backlog.
  const roles2 = await Promise.all(pages.map((p) => p.evaluate(() => window.htmxSse.connections()[0].role)));
  const follower = pages[roles2.indexOf('follower')];
  await follower.goto(base + '/other', { waitUntil: 'load' });
  await publish('chat', 'm4');
  await follower.goBack({ waitUntil: 'commit' });
  await waitFor(follower, () => window.__rec && window.__rec.shows.some((x) => x.persisted), undefined,
    'the follower to come back from the back/forward cache');
  await waitLogs(pages, ['m1', 'm2', 'm3', 'm4'], 'the log after a follower came back');
  eq((await state()).count, 1, 'open connections at the end');
  console.log(`hand-over: second stream ${handover} ms after the leader tab closed`);
  return pages[0];
}

// The monitor shows what GET /sse/status says, and follows a second tab.
async function monitor({ open }) {
  const a = await open();
  await waitOpen(a, flavour);
  const shows = (n) => waitFor(a, (k) => {
    const el = document.getElementById('stats');
    return el.dataset.state === 'ok' && el.dataset.total === String(k) && el.textContent.startsWith(`${k} connected, ${k} active`);
  }, n, `the monitor to show ${n} connection(s)`, {
    state: () => a.evaluate(() => document.getElementById('stats').outerHTML),
  });
  await shows(1);
  const b = await open();
  await waitOpen(b, flavour);
  await shows(2);
  await b.close();
  await shows(1);
  // Hidden: polling stops (one poll may be in flight when it hides).
  await a.evaluate(() => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  await sleep(200);
  const before = (await state()).statusPolls;
  await sleep(800);
  eq((await state()).statusPolls, before, 'stats polls while the page is hidden');
  eq(await a.evaluate(() => document.getElementById('stats').dataset.state), 'paused', 'the monitor state while hidden');
  await a.evaluate(() => {
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => false });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  await shows(1);
  return a;
}

// A page made with SseElement alone: named events (and `message`) swapped.
async function element({ open }) {
  const page = await open();
  await waitOpen(page, flavour);
  await publish('chat', 'c1');
  await publish('news', 'n1');
  await publish('message', 'm1');
  await publish('ignored', 'x1'); // not listed: never swapped
  await publish('chat', 'c2');
  await waitLog(page, ['c1', 'n1', 'm1', 'c2']);
  eq(await page.evaluate(() => window.htmxSse === undefined), true, 'no runtime needed for the element');
  return page;
}

// A listener element inside the connection's element swaps `chat` into
// #log, and `ping` fires `sse:ping` on #pings (which then fetches /other):
// the same markup call in both flavours.
async function listener({ open }) {
  const page = await open();
  await waitOpen(page, flavour);
  await publish('chat', 'c1');
  await publish('other', 'x1'); // not listed: never swapped
  await publish('chat', 'c2');
  await waitLog(page, ['c1', 'c2']);
  eq(await page.evaluate(() => document.querySelector('#pings #elsewhere')), null, 'no ping yet');
  await publish('ping', 'p1');
  await waitFor(page, () => document.querySelector('#pings #elsewhere')?.textContent === 'another page', null,
    'sse:ping to fetch /other into #pings', { state: () => page.evaluate(() => document.getElementById('pings').innerHTML) });
  eq(await log(page), ['c1', 'c2'], 'the log after the ping');
  if (flavour === 'htmx4') {
    eq(await page.evaluate(() => window.htmxSseNamedSwap), true, 'the named-swap script ran');
  }
  return page;
}

// Config values with </script> in them: inert, and arrived as data.
async function injection({ open }) {
  const page = await open();
  await waitStatus(page, 'open', PWN.status);
  await waitFor(page, (id) => document.getElementById(id)?.dataset.state === 'error', PWN.monitor,
    'the monitor (polling a URL that does not exist) to report an error');
  await publish('chat', 'm1');
  await waitLog(page, ['m1']);
  await sleep(300);
  eq(await page.evaluate(() => typeof window.__pwned), 'undefined', 'typeof window.__pwned');
  eq(await page.evaluate(() => document.getElementById('feed').getAttribute('data-x')), PWN.attr,
    'the data-x attribute of the element');
  // htmx and its extension, then the four helper scripts (+ the htmx 4
  // element's own): no script element more.
  const want = flavour === 'htmx2' ? 6 : 7;
  eq(await page.evaluate(() => document.scripts.length), want, 'script elements on the page');
  const s = await state();
  const hostile = s.requests.filter((r) => r.uri.includes('pwned'));
  eq(hostile, [], 'stream requests carrying a config value');
  return page;
}

const SCENARIOS = {
  reconnect,
  'retry-limit': retryLimit,
  unload,
  shared,
  'shared-fallback': (t) => shared(t, { tabs: 4, locks: false }),
  monitor,
  element,
  listener,
  injection,
};

await run(ARGS, {
  name: `helpers-${ARGS.scenario}-${flavour}`,
  scenarios: SCENARIOS,
  recorder,
  // playwright-core turns the back/forward cache off; the unload and
  // shared scenarios need it.
  backForwardCache: ['unload', 'shared', 'shared-fallback'].includes(ARGS.scenario),
  serverState: state,
});
