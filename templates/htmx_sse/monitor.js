// htmx-sse connection monitor (htmx_sse::connections::scripts): polls the
// stats route and writes what it says into one element. Expects `cfg`:
// { url, interval (ms), element (id) }.
'use strict';
let timer = 0;
let inflight = null;

const show = (state, text, stats) => {
  const el = document.getElementById(cfg.element);
  if (!el) return;
  el.textContent = text;
  el.setAttribute('data-state', state);
  if (stats) {
    for (const k of ['total', 'active', 'messages']) el.setAttribute('data-' + k, String(stats[k]));
    el.setAttribute('data-last-id', String(stats.last_id));
  }
};

const poll = async () => {
  timer = 0;
  if (document.hidden || inflight) return;
  const ctrl = new AbortController();
  inflight = ctrl;
  // No request outlives the interval: a slow server never piles them up.
  const stop = setTimeout(() => ctrl.abort(), cfg.interval);
  try {
    const res = await fetch(cfg.url, { signal: ctrl.signal, cache: 'no-store', headers: { accept: 'application/json' } });
    if (!res.ok) throw new Error('HTTP ' + res.status);
    const s = await res.json();
    show('ok', s.total + ' connected, ' + s.active + ' active, ' + s.messages + ' messages', s);
    document.dispatchEvent(new CustomEvent('htmx-sse:stats', { detail: s }));
  } catch (e) {
    if (!document.hidden) show('error', 'stats unavailable');
  } finally {
    clearTimeout(stop);
    inflight = null;
  }
  schedule();
};

const schedule = () => {
  if (!timer && !document.hidden) timer = setTimeout(poll, cfg.interval);
};

document.addEventListener('visibilitychange', () => {
  if (document.hidden) {
    clearTimeout(timer);
    timer = 0;
    if (inflight) inflight.abort();
    show('paused', 'paused while the page is hidden');
  } else if (!timer && !inflight) {
    poll();
  }
});

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', () => poll(), { once: true });
else poll();
