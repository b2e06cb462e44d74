// Drives one browser scenario for tests/browser.rs.
//
//   node tests/browser/driver.mjs <scenario> <flavour> <base-url> <screenshot-dir>
//
// Opens <base-url>/ in headless Chromium (Debian's, through playwright-core),
// waits for the page's SSE connection, makes the server publish
// (POST <base-url>/publish), and asserts on the DOM with bounded waits.
// Saves <screenshot-dir>/<scenario>-<flavour>.png (…-FAILED.png on failure).
// Exits 0 when every assertion held, 1 with a message otherwise, 2 on misuse.

import { args, check, eq, run, server, sleep, texts, waitFor } from './harness.mjs';

const ARGS = args();
const { flavour } = ARGS;
const { call } = server(ARGS.base);

// The event names each flavour fires (read from the shipped extensions).
const NAMES = {
  htmx2: {
    open: 'htmx:sseOpen',
    before: 'htmx:sseBeforeMessage',
    message: 'htmx:sseMessage',
    close: 'htmx:sseClose',
    error: 'htmx:sseError',
  },
  htmx4: {
    open: 'htmx:sse:after:connection',
    before: 'htmx:sse:before:message',
    message: 'htmx:sse:after:message',
    close: 'htmx:sse:close',
    error: 'htmx:sse:error',
  },
}[flavour];

// Runs in the page before any of its scripts: records every htmx event that
// matters here, with the message data, in window.__events.
function recorder(names) {
  window.__events = [];
  for (const type of names) {
    document.addEventListener(
      type,
      (e) => {
        const d = e.detail || {};
        const data = d.message ? d.message.data : d.data;
        window.__events.push({
          type,
          t: Math.round(performance.now()),
          event: d.message ? d.message.event || undefined : undefined,
          data: typeof data === 'string' ? data : undefined,
          // htmx 4 gives a reason; htmx 2 a type (message, nodeMissing, …)
          reason: type.endsWith('sseClose') ? d.type : d.reason,
        });
      },
      true,
    );
  }
}

const RECORDED = [
  // htmx 2 + htmx-ext-sse
  'htmx:sseOpen', 'htmx:sseError', 'htmx:sseBeforeMessage', 'htmx:sseMessage', 'htmx:sseClose',
  'htmx:oobErrorNoTarget', 'htmx:partialErrorNoTarget', 'htmx:swapError', 'htmx:targetError',
  // htmx 4 + hx-sse
  'htmx:sse:before:connection', 'htmx:sse:after:connection', 'htmx:sse:before:message',
  'htmx:sse:after:message', 'htmx:sse:error', 'htmx:sse:close', 'htmx:error',
];

async function publish(page, expectStreams = 1) {
  const body = await call('POST', '/publish');
  eq([body.streams, body.failed], [expectStreams, 0], 'POST /publish [open page streams, failed sends]');
  return body;
}

const stats = () => call('GET', '/stats');

const events = (page, type) =>
  page.evaluate((t) => window.__events.filter((e) => e.type === t), type);

// htmx marks swapped content with classes while it settles; wait until none
// are left, so the DOM read afterwards is the final one.
async function settled(page) {
  await waitFor(page, () => !document.querySelector('.htmx-settling, .htmx-swapping, .htmx-added'),
    undefined, 'htmx to finish settling');
}

// --- 1. Fragments in order -------------------------------------------------

async function fragments(page) {
  await publish(page);
  await waitFor(page, () => document.querySelectorAll('#list > li').length >= 20, undefined,
    '20 list items', { state: () => texts(page, '#list > li') });
  await sleep(300); // anything late or doubled would show up now
  await settled(page);
  const want = Array.from({ length: 20 }, (_, n) => String(n));
  eq(await texts(page, '#list > li'), want, 'the list items');
  eq(await page.evaluate(() => document.querySelector('#list').children.length), 20,
    'the number of children of #list');
  eq((await events(page, NAMES.message)).length, 20, `${NAMES.message} events`);
}

// --- 2. One message, several regions out of band --------------------------

async function oob(page) {
  // The element's outer HTML with its attributes sorted by name: htmx 2
  // re-adds the attributes of an outerHTML-swapped element while settling,
  // so their order differs between the flavours.
  const region = (id) => page.evaluate((i) => {
    const e = document.getElementById(i);
    if (!e) return null;
    const attrs = [...e.attributes].map((a) => ` ${a.name}="${a.value}"`).sort().join('');
    return `<${e.localName}${attrs}>${e.innerHTML}</${e.localName}>`;
  }, id);
  await publish(page);
  const ids = ['count', 'log', 'status', 'badge'];
  await waitFor(page, () => document.querySelector('#count')?.textContent === '42'
      && document.querySelectorAll('#log > li').length === 2
      && document.querySelector('#status')?.textContent === 'online'
      && document.querySelector('#badge')?.tagName === 'DIV', undefined,
  'every region to be updated', { state: async () => Promise.all(ids.map(region)) });
  await sleep(300);
  await settled(page);
  eq(await region('count'), '<span id="count">42</span>', 'innerHTML swap of #count');
  eq(await region('log'), '<ul id="log"><li>first</li><li>second</li></ul>',
    'beforeend append to #log');
  eq(await region('status'), '<p class="online" id="status">online</p>',
    'outerHTML replacement of #status (unwrapped)');
  eq(await region('badge'), '<div id="badge"><b>new</b></div>',
    'outerHTML replacement of #badge (wrapped: the target becomes the builder\'s div)');
  eq(await page.evaluate(() => document.getElementById('bus').textContent), 'bus untouched',
    'the element the message was swapped into (#bus)');
  eq(await page.evaluate(() => document.querySelectorAll('hx-partial, template[hx]').length), 0,
    'leftover <hx-partial>/<template hx> elements');
  eq((await events(page, NAMES.message)).length, 1, `${NAMES.message} events (one message)`);
}

// --- 3. The close event stops reconnecting -------------------------------

async function close(page) {
  await publish(page);
  await waitFor(page, () => document.querySelectorAll('#list > li').length === 3, undefined,
    'the three fragments', { state: () => texts(page, '#list > li') });
  await waitFor(page, (c) => window.__events.some((e) => e.type === c), NAMES.close,
    `the page to close the connection (${NAMES.close})`, { state: stats });
  // htmx 2 reconnects after ~3 s (browser) or 0.5 s+ (extension), htmx 4
  // after ~0.5 s: any reconnection would have happened by now.
  await sleep(4000);
  await settled(page);
  eq(await texts(page, '#list > li'), ['item 0', 'item 1', 'item 2'], 'the list items');
  const s = await stats();
  eq(s.connections, 1, 'connections the server saw in 4 s after the close event');
  eq(s.ended, ['SourceEnded'], 'why the server streams ended');
  eq((await events(page, NAMES.open)).length, 1, `${NAMES.open} events`);
  // Closed because of the close message, not because the element went away.
  eq((await events(page, NAMES.close)).map((e) => e.reason), ['message'],
    `the reason of every ${NAMES.close} event`);
}

// --- 4. Heartbeats are harmless --------------------------------------------

async function heartbeat(page) {
  // First prove heartbeats are on the wire: read the same endpoint's raw
  // frames for 550 ms from the page (a probe connection that gets only
  // heartbeats and is not counted as a page stream).
  const frames = await page.evaluate(async () => {
    const ctrl = new AbortController();
    const res = await fetch('/events?probe=true', { signal: ctrl.signal });
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let text = '';
    const until = performance.now() + 550;
    while (performance.now() < until) {
      const chunk = await Promise.race([
        reader.read(),
        new Promise((r) => setTimeout(() => r({ timeout: true }), until - performance.now())),
      ]);
      if (chunk.timeout || chunk.done) break;
      text += dec.decode(chunk.value, { stream: true });
    }
    ctrl.abort();
    return text.split('\n\n').filter((f) => f.length > 0);
  });
  const beats = frames.filter((f) => f === ':').length;
  check(beats >= 3, `expected >= 3 heartbeat frames ":" in 550 ms, got ${JSON.stringify(frames)}`);

  await publish(page); // 3 fragments, 350 ms apart, heartbeats between and after
  await waitFor(page, () => document.querySelector('#latest')?.textContent === 'fragment 2',
    undefined, 'the last fragment',
    { state: () => page.evaluate(() => document.querySelector('#latest')?.innerHTML) });
  await sleep(500); // five more heartbeats
  await settled(page);
  eq(await page.evaluate(() => document.querySelector('#latest').innerHTML),
    '<p class="beat">fragment 2</p>', '#latest after the heartbeats');
  const want = [0, 1, 2].map((n) => `<p class="beat">fragment ${n}</p>`);
  // Neither the extension nor the browser may turn a comment into a message.
  eq((await events(page, NAMES.before)).map((e) => e.data), want, `data of every ${NAMES.before} event`);
  eq((await events(page, NAMES.message)).map((e) => e.data), want, `data of every ${NAMES.message} event`);
  console.log(`heartbeat frames seen on the probe in 550 ms: ${beats}`);
}

// --- 5. Escaping survives the trip ----------------------------------------

async function escaping(page) {
  const hostile = '<img src=x onerror="window.__pwned=1">';
  await publish(page);
  await waitFor(page, () => document.querySelectorAll('#msgs > li').length === 1
      && document.querySelector('#who span') !== null, undefined, 'both messages', {
    state: () => page.evaluate(() => [document.querySelector('#msgs')?.innerHTML,
      document.querySelector('#who')?.innerHTML]),
  });
  // An injected <img src=x> would have failed to load and run its onerror by now.
  await sleep(500);
  await settled(page);
  eq(await page.evaluate(() => typeof window.__pwned), 'undefined', 'typeof window.__pwned');
  eq(await page.evaluate(() => document.querySelectorAll('img').length), 0, '<img> elements on the page');
  eq(await texts(page, '#msgs > li'), [hostile], 'the visible text of the message');
  eq(await page.evaluate(() => document.querySelector('#who span').textContent), hostile,
    'the visible text of the out-of-band region');
  eq(await page.evaluate(() => document.querySelector('#who span').title), hostile,
    'the title attribute of the out-of-band region');
}

// --- 6. A compressed stream: the same fragments, nothing held back --------

async function compressed(page) {
  // Heartbeats reach the page through the compressed stream: a probe
  // connection (br, like the page's) read raw for 550 ms; fetch decodes.
  const probe = await page.evaluate(async () => {
    const ctrl = new AbortController();
    const res = await fetch('/events?probe=true', { signal: ctrl.signal });
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let text = '';
    const until = performance.now() + 550;
    while (performance.now() < until) {
      const chunk = await Promise.race([
        reader.read(),
        new Promise((r) => setTimeout(() => r({ timeout: true }), until - performance.now())),
      ]);
      if (chunk.timeout || chunk.done) break;
      text += dec.decode(chunk.value, { stream: true });
    }
    ctrl.abort();
    return { encoding: res.headers.get('content-encoding'), text };
  });
  eq(probe.encoding, 'br', 'Content-Encoding of the probe stream');
  const beats = probe.text.split('\n\n').filter((f) => f === ':').length;
  check(beats >= 3, `expected >= 3 heartbeat frames ":" in 550 ms, got ${JSON.stringify(probe.text)}`);

  // Each <li> is timed when it enters the DOM, in the page's clock, against
  // the server's clock when it was published (the same machine's clock).
  await page.evaluate(() => {
    window.__swapped = [];
    new MutationObserver((records) => {
      const seen = performance.timeOrigin + performance.now();
      for (const r of records) {
        for (const n of r.addedNodes) {
          if (n.nodeType === 1 && n.dataset.sent) {
            window.__swapped.push({ n: n.textContent, delay: seen - Number(n.dataset.sent) });
          }
        }
      }
    }).observe(document.querySelector('#list'), { childList: true });
  });
  await publish(page); // 20 fragments, 50 ms apart
  await waitFor(page, () => document.querySelectorAll('#list > li').length >= 20, undefined,
    '20 list items', { state: () => texts(page, '#list > li') });
  await sleep(300);
  await settled(page);
  const want = Array.from({ length: 20 }, (_, n) => String(n));
  eq(await texts(page, '#list > li'), want, 'the list items');
  eq((await events(page, NAMES.message)).length, 20, `${NAMES.message} events`);
  const swapped = await page.evaluate(() => window.__swapped);
  eq(swapped.map((s) => s.n), want, 'the fragments timed as they were swapped');
  const delays = swapped.map((s) => Math.round(s.delay * 10) / 10);
  console.log(`publish -> swapped (ms): ${JSON.stringify(delays)}; max ${Math.max(...delays)}`);
  check(delays.every((d) => d >= -1 && d < 50),
    `every fragment must be swapped within 50 ms of its publish: ${JSON.stringify(delays)}`);
  eq((await stats()).encodings, ['br'], 'Content-Encoding of the page stream (server side)');
}

// --- Running ---------------------------------------------------------------

// Every scenario runs on one tab, once its SSE connection is open.
const onOpenPage = (scenario) => async ({ open }) => {
  const page = await open();
  await waitFor(page, (o) => window.__events.some((e) => e.type === o), NAMES.open,
    `the SSE connection to open (${NAMES.open})`);
  await scenario(page);
  return page;
};

await run(ARGS, {
  name: `${ARGS.scenario}-${flavour}`,
  scenarios: {
    fragments: onOpenPage(fragments),
    'oob-swap-oob': onOpenPage(oob),
    'oob-partial': onOpenPage(oob),
    close: onOpenPage(close),
    heartbeat: onOpenPage(heartbeat),
    escaping: onOpenPage(escaping),
    compressed: onOpenPage(compressed),
  },
  recorder,
  recorderArg: RECORDED,
  async verify([page]) {
    const bad = [NAMES.error, 'htmx:error', 'htmx:oobErrorNoTarget', 'htmx:partialErrorNoTarget',
      'htmx:swapError', 'htmx:targetError'];
    const htmxErrors = (await page.evaluate(() => window.__events)).filter((e) => bad.includes(e.type));
    eq(htmxErrors, [], 'htmx error events');
  },
  async report(page) {
    const recorded = await page.evaluate(() => window.__events);
    console.log('htmx events (t in ms since navigation):');
    for (const e of recorded) console.log(`  ${JSON.stringify(e)}`);
  },
});
