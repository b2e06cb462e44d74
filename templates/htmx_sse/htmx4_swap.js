// htmx-sse (htmx_sse::connections::scripts): htmx 4 swaps only unnamed SSE
// messages and fires named ones as DOM events. This swaps the named events
// that an hx-sse:connect element, or an element inside it, lists in
// data-sse-swap into that element's hx-target ("this": itself) with its
// hx-swap, as sse-swap does in htmx 2; and fires sse:NAME on the elements
// inside it whose hx-trigger names sse:NAME, as htmx-ext-sse does.
(() => {
  'use strict';
  if (window.htmxSseNamedSwap) return;
  window.htmxSseNamedSwap = true;
  const lists = (el, name) =>
    el.getAttribute('data-sse-swap').split(',').map((n) => n.trim()).includes(name);
  const triggers = (el, name) =>
    el.getAttribute('hx-trigger').split(/[\s,]+/).some((t) => t.split('[')[0] === 'sse:' + name);
  document.addEventListener('htmx:sse:after:message', (e) => {
    const root = e.target;
    const m = e.detail && e.detail.message;
    if (!m || !m.event || !(root instanceof Element)) return;
    // Only this connection's elements: not those inside a nested one.
    const own = (el) => el.closest('[hx-sse\\:connect]') === root;
    const swapping = Array.from(root.querySelectorAll('[data-sse-swap]')).filter(own);
    if (root.hasAttribute('data-sse-swap')) swapping.unshift(root);
    for (const el of swapping) {
      if (!lists(el, m.event)) continue;
      const target = el.getAttribute('hx-target');
      window.htmx.swap({
        sourceElement: el,
        target: !target || target === 'this' ? el : target,
        swap: el.getAttribute('hx-swap') || window.htmx.config.defaultSwap,
        text: m.data,
      });
    }
    for (const el of root.querySelectorAll('[hx-trigger]')) {
      if (own(el) && triggers(el, m.event)) window.htmx.trigger(el, 'sse:' + m.event, { data: m.data, id: m.id });
    }
  });
})();
