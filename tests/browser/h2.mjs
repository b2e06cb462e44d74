// Drives the HTTP/2 scenarios of tests/browser/h2.rs:
//
//   node tests/browser/h2.mjs ten-tabs <flavour> https://127.0.0.1:<port> <screenshot-dir>
//   node tests/browser/h2.mjs seventh-tab <flavour> http://127.0.0.1:<port> <screenshot-dir>
//
// ten-tabs: ten tabs of one browser, each with its own stream (no
// shared-connection helper), open at once over HTTPS: every tab's page and
// scripts came over HTTP/2, the server holds ten streams on few TCP
// connections, and every tab shows each broadcast exactly once. The
// server's certificate is made for the run, so Chromium is told to accept
// it (this driver only).
//
// seventh-tab, the same page over cleartext HTTP/1.1: six tabs hold the
// six connections a browser allows per host, so a seventh cannot even load
// its page, until one of the six is closed.
//
// The server (tests/browser/h2.rs) answers, besides the page and the
// manager's routes under /sse:
//   GET  /h2/stats    {"streams": open streams, "accepted": TCP connections accepted}
//   POST /h2/publish  broadcasts BROADCASTS `chat` messages, <li>message N</li>
// Both are called from a tab (same origin, same trusted certificate).

import { args, check, eq, run, sleep, texts, waitFor, waitOpen } from './harness.mjs';

const ARGS = args();
const { flavour } = ARGS;
const TABS = 10;
const BROADCASTS = 5;
// HTTP/1.1 would need one connection per stream, and a browser opens at
// most six per host; HTTP/2 needs one (a second is allowed for a race at
// start).
const MAX_CONNECTIONS = 2;

// Runs in each page before its scripts: the stream's open event.
function recorder() {
  window.__rec = { htmx: [] };
  for (const type of ['htmx:sseOpen', 'htmx:sseError', 'htmx:sse:after:connection', 'htmx:sse:error']) {
    document.addEventListener(type, () => window.__rec.htmx.push({ type, t: Math.round(performance.now()) }), true);
  }
}

const inPage = (page, method, path) =>
  page.evaluate(async ([m, p]) => {
    const res = await fetch(p, { method: m });
    if (!res.ok) throw new Error(`${m} ${p} answered ${res.status}: ${await res.text()}`);
    return res.json();
  }, [method, path]);

// The protocol of the page and of every resource it loaded (htmx, the SSE
// extension), as the browser reports it. The streams themselves never
// finish, so they have no entry.
const protocols = (page) =>
  page.evaluate(() => [
    ...performance.getEntriesByType('navigation'),
    ...performance.getEntriesByType('resource'),
  ].map((e) => `${e.name.replace(location.origin, '')} ${e.nextHopProtocol}`));

async function tenTabs({ open }) {
  const tabs = [];
  for (let i = 0; i < TABS; i++) tabs.push(await open());
  for (const tab of tabs) await waitOpen(tab, flavour);

  for (const [i, tab] of tabs.entries()) {
    const seen = await protocols(tab);
    check(seen.length >= 3, `tab ${i}: expected the page and two scripts, got ${JSON.stringify(seen)}`);
    check(seen.every((p) => p.endsWith(' h2')), `tab ${i} did not use HTTP/2: ${JSON.stringify(seen)}`);
  }
  const stats = await inPage(tabs[0], 'GET', '/h2/stats');
  eq(stats.streams, TABS, 'open streams on the server (one per tab, all at once)');
  check(stats.accepted >= 1 && stats.accepted <= MAX_CONNECTIONS,
    `${TABS} streams came over ${stats.accepted} TCP connections, not at most ${MAX_CONNECTIONS}`);

  const published = await inPage(tabs[TABS - 1], 'POST', '/h2/publish');
  eq(published.delivered, Array(BROADCASTS).fill(TABS), 'connections each broadcast was queued for');
  const expected = Array.from({ length: BROADCASTS }, (_, n) => `message ${n}`);
  for (const [i, tab] of tabs.entries()) {
    await waitFor(tab, (n) => document.querySelectorAll('#log > li').length >= n, BROADCASTS,
      `tab ${i} to show ${BROADCASTS} broadcasts`, { state: () => texts(tab, '#log > li') });
  }
  // Let a duplicate arrive before counting.
  await sleep(300);
  for (const [i, tab] of tabs.entries()) eq(await texts(tab, '#log > li'), expected, `tab ${i}'s messages`);
  const after = await inPage(tabs[0], 'GET', '/h2/stats');
  eq(after.streams, TABS, 'open streams after the broadcasts (none reconnected)');
  check(after.accepted <= MAX_CONNECTIONS, `TCP connections after the broadcasts: ${after.accepted}`);
  console.log(`ten tabs over ${after.accepted} TCP connection(s), protocols ${JSON.stringify(await protocols(tabs[0]))}`);
  return tabs[0];
}

async function seventhTab({ open, context }) {
  const tabs = [];
  for (let i = 0; i < 6; i++) tabs.push(await open());
  for (const tab of tabs) await waitOpen(tab, flavour);
  for (const [i, tab] of tabs.entries()) {
    const [nav] = await protocols(tab);
    check(nav.endsWith(' http/1.1'), `tab ${i} did not use HTTP/1.1: ${nav}`);
  }
  const seventh = await context.newPage();
  await seventh.addInitScript(recorder);
  const loaded = await seventh.goto(ARGS.base + '/', { waitUntil: 'commit', timeout: 3000 })
    .then(() => 'loaded', (e) => (/Timeout/.test(e.message) ? 'timed out' : e.message));
  eq(loaded, 'timed out', 'the seventh tab over HTTP/1.1, with six streams open');
  // One tab closed frees a connection: the seventh's navigation, still
  // waiting, goes on; its page loads and connects.
  await tabs[0].close();
  await seventh.waitForURL(ARGS.base + '/', { waitUntil: 'load' });
  await waitOpen(seventh, flavour);
  return seventh;
}

await run(ARGS, {
  name: `h2-${ARGS.scenario}-${flavour}`,
  scenarios: { 'ten-tabs': tenTabs, 'seventh-tab': seventhTab },
  recorder,
  ignoreCertificateErrors: true,
});
