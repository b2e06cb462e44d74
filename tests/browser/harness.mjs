// What the browser drivers share: driver.mjs (tests/browser.rs), helpers.mjs
// (tests/browser/helpers.rs), app.mjs (tests/browser/app.rs), xss.mjs
// (tests/browser/xss.rs) and h2.mjs (tests/browser/h2.rs) are each
//
//   node tests/browser/<driver>.mjs <scenario> <flavour> <base-url> <screenshot-dir>
//
// and hand their scenarios to `run`, which launches Chromium, opens the
// tabs, saves <screenshot-dir>/<name>.png (…-FAILED.png on failure), prints
// what the pages recorded, and exits 0 when every assertion held, 1 with a
// message otherwise (2 on misuse, from `args`). demo.mjs launches with
// `launch`.

import { rmSync } from 'node:fs';
import { basename, join } from 'node:path';
import { chromium } from 'playwright-core';

export const WAIT_MS = 10_000; // the longest any single wait may take
const WATCHDOG_MS = 55_000; // the whole run; the Rust side kills at 60 s

// --- Assertions ------------------------------------------------------------------

export class Failure extends Error {}

export function check(cond, message) {
  if (!cond) throw new Failure(message);
}

export function eq(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Failure(`${what}:\n    expected ${e}\n    got      ${a}`);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// --- The command line and the browser ----------------------------------------------

// `<scenario> <flavour> <base-url> <screenshot-dir>`; exits 2 on misuse.
export function args() {
  const [scenario, flavour, base, shotDir] = process.argv.slice(2);
  if (!scenario || !['htmx2', 'htmx4'].includes(flavour) || !base || !shotDir) {
    console.error(`usage: ${basename(process.argv[1])} <scenario> <htmx2|htmx4> <base-url> <screenshot-dir>`);
    process.exit(2);
  }
  if (!/^https?:\/\/127\.0\.0\.1:\d+$/.test(base)) {
    console.error(`refusing base url ${base}: only http(s)://127.0.0.1:<port> is allowed`);
    process.exit(2);
  }
  return { scenario, flavour, base, shotDir };
}

// Debian's Chromium (or HTMX_SSE_CHROMIUM) through playwright-core, which
// gives every launch a fresh temporary profile and turns the back/forward
// cache off unless `backForwardCache`. `ignoreCertificateErrors` is for the
// HTTPS test only, whose server has a certificate made for the run.
export function launch({ backForwardCache = false, ignoreCertificateErrors = false } = {}) {
  return chromium.launch({
    executablePath: process.env.HTMX_SSE_CHROMIUM || '/usr/bin/chromium',
    ...(backForwardCache && { ignoreDefaultArgs: ['--disable-back-forward-cache'] }),
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ...(ignoreCertificateErrors ? ['--ignore-certificate-errors'] : [])],
    timeout: WAIT_MS,
  });
}

// --- Talking to the server ---------------------------------------------------------

// Calls on the server at `base`: `call` answers the JSON body (null for 202
// and 204) and fails on any other status; `state` is `GET /lab/state`;
// `serverWait` a bounded wait for a condition on it, where a server that
// is not there (restarting) counts as not yet.
export function server(base) {
  async function call(method, path, body) {
    const res = await fetch(base + path, {
      method,
      headers: body ? { 'content-type': 'application/json' } : {},
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(WAIT_MS),
    });
    if (!res.ok) throw new Failure(`${method} ${path} answered ${res.status}: ${await res.text()}`);
    return res.status === 204 || res.status === 202 ? null : res.json();
  }
  const state = () => call('GET', '/lab/state');
  async function serverWait(pred, what, { timeout = WAIT_MS } = {}) {
    const until = Date.now() + timeout;
    let s;
    for (;;) {
      try {
        s = await state();
        if (pred(s)) return s;
      } catch (e) {
        s = `(unreachable: ${e.cause?.code || e.message})`;
      }
      if (Date.now() > until) throw new Failure(`timed out after ${timeout} ms waiting for ${what}; the server has ${JSON.stringify(s)}`);
      await sleep(50);
    }
  }
  return { call, state, serverWait };
}

// --- Looking at pages ----------------------------------------------------------------

// A bounded wait for a predicate in the page, with a readable failure;
// `state`, when given, reads what the page shows instead.
export async function waitFor(page, fn, arg, what, { timeout = WAIT_MS, state } = {}) {
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 20 });
  } catch (e) {
    if (e.name === 'TimeoutError' || /Timeout/.test(e.message)) {
      const now = state ? `; the page has ${JSON.stringify(await state().catch((x) => x.message))}` : '';
      throw new Failure(`timed out after ${timeout} ms waiting for ${what}${now}`);
    }
    throw e;
  }
}

export const texts = (page, selector) =>
  page.evaluate((s) => [...document.querySelectorAll(s)].map((e) => e.textContent), selector);

// The connection open as htmx sees it, in a page whose recorder keeps
// htmx's events in window.__rec.htmx.
export async function waitOpen(page, flavour) {
  const open = flavour === 'htmx2' ? 'htmx:sseOpen' : 'htmx:sse:after:connection';
  await waitFor(page, (o) => window.__rec.htmx.some((e) => e.type === o), open, `the connection to open (${open})`);
}

// --- A run -------------------------------------------------------------------------

async function screenshot(page, file) {
  await page.screenshot({ path: file, timeout: WAIT_MS });
  console.log(`screenshot: ${file}`);
}

// Runs `scenarios[scenario]` for `flavour` against `base` and exits with
// its outcome. A scenario gets
//   open(init)           a new tab at <base>/, with `recorder(recorderArg)`
//                        (and `init`, if given) run before the page's scripts;
//   shoot(page, suffix)  one more screenshot, <name>-<suffix>.png;
//   context              the browser context of the tabs;
// and returns the tab to photograph (else the first tab still open).
// Options:
//   name              the screenshot: <shotDir>/<name>.png
//   backForwardCache  keep the back/forward cache on
//   ignoreCertificateErrors  accept the server's certificate (HTTPS test only)
//   verify(pages)     checks once the scenario passed and no page threw
//   report(page)      prints what the page recorded (window.__rec by default)
//   serverState()     what the server has, printed on failure
export async function run({ scenario, flavour, shotDir, base }, {
  name, scenarios, recorder, recorderArg, backForwardCache = false, ignoreCertificateErrors = false,
  verify, serverState,
  report = async (page) => console.log(`recorded in the page: ${JSON.stringify(await page.evaluate(() => window.__rec))}`),
}) {
  const started = Date.now();
  const logs = [];
  const pages = [];
  let browser;
  let shot;
  let failed = null;
  const watchdog = setTimeout(() => {
    console.error(`watchdog: ${scenario} on ${flavour} still running after ${WATCHDOG_MS} ms`);
    process.exit(1);
  }, WATCHDOG_MS);
  const shoot = (page, suffix) => screenshot(page, join(shotDir, `${name}-${suffix}.png`));
  try {
    const scenarioRun = scenarios[scenario];
    if (!scenarioRun) throw new Failure(`unknown scenario ${scenario}`);
    browser = await launch({ backForwardCache, ignoreCertificateErrors });
    const context = await browser.newContext({ viewport: { width: 800, height: 500 } });
    const open = async (init) => {
      const page = await context.newPage();
      const n = pages.length;
      pages.push(page);
      page.setDefaultTimeout(WAIT_MS);
      page.on('console', (m) => logs.push(`tab ${n} console.${m.type()}: ${m.text()}`));
      page.on('pageerror', (e) => logs.push(`tab ${n} pageerror: ${e.message}`));
      await page.addInitScript(recorder, recorderArg);
      if (init) await page.addInitScript(init);
      await page.goto(base + '/', { waitUntil: 'load' });
      return page;
    };
    shot = await scenarioRun({ open, shoot, context });
    const errors = logs.filter((l) => l.includes('pageerror'));
    check(errors.length === 0, `a page threw:\n  ${errors.join('\n  ')}`);
    if (verify) await verify(pages);
  } catch (e) {
    failed = e;
  }

  const page = shot && !shot.isClosed() ? shot : pages.find((p) => !p.isClosed());
  if (page) {
    const file = join(shotDir, `${name}${failed ? '-FAILED' : ''}.png`);
    // Leave no stale picture of the other outcome behind.
    rmSync(join(shotDir, `${name}${failed ? '' : '-FAILED'}.png`), { force: true });
    try {
      await screenshot(page, file);
    } catch (e) {
      console.log(`screenshot failed: ${e.message}`);
    }
    try {
      await report(page);
      if (failed) console.log(`body:\n${await page.evaluate(() => document.body.innerHTML)}`);
    } catch (e) {
      console.log(`could not read the page: ${e.message}`);
    }
  }
  if (failed && serverState) {
    try {
      console.log(`server: ${JSON.stringify(await serverState())}`);
    } catch (e) {
      console.log(`could not read the server: ${e.message}`);
    }
  }
  if (logs.length) console.log(`browser log:\n  ${logs.join('\n  ')}`);
  if (browser) await browser.close().catch(() => {});
  clearTimeout(watchdog);

  if (failed) {
    const kind = failed instanceof Failure ? 'assertion failed' : 'error';
    console.error(`FAIL ${scenario} on ${flavour} (${kind}): ${failed.message}`);
    if (!(failed instanceof Failure)) console.error(failed.stack);
    process.exit(1);
  }
  console.log(`ok ${scenario} on ${flavour} in ${Date.now() - started} ms`);
}
