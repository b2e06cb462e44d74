// Drives the demo (examples/demo.rs) in two tabs of one headless Chromium,
// for tests/demo.rs:
//
//   node tests/browser/demo.mjs <base-url> <screenshot-dir> [htmx2|htmx4]
//
// htmx4 runs the same scenario on the page served at /?htmx=4 (the same
// code rendering htmx 4 markup); screenshots are named after the flavour.
//
// Asserts that a note added in one tab appears once in both (the other tab
// gets it from a broadcast that excludes the tab it came from), that user
// text stays text, that the out-of-band dashboard updates, and that a job's
// SseStream runs to its close event. Exits 0 when all held, 1 otherwise.

import { join } from 'node:path';
import { launch } from './harness.mjs';

const [base, shotDir, flavour = 'htmx2'] = process.argv.slice(2);
if (!/^http:\/\/127\.0\.0\.1:\d+$/.test(base ?? '') || !shotDir || !['htmx2', 'htmx4'].includes(flavour)) {
  console.error('usage: demo.mjs http://127.0.0.1:<port> <screenshot-dir> [htmx2|htmx4]');
  process.exit(2);
}
const home = flavour === 'htmx4' ? `${base}/?htmx=4` : `${base}/`;
const expectedFlavour = flavour === 'htmx4' ? 'htmx 4' : 'htmx 2';
const shot = (name) => join(shotDir, `${name}-${flavour}.png`);
const WAIT = { timeout: 10_000 };
setTimeout(() => { console.error('FAIL demo: watchdog after 55 s'); process.exit(1); }, 55_000).unref();

const browser = await launch();
let a;
try {
  const ctx = await browser.newContext({ viewport: { width: 900, height: 1100 } });
  a = await ctx.newPage();
  const b = await ctx.newPage();
  const errors = [];
  for (const p of [a, b]) p.on('pageerror', (e) => errors.push(String(e)));
  await a.goto(home);
  await b.goto(home);
  for (const p of [a, b]) {
    const running = await p.textContent('#flavor');
    if (running !== expectedFlavour) throw new Error(`the page runs on ${running}, not ${expectedFlavour}`);
    await p.waitForSelector('#note-form input[name=connection_id]', { state: 'attached', ...WAIT });
  }
  const idA = await a.getAttribute('#note-form input[name=connection_id]', 'value');
  const idB = await b.getAttribute('#note-form input[name=connection_id]', 'value');
  if (!idA || !idB || idA === idB) throw new Error(`connection ids ${idA} / ${idB}`);

  const text = 'from A <img src=x onerror="window.__pwned=1">';
  await a.fill('#note-form input[name=text]', text);
  await a.click('#note-form button');
  for (const p of [a, b]) {
    await p.waitForFunction(() => document.querySelectorAll('#notes li').length === 1, null, WAIT);
  }
  await b.fill('#note-form input[name=text]', 'from B');
  await b.click('#note-form button');
  for (const p of [a, b]) {
    await p.waitForFunction(() => document.querySelectorAll('#notes li').length === 2, null, WAIT);
  }
  // Let any duplicate arrive before counting.
  await a.waitForTimeout(500);
  for (const [name, p] of [['A', a], ['B', b]]) {
    const notes = await p.$$eval('#notes li', (els) => els.map((e) => e.textContent));
    if (JSON.stringify(notes) !== JSON.stringify([text, 'from B'])) {
      throw new Error(`tab ${name} shows ${JSON.stringify(notes)}`);
    }
    if (await p.evaluate(() => document.querySelectorAll('#notes img').length !== 0 || window.__pwned !== undefined)) {
      throw new Error(`tab ${name}: the note's markup was not escaped`);
    }
  }
  // The dashboard: several regions from one broadcast, changing each second.
  const before = await a.textContent('#uptime');
  await a.waitForFunction((t) => document.querySelector('#uptime').textContent !== t, before, WAIT);
  for (const id of ['clock', 'cpu', 'rps']) {
    const v = await a.textContent(`#${id}`);
    if (!v || v === '–') throw new Error(`#${id} never updated`);
  }
  await a.waitForFunction(() => /2 tab\(s\) connected/.test(document.querySelector('#stats').textContent), null, WAIT);
  // A job: its own SseStream, ending with the close event.
  await b.click('text=Start a job');
  await b.waitForFunction(() => /done/.test(document.querySelector('#jobs').textContent), null, WAIT);

  // Two demo users: alice in both tabs of this browser context, bob in a
  // second context. Private toasts reach every tab of their user only.
  await a.fill('#login input[name=user]', 'alice');
  await a.click('#login button');
  await a.waitForSelector('#whoami', WAIT);
  await b.reload();
  await b.waitForSelector('#whoami', WAIT);
  const bobCtx = await browser.newContext({ viewport: { width: 900, height: 1100 } });
  const c = await bobCtx.newPage();
  c.on('pageerror', (e) => errors.push(String(e)));
  await c.goto(home);
  await c.fill('#login input[name=user]', 'bob');
  await c.click('#login button');
  await c.waitForSelector('#whoami', WAIT);
  for (const p of [a, b, c]) {
    await p.waitForSelector('#note-form input[name=connection_id]', { state: 'attached', ...WAIT });
  }
  // The presence badge: three tabs, two users (once the anonymous tabs
  // that signed in have passed the 3 s grace).
  for (const p of [a, b, c]) {
    await p.waitForFunction(() => document.querySelector('#online').textContent === '3 tabs open, 2 users signed in',
      null, WAIT);
  }
  const toastText = (p) => p.$$eval('#toasts .alert', (els) => els.map((e) => e.textContent));
  const sendPrivate = async (p, to, text) => {
    await p.fill('#private input[name=to]', to);
    await p.fill('#private input[name=text]', text);
    await p.click('#private button');
  };
  const waitToast = (p, text) => p.waitForFunction(
    (t) => [...document.querySelectorAll('#toasts .alert')].some((e) => e.textContent.includes(t)), text, WAIT);
  await sendPrivate(a, 'bob', 'secret for bob');
  await waitToast(c, 'alice to bob: secret for bob');
  await sendPrivate(c, 'alice', 'secret for alice');
  await waitToast(a, 'bob to alice: secret for alice');
  await waitToast(b, 'bob to alice: secret for alice');
  await a.waitForTimeout(300);
  for (const [name, p, foreign] of [['alice A', a, 'secret for bob'], ['alice B', b, 'secret for bob'], ['bob', c, 'secret for alice']]) {
    const seen = await toastText(p);
    if (seen.some((t) => t.includes(foreign))) throw new Error(`${name} saw another user's toast: ${JSON.stringify(seen)}`);
  }
  await c.screenshot({ path: shot('demo-bob'), fullPage: false });
  await c.click('text=Toast every tab');
  for (const p of [a, b, c]) await waitToast(p, 'Hello, everyone!');
  if (errors.length) throw new Error(`page errors: ${errors.join('; ')}`);
  await b.screenshot({ path: shot('demo-tab-b'), fullPage: true });
  await a.screenshot({ path: shot('demo-tab-a'), fullPage: true });
  console.log(`ok demo on ${flavour}: two tabs in sync, dashboard live, job closed, private toasts per user, presence badge`);
} catch (e) {
  console.error(`FAIL demo on ${flavour}: ${e.message}`);
  if (a) await a.screenshot({ path: shot('demo-FAILED'), fullPage: true }).catch(() => {});
  await browser.close();
  process.exit(1);
}
await browser.close();
