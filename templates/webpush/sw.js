// Service worker of the htmx-sse Web Push demo (examples/webpush.rs).
// It runs when the page is closed: the browser wakes it for each push.

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

// A push carries the JSON of htmx_sse::webpush::Payload:
// {"title": "...", "body": "...", "icon": "...", "data": {...}}.
self.addEventListener("push", (event) => {
  let payload = { title: "htmx-sse" };
  if (event.data) {
    try {
      payload = event.data.json();
    } catch {
      payload = { title: event.data.text() };
    }
  }
  event.waitUntil(
    self.registration.showNotification(payload.title || "htmx-sse", {
      body: payload.body,
      icon: payload.icon,
      data: payload.data,
    }),
  );
});

// A click opens data.url (or the demo page), focusing a tab already there.
self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const data = event.notification.data || {};
  const target = new URL(data.url || "/", self.location.origin).href;
  event.waitUntil(
    (async () => {
      const tabs = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
      for (const tab of tabs) {
        if (tab.url === target && "focus" in tab) return tab.focus();
      }
      return self.clients.openWindow(target);
    })(),
  );
});

// The browser renewed the subscription: subscribe again and tell the server.
self.addEventListener("pushsubscriptionchange", (event) => {
  event.waitUntil(
    (async () => {
      const key = await (await fetch("/vapid-public-key")).text();
      const subscription = await self.registration.pushManager.subscribe({
        userVisibleOnly: true,
        applicationServerKey: base64UrlToBytes(key),
      });
      await fetch("/subscribe", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(subscription.toJSON()),
      });
    })(),
  );
});

function base64UrlToBytes(text) {
  const base64 = (text + "=".repeat((4 - (text.length % 4)) % 4)).replace(/-/g, "+").replace(/_/g, "/");
  return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
}
