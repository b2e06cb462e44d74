// htmx-sse (htmx_sse::connections::scripts::SseElement): htmx 4 swaps only
// unnamed SSE messages and fires named ones as DOM events. This swaps the
// named events an hx-sse:connect element lists in data-sse-swap into its
// hx-target with its hx-swap, as sse-swap does in htmx 2.
(() => {
  'use strict';
  if (window.htmxSseNamedSwap) return;
  window.htmxSseNamedSwap = true;
  document.addEventListener('htmx:sse:after:message', (e) => {
    const el = e.target;
    const m = e.detail && e.detail.message;
    if (!m || !m.event || !(el instanceof Element) || !el.hasAttribute('data-sse-swap')) return;
    const names = el.getAttribute('data-sse-swap').split(',').map((n) => n.trim());
    if (!names.includes(m.event)) return;
    window.htmx.swap({
      sourceElement: el,
      target: el.getAttribute('hx-target') || el,
      swap: el.getAttribute('hx-swap') || window.htmx.config.defaultSwap,
      text: m.data,
    });
  });
})();
