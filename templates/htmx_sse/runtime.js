// htmx-sse browser runtime (htmx_sse::connections::scripts). Every helper
// script carries this file; the first copy defines window.htmxSse and the
// others only configure it.
(() => {
  'use strict';
  if (window.htmxSse) return;

  const CONNECTING = 0;
  const OPEN = 1;
  const CLOSED = 2;
  // Event types whose ids are tracked even when no element listens to them:
  // the crate's connection and reset events, and unnamed messages.
  const ALWAYS_TRACKED = ['message', 'connection', 'reset'];
  // BroadcastChannel election (when Web Locks are missing): beacon period.
  const BEAT_MS = 1000;
  // Ids remembered to drop duplicates; events a leader keeps for tabs that
  // come back from the back/forward cache.
  const RECENT_IDS = 128;
  const BACKLOG = 128;

  const settings = {
    // Until reconnect_script() says otherwise: retry forever, as
    // htmx-ext-sse does, with a capped exponential backoff.
    reconnect: { baseDelay: 1000, maxDelay: 30000, maxRetries: null, jitter: 0.2, statusElement: null, resumeInUrl: false },
    reconnectConfigured: false,
    debug: false,
    cleanup: false,
    shared: null,
    // Set by reset_script(): reload the page on the reset event.
    reload: false,
  };
  const lines = new Set();
  const tabId = Math.random().toString(36).slice(2) + Date.now().toString(36);
  let installed = false;
  let unloadHooked = false;
  let factory = (url) => new EventSource(url, { withCredentials: true });
  let channel = null;

  const log = (...args) => {
    if (settings.debug) console.debug('[htmx-sse]', ...args);
  };
  const major = () => {
    const v = window.htmx && window.htmx.version;
    return v ? parseInt(v, 10) : 0;
  };
  const raise = (e) => {
    if (typeof window.reportError === 'function') window.reportError(e);
    else setTimeout(() => { throw e; });
  };

  // --- The status hook ------------------------------------------------------

  function report(state, attempt, url, extra) {
    const detail = Object.assign({ state, attempt, url }, extra || {});
    log('status', detail);
    document.dispatchEvent(new CustomEvent('htmx-sse:status', { detail }));
    const id = settings.reconnect.statusElement;
    const el = id ? document.getElementById(id) : null;
    if (el) {
      el.textContent = state;
      el.setAttribute('data-state', state);
      el.setAttribute('data-attempt', String(attempt));
    }
  }

  // --- The reset hook ---------------------------------------------------------
  //
  // The server sends `event: reset` when a reconnecting page cannot be
  // caught up (a restart, a gap in the history): the page must reload what
  // it shows. Both flavours end up here, once per tab and reset event.

  function resetting(data, url) {
    let reason = null;
    try {
      const d = JSON.parse(data);
      if (d && typeof d.reason === 'string') reason = d.reason;
    } catch (e) {
      // not JSON: the reason stays unknown
    }
    log('reset', reason, url);
    const ev = new CustomEvent('htmx-sse:reset', { detail: { reason, url }, cancelable: true });
    // A listener that calls preventDefault() keeps the page.
    if (document.dispatchEvent(ev) && settings.reload) location.reload();
  }

  // A new source resumes from the last event id. Access logs keep URLs,
  // so by default the id (whose proof lets its holder resume this page's
  // connection) travels in a short-lived cookie scoped to the stream's
  // path, one per stream (named after a hash of its path and query, so
  // that two streams reconnecting together do not overwrite each other's),
  // which the server takes only for that path and query. In the URL
  // (`lastEventId=`) only when the page opted in, when the stream is on
  // another origin (the page cannot set its cookies), or when the browser
  // takes no cookies: never without the id, which would lose messages.
  const RESUME_COOKIE = 'htmx-sse-resume';
  function resumeCookie(u) {
    let h = 5381;
    for (const c of u.pathname + u.search) h = ((h * 33) ^ c.charCodeAt(0)) >>> 0;
    return RESUME_COOKIE + '-' + h.toString(36);
  }
  function resumeUrl(url, id) {
    const u = new URL(url, location.href);
    if (!settings.reconnect.resumeInUrl && u.origin === location.origin) {
      const name = resumeCookie(u);
      const value = encodeURIComponent(u.pathname + u.search) + '|' + encodeURIComponent(id);
      document.cookie = name + '=' + value + '; path=' + u.pathname + '; max-age=30; samesite=strict';
      // (A cookie scoped to the stream's path cannot be read back from the
      // page's; whether the browser takes cookies at all can be asked.)
      if (navigator.cookieEnabled) return u.href;
      log('cookies refused: the last event id goes in the URL');
    }
    u.searchParams.set('lastEventId', id);
    return u.href;
  }
  function forgetResume(url) {
    const u = new URL(url, location.href);
    if (u.origin !== location.origin) return;
    document.cookie = resumeCookie(u) + '=; path=' + u.pathname + '; max-age=0; samesite=strict';
  }


  // --- What htmx-ext-sse gets from htmx.createEventSource --------------------
  //
  // An EventSource look-alike that never reaches CLOSED while the runtime
  // is still reconnecting, so the extension never re-creates it (and never
  // re-registers its listeners): the runtime owns reconnection.

  class ManagedEventSource extends EventTarget {
    constructor(line) {
      super();
      this._line = line;
      this.url = line.href;
      this.withCredentials = true;
      this.readyState = CONNECTING;
      this.onopen = null;
      this.onmessage = null;
      this.onerror = null;
    }

    addEventListener(type, listener, options) {
      super.addEventListener(type, listener, options);
      if (type !== 'open' && type !== 'error') this._line.listen(type);
    }

    close() {
      if (this.readyState === CLOSED) return;
      this.readyState = CLOSED;
      this._line.detach(this);
    }

    _fire(ev, handler) {
      if (typeof handler === 'function') {
        try {
          handler.call(this, ev);
        } catch (e) {
          raise(e);
        }
      }
      this.dispatchEvent(ev);
    }

    _open() {
      if (this.readyState === CLOSED) return;
      this.readyState = OPEN;
      this._fire(new Event('open'), this.onopen);
    }

    // The extension re-creates a source it sees CLOSED in its error
    // handler: report errors as CONNECTING, and only then close.
    _error(final) {
      if (this.readyState === CLOSED) return;
      this.readyState = CONNECTING;
      this._fire(new Event('error'), this.onerror);
      if (final) this.readyState = CLOSED;
    }

    _message(type, data, id) {
      if (this.readyState === CLOSED) return;
      const ev = new MessageEvent(type, { data, lastEventId: id, origin: location.origin });
      this._fire(ev, type === 'message' ? this.onmessage : null);
    }
  }
  for (const [k, v] of [['CONNECTING', CONNECTING], ['OPEN', OPEN], ['CLOSED', CLOSED]]) {
    ManagedEventSource[k] = v;
    ManagedEventSource.prototype[k] = v;
  }

  // --- One logical connection ------------------------------------------------
  //
  // role 'local': this tab holds the EventSource (no sharing);
  // 'leader': this tab holds it and relays every event to the other tabs;
  // 'follower': another tab holds it and this one is fed from the channel.

  class Line {
    constructor(url, shared) {
      this.url = url;
      this.href = new URL(url, location.href).href;
      this.shared = shared;
      this.role = shared ? 'follower' : 'local';
      this.proxies = new Set();
      this.types = new Set(ALWAYS_TRACKED);
      this.lastEventId = '';
      this.recent = new Map();
      this.es = null;
      this.timer = 0;
      this.attempt = 0;
      this.state = 'connecting';
      this.closed = false;
      this.suspended = false;
      this.connection = null;
      this.backlog = [];
      this.locks = false;
      this.release = null;
      this.abort = null;
      this.beatTimer = 0;
      this.lastBeat = 0;
      this.onEvent = (ev) => {
        if (ev.currentTarget === this.es) this.deliver(ev.type, ev.data, ev.lastEventId, ev.currentTarget);
      };
    }

    start() {
      this.setState('connecting', 0);
      if (this.shared) this.elect();
      else this.connect();
    }

    attach(proxy) {
      this.proxies.add(proxy);
      if (this.state === 'open') setTimeout(() => proxy._open(), 0);
    }

    detach(proxy) {
      this.proxies.delete(proxy);
      if (this.proxies.size === 0) this.shutdown();
    }

    listen(type) {
      if (this.types.has(type)) return;
      this.types.add(type);
      if (this.es) this.es.addEventListener(type, this.onEvent);
      if (this.shared) post({ kind: 'listen', url: this.href, types: [type] });
    }

    setState(state, attempt, extra) {
      this.state = state;
      this.attempt = attempt;
      report(state, attempt, this.href, extra);
      if (this.role === 'leader') post({ kind: 'state', url: this.href, state, attempt });
    }

    // Drops an event delivered before, whoever delivers it again: the relay
    // of a tab that was leader before, a source replaced since, or the
    // leader's catch-up for a tab that came back crossing its live relay.
    // The crate's ids are EPOCH-SEQ.CONNECTION; two connections carry one
    // message under two connection ids, so the message part is the key.
    // The connection event is always delivered (a reconnect repeats it).
    fresh(type, id, origin) {
      if (!id || type === 'connection') return true;
      const message = /^[0-9a-f]{8}-[0-9]+\./.test(id) ? id.slice(0, id.indexOf('.')) : id;
      const key = type + '\n' + message;
      if (this.recent.has(key)) return false;
      this.recent.set(key, origin);
      if (this.recent.size > RECENT_IDS) this.recent.delete(this.recent.keys().next().value);
      return true;
    }

    // `relayed`: it came over the channel, so it is not relayed again.
    deliver(type, data, id, origin, relayed) {
      if (!this.fresh(type, id, origin)) {
        log('dropped a duplicate', type, id);
        return;
      }
      this.lastEventId = id;
      if (type === 'connection') this.connection = { data, id };
      if (type === 'reset') resetting(data, this.href);
      if (this.shared) {
        this.backlog.push({ type, data, id });
        if (this.backlog.length > BACKLOG) this.backlog.shift();
      }
      if (this.role === 'leader' && !relayed) post({ kind: 'event', url: this.href, type, data, id });
      for (const p of this.proxies) p._message(type, data, id);
    }

    // -- holding the EventSource (roles local and leader)

    connect() {
      clearTimeout(this.timer);
      this.timer = 0;
      if (this.closed || this.suspended || this.role === 'follower') return;
      const url = this.lastEventId ? resumeUrl(this.url, this.lastEventId) : this.url;
      let es;
      try {
        es = factory(url);
      } catch (e) {
        raise(e);
        this.retry();
        return;
      }
      log('connecting', url);
      this.es = es;
      es.onopen = () => {
        if (es !== this.es) return;
        forgetResume(this.url);
        this.setState('open', 0);
        for (const p of this.proxies) p._open();
      };
      es.onerror = () => {
        if (es !== this.es) return;
        // Closed here so that the browser does not reconnect by itself: the
        // next source carries the last event id (see resumeUrl), and the delay
        // and the retry limit are this runtime's.
        es.close();
        this.es = null;
        forgetResume(this.url);
        this.retry();
      };
      for (const t of this.types) es.addEventListener(t, this.onEvent);
    }

    retry() {
      const r = settings.reconnect;
      const attempt = this.attempt + 1;
      if (r.maxRetries !== null && attempt > r.maxRetries) {
        this.setState('failed', attempt - 1);
        for (const p of this.proxies) p._error(true);
        return;
      }
      let delay = Math.min(r.baseDelay * Math.pow(2, attempt - 1), r.maxDelay);
      if (r.jitter > 0) delay *= 1 + r.jitter * (Math.random() * 2 - 1);
      delay = Math.max(0, Math.round(delay));
      this.setState('reconnecting', attempt, { delay });
      for (const p of this.proxies) p._error(false);
      this.timer = setTimeout(() => this.connect(), delay);
    }

    drop() {
      clearTimeout(this.timer);
      this.timer = 0;
      if (this.es) {
        this.es.close();
        this.es = null;
      }
    }

    // -- sharing (roles leader and follower)

    elect() {
      post({ kind: 'hello', url: this.href, since: this.lastEventId });
      this.locks = !!(navigator.locks && typeof navigator.locks.request === 'function');
      if (this.locks) {
        const abort = new AbortController();
        this.abort = abort;
        navigator.locks
          .request('htmx-sse ' + settings.shared.channel + ' ' + this.href, { signal: abort.signal }, () => {
            if (this.closed || this.suspended || this.abort !== abort) return undefined;
            return new Promise((release) => {
              this.release = release;
              this.lead();
            });
          })
          .catch((e) => log('lock request ended', e && e.name));
      } else {
        // No Web Locks: a leader sends a beacon every BEAT_MS; a tab that
        // hears none for three periods claims; of two leaders, the one
        // with the smaller tab id stays.
        this.lastBeat = 0;
        clearInterval(this.beatTimer);
        this.beatTimer = setInterval(() => this.beat(), BEAT_MS);
        setTimeout(() => this.beat(), 300 + Math.random() * 200);
      }
    }

    beat() {
      if (this.closed || this.suspended) return;
      if (this.role === 'leader') post({ kind: 'beat', url: this.href });
      else if (Date.now() - this.lastBeat > 3 * BEAT_MS) this.lead();
    }

    lead() {
      if (this.closed || this.suspended || this.role === 'leader') return;
      log('leading', this.href, 'from', this.lastEventId || '(start)');
      this.role = 'leader';
      post({ kind: 'leader', url: this.href, types: [...this.types] });
      this.connect();
    }

    follow() {
      if (this.role !== 'leader') return;
      log('following', this.href);
      this.role = 'follower';
      this.drop();
    }

    unlock() {
      if (this.release) this.release();
      this.release = null;
      if (this.abort) this.abort.abort();
      this.abort = null;
      clearInterval(this.beatTimer);
      this.beatTimer = 0;
      if (this.role === 'leader' && !this.locks) {
        post({ kind: 'resign', url: this.href });
      }
      this.follow();
    }

    onBus(m) {
      if (m.to && m.to !== tabId) return;
      switch (m.kind) {
        case 'hello':
          if (this.role === 'leader') {
            post({ kind: 'state', url: this.href, state: this.state, attempt: this.attempt, to: m.from });
            if (this.connection) {
              const c = this.connection;
              post({ kind: 'event', url: this.href, type: 'connection', data: c.data, id: c.id, to: m.from });
            }
            // A tab back from the back/forward cache missed what was relayed
            // meanwhile: send it, or the reset event when it is gone.
            if (m.since) {
              const at = this.backlog.map((e) => e.id).lastIndexOf(m.since);
              const missed = at >= 0 ? this.backlog.slice(at + 1) : null;
              if (missed) {
                for (const e of missed) post({ kind: 'event', url: this.href, type: e.type, data: e.data, id: e.id, to: m.from });
              } else {
                post({ kind: 'event', url: this.href, type: 'reset', data: '{"reason":"history-gap"}', id: m.since, to: m.from });
              }
            }
          }
          break;
        case 'leader':
        case 'listen':
          for (const t of m.types || []) this.listen(t);
          if (m.kind === 'leader') {
            this.lastBeat = Date.now();
            if (this.role === 'leader' && !this.locks && m.from < tabId) this.follow();
            post({ kind: 'listen', url: this.href, types: [...this.types] });
          }
          break;
        case 'beat':
          this.lastBeat = Date.now();
          if (this.role === 'leader' && !this.locks && m.from < tabId) this.follow();
          break;
        case 'resign':
          if (this.locks) break;
          this.lastBeat = 0;
          setTimeout(() => this.beat(), Math.random() * 150);
          break;
        case 'state':
          this.lastBeat = Date.now();
          if (this.role === 'leader') break;
          this.setState(m.state, m.attempt);
          if (m.state === 'open') for (const p of this.proxies) p._open();
          else if (m.state === 'reconnecting') for (const p of this.proxies) p._error(false);
          else if (m.state === 'failed') for (const p of this.proxies) p._error(true);
          break;
        case 'event':
          // Delivered even by a tab that has just become leader: what the
          // old leader relayed last may arrive after the hand-over (the
          // close event, say); duplicates are dropped by id.
          this.lastBeat = Date.now();
          this.deliver(m.type, m.data, m.id, m.from, true);
          break;
        default:
      }
    }

    // -- the page's life

    suspend() {
      if (this.closed || this.suspended) return;
      this.suspended = true;
      if (this.shared) this.unlock();
      this.drop();
      this.setState('closed', 0, { reason: 'pagehide' });
    }

    resume() {
      if (this.closed || !this.suspended) return;
      this.suspended = false;
      this.setState('connecting', 0, { reason: 'pageshow' });
      if (this.shared) this.elect();
      else this.connect();
    }

    shutdown() {
      if (this.closed) return;
      if (this.shared) this.unlock();
      this.closed = true;
      this.drop();
      lines.delete(this);
      this.setState('closed', 0);
    }
  }

  function bus() {
    if (!channel) {
      channel = new BroadcastChannel(settings.shared.channel);
      channel.onmessage = (e) => {
        const m = e.data;
        if (!m || m.from === tabId) return;
        for (const l of lines) if (l.shared && l.href === m.url) l.onBus(m);
      };
    }
    return channel;
  }

  function post(msg) {
    try {
      bus().postMessage(Object.assign({ from: tabId }, msg));
    } catch (e) {
      log('could not post', e);
    }
  }

  function open(url) {
    const shared = !!settings.shared && typeof BroadcastChannel === 'function';
    let line = null;
    if (shared) {
      bus();
      const href = new URL(url, location.href).href;
      for (const l of lines) if (l.shared && l.href === href) line = l;
    }
    const fresh = !line;
    if (fresh) {
      line = new Line(url, shared);
      lines.add(line);
    }
    const proxy = new ManagedEventSource(line);
    line.attach(proxy);
    if (fresh) line.start();
    return proxy;
  }

  // --- htmx 4: map hx-sse onto the same hook ----------------------------------

  const htmx4Connections = new Map();

  function installHtmx4() {
    const url = (c) => (c && c.url ? new URL(c.url, location.href).href : undefined);
    document.addEventListener('htmx:sse:before:connection', (e) => {
      const c = e.detail && e.detail.connection;
      if (!c) return;
      report(c.attempt > 0 ? 'reconnecting' : 'connecting', c.attempt || 0, url(c));
    });
    document.addEventListener('htmx:sse:after:connection', (e) => {
      const c = e.detail && e.detail.connection;
      if (!c) return;
      htmx4Connections.set(e.target, c);
      report('open', 0, url(c));
    });
    document.addEventListener('htmx:sse:after:message', (e) => {
      const m = e.detail && e.detail.message;
      if (m && m.event === 'reset') resetting(m.data, url(e.detail.connection));
    });
    document.addEventListener('htmx:sse:close', (e) => {
      const c = e.detail && e.detail.connection;
      htmx4Connections.delete(e.target);
      if (!c) return;
      const cfg = c.config || {};
      const exhausted = e.detail.reason === 'ended' && cfg.reconnect && c.attempt > cfg.reconnectMaxAttempts;
      // htmx 4 counts the attempt it did not make: report the retries made.
      if (exhausted) report('failed', c.attempt - 1, url(c), { reason: e.detail.reason });
      else report('closed', c.attempt || 0, url(c), { reason: e.detail.reason });
    });
    applyHtmx4Config();
  }

  function applyHtmx4Config() {
    if (!installed || !settings.reconnectConfigured || major() < 4) return;
    const r = settings.reconnect;
    window.htmx.config.sse = Object.assign({}, window.htmx.config.sse, {
      reconnectDelay: r.baseDelay,
      reconnectMaxDelay: r.maxDelay,
      reconnectMaxAttempts: r.maxRetries === null ? Infinity : r.maxRetries,
      reconnectJitter: r.jitter,
    });
  }

  // --- Installation -------------------------------------------------------------

  function install() {
    if (installed) return;
    const htmx = window.htmx;
    if (!htmx) {
      document.addEventListener('DOMContentLoaded', install, { once: true, capture: true });
      return;
    }
    installed = true;
    if (major() >= 4) {
      installHtmx4();
      return;
    }
    const previous = htmx.createEventSource;
    if (typeof previous === 'function') factory = (url) => previous(url);
    htmx.createEventSource = open;
  }

  function hookUnload() {
    if (unloadHooked) return;
    unloadHooked = true;
    window.addEventListener('pagehide', () => {
      for (const l of lines) l.suspend();
      // Chromium evicts a cached page that a BroadcastChannel message
      // reaches: closed here, opened again by the first post after.
      if (channel) {
        channel.close();
        channel = null;
      }
      // htmx 4 closes hidden pages itself (pauseOnBackground, on by
      // default for hx-sse:connect); end the others' streams here. Their
      // loop reconnects with Last-Event-ID once the page is shown again.
      for (const c of htmx4Connections.values()) {
        if (c.config && !c.config.pauseOnBackground && c.reader) c.reader.cancel();
      }
    });
    window.addEventListener('pageshow', (e) => {
      if (!e.persisted) return;
      for (const l of lines) l.resume();
    });
  }

  window.htmxSse = {
    version: 1,
    reconnect(cfg) {
      const { debug, ...reconnect } = cfg;
      Object.assign(settings.reconnect, reconnect);
      settings.reconnectConfigured = true;
      settings.debug = settings.debug || !!debug;
      install();
      applyHtmx4Config();
    },
    cleanupOnUnload() {
      settings.cleanup = true;
      install();
      hookUnload();
    },
    share(cfg) {
      settings.shared = { channel: cfg.channel };
      settings.debug = settings.debug || !!cfg.debug;
      install();
      hookUnload();
      if (major() >= 4) log('shared connections need htmx 2: htmx 4 streams through fetch');
    },
    onReset(cfg) {
      settings.reload = settings.reload || !!cfg.reload;
      settings.debug = settings.debug || !!cfg.debug;
      install();
    },
    // A snapshot for debugging and tests.
    connections() {
      return [...lines].map((l) => ({
        url: l.href,
        role: l.role,
        state: l.state,
        attempt: l.attempt,
        lastEventId: l.lastEventId,
        listeners: l.proxies.size,
        open: !!l.es && l.es.readyState !== CLOSED,
      }));
    },
  };
})();
