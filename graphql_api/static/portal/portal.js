// HatchBeacon Webhooks customer portal: Settings → Webhooks, a client of the public GraphQL API only.
// Plain ES modules: htm + Preact and the graphql-ws client, built from npm into ../vendor (never committed).
import { html, render, useState, useEffect, useLayoutEffect, useRef, useCallback } from '../vendor/htm-preact.mjs';
import { createClient } from '../vendor/graphql-ws/client.mjs';

const STORAGE_KEY = 'hbWebhooksPortalSession';
const GRAPHQL_URL = new URL('graphql', document.baseURI);
const WS_URL = new URL(GRAPHQL_URL);
WS_URL.protocol = GRAPHQL_URL.protocol === 'https:' ? 'wss:' : 'ws:';
const PAGE_SIZE = 20;
const STATUSES = ['PENDING', 'SUCCEEDED', 'FAILED', 'HELD'];

// ------------------------------------------------------------------------------------------- theme
(() => {
  const params = new URLSearchParams(location.search);
  const theme = params.get('theme');
  if (theme === 'light' || theme === 'dark') document.documentElement.dataset.theme = theme;
  else if (matchMedia('(prefers-color-scheme: dark)').matches) document.documentElement.dataset.theme = 'dark';
  const accent = params.get('accent');
  if (accent && /^#[0-9a-fA-F]{6}$/.test(accent)) document.documentElement.style.setProperty('--hb-accent', accent);
})();

// ----------------------------------------------------------------------------------------- session
// sessionStorage, or memory when the browser denies storage to this frame (third-party storage blocked in
// an embedding): the session then works until a reload.
const store = (() => {
  try {
    const storage = window.sessionStorage;
    storage.getItem(STORAGE_KEY);
    return storage;
  } catch {
    const memory = new Map();
    return {
      getItem: (key) => (memory.has(key) ? memory.get(key) : null),
      setItem: (key, value) => memory.set(key, String(value)),
      removeItem: (key) => memory.delete(key),
    };
  }
})();
// The token arrives in the fragment (never sent to a server), moves to sessionStorage (never
// localStorage) and is removed from the address bar; it is cleared on expiry and sign-out.
function takeSession() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get('token');
  if (token) {
    store.setItem(STORAGE_KEY, JSON.stringify({ token }));
    history.replaceState(null, '', location.pathname + location.search);
  }
  try {
    const saved = JSON.parse(store.getItem(STORAGE_KEY) || 'null');
    return saved && typeof saved.token === 'string' ? saved : null;
  } catch {
    return null;
  }
}

const session = { token: null, expiresAt: null, expired: false, timer: null, onExpire: () => {} };

function expireSession() {
  if (session.expired) return;
  session.expired = true;
  session.token = null;
  store.removeItem(STORAGE_KEY);
  clearTimeout(session.timer);
  live.dispose();
  session.onExpire();
}

// The wait is timed against the server's clock, never the browser's: `serverNow` is the HTTP Date of the
// answer that carried expiresAt (a browser clock that is fast or slow would end a valid session at once or
// keep showing an ended one). Without a usable Date header it falls back to the browser's clock. The
// server's own UNAUTHENTICATED answer and the WebSocket's 4403 close end a session that really ended.
function scheduleExpiry(expiresAt, serverNow) {
  session.expiresAt = expiresAt;
  const saved = JSON.parse(store.getItem(STORAGE_KEY) || '{}');
  store.setItem(STORAGE_KEY, JSON.stringify({ ...saved, expiresAt }));
  clearTimeout(session.timer);
  const now = Number.isFinite(serverNow) ? serverNow : Date.now();
  const wait = new Date(expiresAt).getTime() - now;
  // setTimeout overflows past ~24.8 days; sessions last at most 24 h.
  session.timer = setTimeout(expireSession, Math.max(0, wait));
}

class ApiError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

async function gql(query, variables = {}) {
  return (await gqlRequest(query, variables)).data;
}

// The answer's data and the server's clock at answering (ms since the epoch, from the HTTP Date header;
// NaN when there is none).
async function gqlRequest(query, variables = {}) {
  if (!session.token) throw new ApiError('The session has ended.', 'UNAUTHENTICATED');
  let response;
  try {
    response = await fetch(GRAPHQL_URL, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${session.token}` },
      body: JSON.stringify({ query, variables }),
      credentials: 'omit',
      cache: 'no-store',
    });
  } catch {
    throw new ApiError('The service cannot be reached. Check your connection and try again.', 'NETWORK');
  }
  let body;
  try {
    body = await response.json();
  } catch {
    throw new ApiError(`The service answered with HTTP ${response.status}.`, 'HTTP');
  }
  if (body.errors && body.errors.length) {
    const code = body.errors[0].extensions && body.errors[0].extensions.code;
    if (code === 'UNAUTHENTICATED') expireSession();
    throw new ApiError(body.errors[0].message, code);
  }
  return { data: body.data, serverNow: Date.parse(response.headers.get('date') || '') };
}

// -------------------------------------------------------------------------------------- live feed
// One graphql-transport-ws connection for both subscriptions. It reconnects for as long as the session
// lasts (backoff up to 10 s); after a reconnect every screen re-queries what it shows, because the feed
// is live only: what happened while disconnected is caught up from the queries.
const ATTEMPT_FIELDS = `id deliveryId webhookId event number trigger startedAt durationMs statusCode
  responseBody error errorClass deliveryStatus nextAttemptAt`;
const WEBHOOK_FIELDS = 'id name url events enabled disabledReason disabledAt createdAt updatedAt consecutiveFailures '
  + 'breaker { state since unreachableStreak }';

const live = {
  client: null,
  state: 'connecting',
  connectedOnce: false,
  resyncs: 0,
  listeners: new Set(),
  stops: [],
  emit(kind, value) {
    for (const listener of this.listeners) listener(kind, value);
  },
  start() {
    this.client = createClient({
      url: WS_URL.href,
      lazy: false,
      connectionParams: () => ({ Authorization: `Bearer ${session.token}` }),
      retryAttempts: Infinity,
      shouldRetry: () => !session.expired,
      retryWait: async (retries) => {
        await new Promise((resolve) => setTimeout(resolve, Math.min(10000, 500 * 2 ** retries)));
      },
      on: {
        connected: () => {
          const again = this.connectedOnce;
          this.connectedOnce = true;
          this.state = 'live';
          if (again) this.resyncs += 1;
          this.emit('state', { state: 'live', resynced: again });
        },
        closed: (event) => {
          if (session.expired) return;
          this.state = 'reconnecting';
          this.emit('state', { state: 'reconnecting' });
          // 4403: the server refused the session (expired or revoked): confirm over HTTP.
          if (event && event.code === 4403) gql('{ portalSession { id } }').catch(() => {});
        },
      },
    });
    // A subscription the server ends while the socket stays up (this page too slow to keep up, or the
    // feed interrupted: it says so in a last `next`) may have missed messages: every screen re-queries,
    // as after a reconnect, and the subscription starts again.
    // It subscribes again first and re-queries after, so that nothing falls between the two; a server that
    // keeps ending it at once is asked again at most every 2 s.
    const subscribe = (query, kind) => {
      let stopped = false;
      let stop = () => {};
      let lastStart = 0;
      const start = () => {
        lastStart = Date.now();
        stop = this.client.subscribe({ query }, {
          next: (result) => result.data && this.emit(kind, Object.values(result.data)[0]),
          error: () => {},
          complete: () => {
            const again = () => {
              if (stopped || session.expired || !this.client) return;
              start();
              this.resyncs += 1;
              this.emit('state', { state: 'live', resynced: true });
            };
            if (Date.now() - lastStart < 2000) setTimeout(again, 2000);
            else again();
          },
        });
      };
      start();
      return () => { stopped = true; stop(); };
    };
    this.stops = [
      subscribe(`subscription { deliveryAttempts { ${ATTEMPT_FIELDS} } }`, 'attempt'),
      subscribe(`subscription { webhookStatusChanged { ${WEBHOOK_FIELDS} } }`, 'webhook'),
    ];
  },
  dispose() {
    for (const stop of this.stops) stop();
    this.stops = [];
    if (this.client) this.client.dispose();
    this.client = null;
  },
};

function useLive(handler) {
  const ref = useRef(handler);
  ref.current = handler;
  // A layout effect: it runs before the browser handles another event, so no feed message or
  // connection change can arrive between the first render and the listener being in place.
  useLayoutEffect(() => {
    const listener = (kind, value) => ref.current(kind, value);
    live.listeners.add(listener);
    return () => live.listeners.delete(listener);
  }, []);
}

// ----------------------------------------------------------------------------------------- helpers
const when = (iso) => (iso ? new Date(iso).toLocaleString() : '');
const eventName = (value) => value.toLowerCase();

// Errors by the form field that shows them; the rest (no field, or one the form has no input for, such as
// the webhook's `id` when it was deleted meanwhile) are shown above the form, never dropped.
const FORM_FIELDS = ['name', 'url', 'events'];
function fieldErrors(errors) {
  const byField = {};
  const general = [];
  for (const error of errors || []) {
    const field = (error.field || '').split('.').pop();
    if (FORM_FIELDS.includes(field)) (byField[field] = byField[field] || []).push(error.message);
    else general.push(error.message);
  }
  return { byField, general };
}

function useFocusOnMount() {
  const ref = useRef(null);
  useEffect(() => {
    if (ref.current) ref.current.focus();
  }, []);
  return ref;
}

// An enabled webhook whose circuit breaker is open (or probing): its attempts wait for the probe.
const paused = (webhook) => webhook.enabled && webhook.breaker && webhook.breaker.state !== 'CLOSED';
const streak = (n) => (n === 1 ? 'once' : `${n} times in a row`);

function StatusBadge({ webhook }) {
  if (webhook.enabled) return html`<span class="badge ok">Enabled</span>`;
  return html`<span class="badge off">Disabled</span>`;
}

function DeliveryBadge({ status }) {
  const cls = { SUCCEEDED: 'ok', FAILED: 'off', PENDING: 'pending', HELD: 'held' }[status] || '';
  return html`<span class=${`badge ${cls}`}>${status.toLowerCase()}</span>`;
}

function WebhookFacts({ webhook }) {
  return html`<dl class="meta">
    <dt>URL</dt><dd class="mono">${webhook.url}</dd>
    <dt>Events</dt><dd>${webhook.events.map(eventName).join(', ')}</dd>
    <dt>Status</dt>
    <dd><${StatusBadge} webhook=${webhook} />
      ${!webhook.enabled && webhook.disabledReason ? html` ${webhook.disabledReason}` : ''}
      ${!webhook.enabled && webhook.disabledAt ? html` <span class="muted">(since ${when(webhook.disabledAt)})</span>` : ''}
    </dd>
    ${paused(webhook) ? html`<dt>Delivery</dt>
    <dd><span class="badge held">Paused</span>${' '}
      ${`Your endpoint timed out or refused the connection ${streak(webhook.breaker.unreachableStreak)}`}
      ${webhook.breaker.since ? html` <span class="muted">(since ${when(webhook.breaker.since)})</span>` : ''}.
      One attempt at a time checks it; the others wait and go out once it answers.</dd>` : ''}
    <dt>Failures in a row</dt><dd>${webhook.consecutiveFailures}</dd>
  </dl>`;
}

function Dialog({ open, title, children, onClose, labelId }) {
  const ref = useRef(null);
  // A layout effect: the dialog closes (and the browser gives focus back) before other effects move focus.
  useLayoutEffect(() => {
    const dialog = ref.current;
    if (!dialog) return;
    if (open && !dialog.open) dialog.showModal();
    if (!open && dialog.open) dialog.close();
  }, [open]);
  return html`<dialog ref=${ref} aria-labelledby=${labelId} onCancel=${(e) => { e.preventDefault(); onClose(); }}>
    <h2 id=${labelId}>${title}</h2>
    ${open ? children : null}
  </dialog>`;
}

function SecretPanel({ secret, title, onDone, doneLabel }) {
  const [copied, setCopied] = useState('');
  const inputRef = useRef(null);
  const headingRef = useFocusOnMount();
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(secret);
      setCopied('Copied to the clipboard.');
    } catch {
      inputRef.current.select();
      setCopied('Select the secret and copy it with your keyboard (Ctrl+C or ⌘C).');
    }
  };
  return html`<section aria-labelledby="secret-title">
    <h2 id="secret-title" tabindex="-1" ref=${headingRef}>${title}</h2>
    <div class="notice warning" role="note">
      <strong>Copy this signing secret now.</strong> It will not be shown again. Your endpoint uses it to
      verify the <code>X-Webhook-Signature</code> header of every delivery.
    </div>
    <label for="secret-value">Signing secret</label>
    <div class="secret-row">
      <input id="secret-value" type="text" readonly value=${secret} ref=${inputRef} data-testid="secret" />
      <button type="button" class="primary" onClick=${copy}>Copy</button>
    </div>
    <p role="status" class="hint">${copied}</p>
    <div class="actions"><button type="button" onClick=${onDone}>${doneLabel}</button></div>
  </section>`;
}

// --------------------------------------------------------------------------------- webhook form
function WebhookForm({ eventTypes, initial, submitLabel, onSubmit, onCancel }) {
  const [name, setName] = useState(initial ? initial.name : '');
  const [url, setUrl] = useState(initial ? initial.url : '');
  const [events, setEvents] = useState(new Set(initial ? initial.events : []));
  const [errors, setErrors] = useState({ byField: {}, general: [] });
  const [busy, setBusy] = useState(false);
  const formRef = useRef(null);
  const allChecked = eventTypes.length > 0 && eventTypes.every((t) => events.has(t.value));

  const toggle = (value) => {
    const next = new Set(events);
    if (next.has(value)) next.delete(value);
    else next.add(value);
    setEvents(next);
  };
  const toggleAll = () => setEvents(allChecked ? new Set() : new Set(eventTypes.map((t) => t.value)));

  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    try {
      const ordered = eventTypes.map((t) => t.value).filter((v) => events.has(v));
      const result = await onSubmit({ name, url, events: ordered });
      const found = fieldErrors(result);
      setErrors(found);
      if (result && result.length) {
        const first = FORM_FIELDS.find((f) => found.byField[f]);
        const target = first && formRef.current.querySelector(first === 'events' ? '#select-all' : `#webhook-${first}`);
        if (target) target.focus();
      }
    } catch (err) {
      setErrors({ byField: {}, general: [err.message] });
    } finally {
      setBusy(false);
    }
  };

  const described = (field, hint) =>
    [hint, errors.byField[field] ? `${field}-error` : null].filter(Boolean).join(' ') || undefined;

  return html`<form ref=${formRef} onSubmit=${submit} novalidate>
    ${errors.general.length ? html`<p class="error" role="alert">${errors.general.join(' ')}</p>` : ''}
    <div class="field">
      <label for="webhook-name">Name</label>
      <input id="webhook-name" type="text" value=${name} onInput=${(e) => setName(e.target.value)}
        aria-invalid=${errors.byField.name ? 'true' : 'false'} aria-describedby=${described('name')} autocomplete="off" />
      ${errors.byField.name ? html`<p class="error" id="name-error">${errors.byField.name.join(' ')}</p>` : ''}
    </div>
    <div class="field">
      <label for="webhook-url">Endpoint URL</label>
      <input id="webhook-url" type="url" inputmode="url" value=${url} onInput=${(e) => setUrl(e.target.value)}
        placeholder="https://example.com/webhooks" aria-invalid=${errors.byField.url ? 'true' : 'false'}
        aria-describedby=${described('url', 'url-hint')} autocomplete="off" spellcheck="false" />
      <p class="hint" id="url-hint">An HTTPS URL that answers POST requests with a 2xx status.</p>
      ${errors.byField.url ? html`<p class="error" id="url-error">${errors.byField.url.join(' ')}</p>` : ''}
    </div>
    <fieldset aria-describedby=${errors.byField.events ? 'events-error' : undefined}>
      <legend>Events</legend>
      ${errors.byField.events ? html`<p class="error" id="events-error">${errors.byField.events.join(' ')}</p>` : ''}
      <div class="check">
        <input id="select-all" type="checkbox" checked=${allChecked} onChange=${toggleAll} />
        <label for="select-all"><strong>Select all</strong></label>
      </div>
      <div class="events">
        ${eventTypes.map((t) => html`<div class="check" key=${t.value}>
          <input id=${`event-${t.name}`} type="checkbox" checked=${events.has(t.value)}
            onChange=${() => toggle(t.value)} aria-describedby=${`event-${t.name}-desc`} />
          <label for=${`event-${t.name}`}><span class="mono">${t.name}</span>
            <span class="desc" id=${`event-${t.name}-desc`}>${t.description}</span></label>
        </div>`)}
      </div>
    </fieldset>
    <div class="actions">
      <button type="submit" class="primary" disabled=${busy}>${submitLabel}</button>
      <button type="button" onClick=${onCancel}>Cancel</button>
    </div>
  </form>`;
}

// --------------------------------------------------------------------------------------- screens
function Heading({ children }) {
  const ref = useFocusOnMount();
  return html`<h1 tabindex="-1" ref=${ref}>${children}</h1>`;
}

function WebhookList({ go }) {
  const [items, setItems] = useState(null);
  const [page, setPage] = useState({ hasNextPage: false, endCursor: null });
  const [error, setError] = useState('');
  // As in the delivery log: a reload (after a reconnect) starts a new generation whose answers alone count,
  // and "Load more webhooks" is disabled while its page is on its way.
  const generation = useRef(0);
  const moreFor = useRef(null);
  const [loadingMore, setLoadingMore] = useState(false);

  const load = useCallback(async (after = null) => {
    const mine = after ? generation.current : ++generation.current;
    if (!after) {
      moreFor.current = null;
      setLoadingMore(false);
    } else {
      if (moreFor.current === mine) return;
      moreFor.current = mine;
      setLoadingMore(true);
    }
    try {
      const data = await gql(
        `query($after: String) { webhooks(first: ${PAGE_SIZE}, after: $after) {
          edges { node { ${WEBHOOK_FIELDS} } } pageInfo { hasNextPage endCursor } } }`,
        { after },
      );
      if (mine !== generation.current) return;
      const nodes = data.webhooks.edges.map((e) => e.node);
      setItems((old) => {
        if (!after || !old) return nodes;
        const shown = new Set(old.map((w) => w.id));
        return [...old, ...nodes.filter((w) => !shown.has(w.id))];
      });
      setPage(data.webhooks.pageInfo);
      setError('');
    } catch (err) {
      if (mine === generation.current) setError(err.message);
    } finally {
      if (after && moreFor.current === mine) {
        moreFor.current = null;
        setLoadingMore(false);
      }
    }
  }, []);
  useEffect(() => { load(); }, []);

  useLive((kind, value) => {
    if (kind === 'state' && value.resynced) load();
    if (kind === 'webhook') setItems((old) => old && old.map((w) => (w.id === value.id ? value : w)));
    if (kind === 'attempt' && value.deliveryStatus !== 'PENDING' && value.trigger !== 'TEST') {
      gql(`query($id: ID!) { webhook(id: $id) { ${WEBHOOK_FIELDS} } }`, { id: value.webhookId })
        .then((d) => d.webhook && setItems((old) => old && old.map((w) => (w.id === d.webhook.id ? d.webhook : w))))
        .catch(() => {});
    }
  });

  return html`<div>
    <${Heading}>Webhooks</${Heading}>
    <p class="muted">Endpoints that receive your account's events, signed and retried.</p>
    <div class="actions"><button type="button" class="primary" onClick=${() => go({ name: 'add' })}>Add Webhook</button></div>
    ${error ? html`<p class="error" role="alert">${error}</p>` : ''}
    ${items === null ? html`<p>Loading…</p>` : items.length === 0 ? html`<p>No webhooks yet.</p>` : html`
      <ul class="cards" aria-label="Webhooks">
        ${items.map((w) => html`<li class="card" key=${w.id}>
          <h2><button type="button" class="link" onClick=${() => go({ name: 'webhook', id: w.id })}>${w.name}</button></h2>
          <${WebhookFacts} webhook=${w} />
        </li>`)}
      </ul>`}
    ${page.hasNextPage ? html`<div class="actions"><button type="button" onClick=${() => load(page.endCursor)}
      disabled=${loadingMore}>Load more webhooks</button></div>` : ''}
  </div>`;
}

function AddWebhook({ go, eventTypes }) {
  const [created, setCreated] = useState(null);
  const create = async (input) => {
    const data = await gql(
      `mutation($input: CreateWebhookInput!) { createWebhook(input: $input) {
        webhook { id name } secret errors { field code message } } }`,
      { input },
    );
    const result = data.createWebhook;
    if (!result.errors.length) setCreated(result);
    return result.errors;
  };
  if (created) {
    return html`<div>
      <${Heading}>Webhook created</${Heading}>
      <${SecretPanel} secret=${created.secret} title=${`Signing secret for ${created.webhook.name}`}
        doneLabel="I have copied the secret: continue" onDone=${() => go({ name: 'webhook', id: created.webhook.id })} />
    </div>`;
  }
  return html`<div>
    <${Heading}>Add Webhook</${Heading}>
    <${WebhookForm} eventTypes=${eventTypes} submitLabel="Create webhook" onSubmit=${create} onCancel=${() => go({ name: 'list' })} />
  </div>`;
}

function AttemptDetails({ attempt }) {
  const headers = (value) => (value ? Object.entries(value).map(([k, v]) => `${k}: ${v}`).join('\n') : '');
  return html`<div class="attempt">
    <div class="row"><strong>Attempt ${attempt.number}</strong>
      <span>${attempt.trigger.toLowerCase()}</span>
      <span>${attempt.statusCode ? `HTTP ${attempt.statusCode}` : 'no response'}</span>
      <span>${attempt.durationMs != null ? `${attempt.durationMs} ms` : ''}</span>
      <span class="muted">${when(attempt.startedAt)}</span></div>
    ${attempt.error ? html`<p class="error">${attempt.errorClass ? `${attempt.errorClass}: ` : ''}${attempt.error}</p>` : ''}
    ${attempt.requestHeaders ? html`<div>Request headers (signatures redacted)<pre>${headers(attempt.requestHeaders)}</pre></div>` : ''}
    ${attempt.responseHeaders ? html`<div>Response headers<pre>${headers(attempt.responseHeaders)}</pre></div>` : ''}
    ${attempt.responseBody ? html`<div>Response body (first 4 KiB)<pre>${attempt.responseBody}</pre></div>` : ''}
  </div>`;
}

function DeliveryRow({ delivery, onChanged, refreshKey }) {
  const [open, setOpen] = useState(false);
  const [attempts, setAttempts] = useState(null);
  const [message, setMessage] = useState('');
  const load = async () => {
    const data = await gql(
      `query($id: ID!) { delivery(id: $id) { id status attemptCount attempts { ${ATTEMPT_FIELDS} requestHeaders responseHeaders } } }`,
      { id: delivery.id },
    );
    if (data.delivery) setAttempts(data.delivery.attempts);
  };
  useEffect(() => { if (open) load().catch((e) => setMessage(e.message)); }, [open, refreshKey]);
  const retry = async () => {
    try {
      const data = await gql(
        `mutation($id: ID!) { retryDelivery(id: $id) { delivery { id status attemptCount } errors { field message } } }`,
        { id: delivery.id },
      );
      const result = data.retryDelivery;
      setMessage(result.errors.length ? result.errors.map((e) => e.message).join(' ') : 'Retry queued.');
      if (result.delivery) onChanged(result.delivery);
    } catch (err) {
      setMessage(err.message);
    }
  };
  const panel = `delivery-${delivery.id}`;
  return html`<li data-delivery=${delivery.id}>
    <div class="row">
      <span class="grow"><span class="mono">${delivery.event}</span> <span class="muted">${when(delivery.createdAt)}</span></span>
      <${DeliveryBadge} status=${delivery.status} />
      <span>${delivery.attemptCount} attempt${delivery.attemptCount === 1 ? '' : 's'}</span>
      <button type="button" aria-expanded=${open ? 'true' : 'false'} aria-controls=${panel}
        onClick=${() => setOpen(!open)}>${open ? 'Hide' : 'Details'}<span class="sr-only"> of ${delivery.event} delivery</span></button>
      ${delivery.status === 'PENDING' ? '' : html`<button type="button" onClick=${retry}>Retry<span class="sr-only"> ${delivery.event} delivery</span></button>`}
    </div>
    <p role="status" class="hint">${message}</p>
    <div id=${panel} hidden=${!open}>
      ${open && attempts === null ? html`<p>Loading attempts…</p>` : ''}
      ${open && attempts && attempts.length === 0 ? html`<p class="muted">No attempt yet.</p>` : ''}
      ${open && attempts ? attempts.map((a) => html`<${AttemptDetails} key=${a.id} attempt=${a} />`) : ''}
    </div>
  </li>`;
}

function DeliveryLog({ webhookId, eventTypes }) {
  const [status, setStatus] = useState('');
  const [event, setEvent] = useState('');
  const [items, setItems] = useState(null);
  const [page, setPage] = useState({ hasNextPage: false, endCursor: null });
  const [error, setError] = useState('');
  const [refresh, setRefresh] = useState(0);
  // Every (re)load of the first page starts a new generation: an answer for an older one (another filter,
  // before a reconnect) is ignored, whether it is a first page, an older page or a live delivery's row.
  const generation = useRef(0);
  const more = useRef(false); // the log has rows older than the loaded ones (mirrors page.hasNextPage)
  // The generation an older page is being loaded for: its button is disabled until the answer is in.
  const olderFor = useRef(null);
  const [loadingOlder, setLoadingOlder] = useState(false);
  const query = `query($webhookId: ID, $status: DeliveryStatus, $event: String, $after: String) {
    deliveries(webhookId: $webhookId, status: $status, event: $event, first: ${PAGE_SIZE}, after: $after) {
      edges { node { id webhookId event status attemptCount createdAt } } pageInfo { hasNextPage endCursor } } }`;
  const load = async (after = null) => {
    const mine = after ? generation.current : ++generation.current;
    if (!after) {
      olderFor.current = null;
      setLoadingOlder(false);
    } else {
      if (olderFor.current === mine) return; // that page is on its way already
      olderFor.current = mine;
      setLoadingOlder(true);
    }
    try {
      const data = await gql(query, { webhookId, status: status || null, event: event || null, after });
      if (mine !== generation.current) return;
      const nodes = data.deliveries.edges.map((e) => e.node);
      setItems((old) => {
        if (!after || !old) return nodes;
        // a row shown live meanwhile can be on this page too: each delivery is listed once
        const shown = new Set(old.map((d) => d.id));
        return [...old, ...nodes.filter((d) => !shown.has(d.id))];
      });
      more.current = data.deliveries.pageInfo.hasNextPage;
      setPage(data.deliveries.pageInfo);
      setError('');
    } catch (err) {
      if (mine === generation.current) setError(err.message);
    } finally {
      if (after && olderFor.current === mine) {
        olderFor.current = null;
        setLoadingOlder(false);
      }
    }
  };
  useEffect(() => { load(); }, [status, event, webhookId]);
  // A live attempt of a delivery that is not listed: the delivery is fetched and placed by its own time,
  // newest first. Older than every listed row while older pages are not loaded: it is left for
  // "Load older deliveries", which lists it in its place.
  const place = async (attempt) => {
    const mine = generation.current;
    const data = await gql(`query($id: ID!) { delivery(id: $id) { id webhookId event status attemptCount createdAt } }`,
      { id: attempt.deliveryId });
    const found = data.delivery;
    if (!found || mine !== generation.current) return;
    const row = found.attemptCount >= attempt.number
      ? found : { ...found, status: attempt.deliveryStatus, attemptCount: attempt.number };
    if ((status && status !== row.status) || (event && event !== row.event)) return;
    setItems((old) => {
      if (!old) return old;
      if (old.some((d) => d.id === row.id)) {
        return old.map((d) => (d.id === row.id && row.attemptCount >= d.attemptCount ? { ...d, ...row } : d));
      }
      const at = Date.parse(row.createdAt);
      const index = old.findIndex((d) => Date.parse(d.createdAt) < at);
      if (index === -1) return more.current ? old : [...old, row];
      return [...old.slice(0, index), row, ...old.slice(index)];
    });
  };
  useLive((kind, value) => {
    if (kind === 'state' && value.resynced) { load(); setRefresh((n) => n + 1); }
    if (kind !== 'attempt' || value.webhookId !== webhookId) return;
    setRefresh((n) => n + 1);
    if (items && !items.some((d) => d.id === value.deliveryId)) place(value).catch(() => {});
    setItems((old) => old && old.map((d) => (d.id === value.deliveryId
      ? { ...d, status: value.deliveryStatus, attemptCount: Math.max(d.attemptCount, value.number) } : d)));
  });
  // A mutation's answer can be older than an attempt already shown live: never go back in attempts.
  const changed = (d) =>
    setItems((old) => old.map((x) => (x.id === d.id && d.attemptCount >= x.attemptCount ? { ...x, ...d } : x)));
  const eventNames = ['webhook.test', ...eventTypes.map((t) => t.name)];
  return html`<section aria-labelledby="log-title">
    <h2 id="log-title">Delivery log</h2>
    <div class="filters">
      <div class="field"><label for="filter-status">Status</label>
        <select id="filter-status" value=${status} onChange=${(e) => setStatus(e.target.value)}>
          <option value="">All statuses</option>
          ${STATUSES.map((s) => html`<option value=${s}>${s.toLowerCase()}</option>`)}
        </select></div>
      <div class="field"><label for="filter-event">Event</label>
        <select id="filter-event" value=${event} onChange=${(e) => setEvent(e.target.value)}>
          <option value="">All events</option>
          ${eventNames.map((n) => html`<option value=${n}>${n}</option>`)}
        </select></div>
    </div>
    ${error ? html`<p class="error" role="alert">${error}</p>` : ''}
    ${items === null ? html`<p>Loading…</p>` : items.length === 0 ? html`<p class="muted">No deliveries match.</p>` : html`
      <ul class="log" aria-label="Deliveries">
        ${items.map((d) => html`<${DeliveryRow} key=${d.id} delivery=${d} onChanged=${changed} refreshKey=${refresh} />`)}
      </ul>`}
    ${page.hasNextPage ? html`<div class="actions"><button type="button" onClick=${() => load(page.endCursor)}
      disabled=${loadingOlder}>Load older deliveries</button></div>` : ''}
  </section>`;
}

function TestResult({ test }) {
  if (!test) return html`<div role="status" aria-live="polite"></div>`;
  const a = test.attempt;
  return html`<div class="notice info" role="status" aria-live="polite" data-testid="test-result">
    ${test.error ? html`<p class="error">${test.error}</p>` : !a ? html`<p>Test event sent; waiting for your endpoint…</p>` : html`
      <p><strong>Test ${a.deliveryStatus === 'SUCCEEDED' ? 'succeeded' : 'failed'}:</strong>${' '}
        ${a.statusCode ? `HTTP ${a.statusCode}` : 'no response'}${a.durationMs != null ? ` in ${a.durationMs} ms` : ''}</p>
      ${a.error ? html`<p class="error">${a.error}</p>` : ''}
      ${a.responseBody ? html`<div>Response body<pre>${a.responseBody}</pre></div>` : ''}`}
  </div>`;
}

function Recover({ webhookId }) {
  const [since, setSince] = useState(() => {
    const d = new Date(Date.now() - 24 * 3600 * 1000);
    return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  });
  const [count, setCount] = useState(null);
  const [message, setMessage] = useState('');
  const run = async (dryRun) => {
    try {
      const data = await gql(
        `mutation($id: ID!, $since: DateTime!, $dry: Boolean!) {
          recoverDeliveries(webhookId: $id, since: $since, dryRun: $dry) { count dryRun hasMore errors { field message } } }`,
        { id: webhookId, since: new Date(since).toISOString(), dry: dryRun },
      );
      const result = data.recoverDeliveries;
      if (result.errors.length) { setMessage(result.errors.map((e) => e.message).join(' ')); return; }
      const more = result.hasMore ? ' More match than one recovery sends: recover again for the rest.' : '';
      if (dryRun) { setCount(result.count); setMessage(`${result.count} failed or held deliveries since then would be sent again.${more}`); }
      else { setCount(null); setMessage(`${result.count} deliveries are being sent again.${more}`); }
    } catch (err) {
      setMessage(err.message);
    }
  };
  return html`<section aria-labelledby="recover-title">
    <h2 id="recover-title">Recover failed deliveries</h2>
    <div class="filters">
      <div class="field"><label for="recover-since">Failed since</label>
        <input id="recover-since" type="datetime-local" value=${since} onInput=${(e) => { setSince(e.target.value); setCount(null); }} /></div>
      <button type="button" onClick=${() => run(true)}>Count</button>
      ${count ? html`<button type="button" class="primary" onClick=${() => run(false)}>Recover ${count} deliveries</button>` : ''}
    </div>
    <p role="status" class="hint">${message}</p>
  </section>`;
}

function WebhookDetail({ id, go, eventTypes }) {
  const [webhook, setWebhook] = useState(null);
  const [missing, setMissing] = useState(false);
  const [mode, setMode] = useState('view'); // view | edit
  const [dialog, setDialog] = useState(null); // delete | rotate
  const [grace, setGrace] = useState('24');
  const [secret, setSecret] = useState(null);
  const [test, setTest] = useState(null);
  const [message, setMessage] = useState('');
  const triggerRef = useRef(null);
  // Test attempts by delivery id: the attempt can arrive on the feed before testWebhook's answer does.
  const testAttempts = useRef(new Map());

  // Why the webhook could not be loaded (shown, with Retry, while there is no webhook to show).
  const [loadError, setLoadError] = useState('');
  const load = async () => {
    const data = await gql(`query($id: ID!) { webhook(id: $id) { ${WEBHOOK_FIELDS} } }`, { id });
    setLoadError('');
    if (data.webhook) setWebhook(data.webhook);
    else setMissing(true);
  };
  const firstLoad = () => {
    setLoadError('');
    load().catch((e) => { setMessage(e.message); setLoadError(e.message); });
  };
  useEffect(firstLoad, [id]);

  const catchUpTest = async (current) => {
    if (!current || current.attempt || !current.deliveryId) return;
    const data = await gql(`query($id: ID!) { delivery(id: $id) { attempts { ${ATTEMPT_FIELDS} } } }`, { id: current.deliveryId });
    const attempts = data.delivery ? data.delivery.attempts : [];
    if (attempts.length) setTest((t) => (t && t.deliveryId === current.deliveryId ? { ...t, attempt: attempts[attempts.length - 1] } : t));
  };
  useLive((kind, value) => {
    if (kind === 'state' && value.resynced) { load().catch(() => {}); catchUpTest(test).catch(() => {}); }
    if (kind === 'webhook' && value.id === id) setWebhook(value);
    if (kind === 'attempt' && value.webhookId === id) {
      if (value.trigger === 'TEST') testAttempts.current.set(value.deliveryId, value);
      setTest((t) => (t && t.deliveryId === value.deliveryId ? { ...t, attempt: value } : t));
      if (value.deliveryStatus !== 'PENDING' && value.trigger !== 'TEST') load().catch(() => {});
    }
  });

  const closeDialog = () => {
    setDialog(null);
    if (triggerRef.current) triggerRef.current.focus();
  };
  const openDialog = (name, e) => { triggerRef.current = e.currentTarget; setDialog(name); };

  const update = async (input) => {
    const data = await gql(
      `mutation($id: ID!, $input: UpdateWebhookInput!) { updateWebhook(id: $id, input: $input) {
        webhook { ${WEBHOOK_FIELDS} } errors { field code message } } }`,
      { id, input },
    );
    const result = data.updateWebhook;
    if (result.webhook) setWebhook(result.webhook);
    return result.errors;
  };
  const setEnabled = async (enabled) => {
    try {
      const errors = await update({ enabled });
      setMessage(errors.length ? errors.map((e) => e.message).join(' ') : enabled ? 'Webhook enabled.' : 'Webhook disabled.');
    } catch (err) {
      setMessage(err.message);
    }
  };
  const runTest = async () => {
    setTest({ deliveryId: null, attempt: null });
    try {
      const data = await gql(`mutation($id: ID!) { testWebhook(id: $id) { delivery { id } errors { message } } }`, { id });
      const result = data.testWebhook;
      if (result.errors.length) setTest({ error: result.errors.map((e) => e.message).join(' ') });
      else setTest({ deliveryId: result.delivery.id, attempt: testAttempts.current.get(result.delivery.id) || null });
    } catch (err) {
      setTest({ error: err.message });
    }
  };
  const remove = async () => {
    try {
      const data = await gql(`mutation($id: ID!) { deleteWebhook(id: $id) { deletedId errors { message } } }`, { id });
      if (data.deleteWebhook.errors.length) { setMessage(data.deleteWebhook.errors.map((e) => e.message).join(' ')); closeDialog(); return; }
      setDialog(null);
      go({ name: 'list' });
    } catch (err) {
      setMessage(err.message);
      closeDialog();
    }
  };
  const rotate = async (e) => {
    e.preventDefault();
    try {
      const data = await gql(
        `mutation($id: ID!, $grace: Int!) { rotateWebhookSecret(id: $id, gracePeriodHours: $grace) {
          secret errors { field message } } }`,
        { id, grace: Number.parseInt(grace, 10) },
      );
      const result = data.rotateWebhookSecret;
      if (result.errors.length) { setMessage(result.errors.map((x) => x.message).join(' ')); closeDialog(); return; }
      setDialog(null);
      setSecret(result.secret);
    } catch (err) {
      setMessage(err.message);
      closeDialog();
    }
  };

  if (missing) {
    return html`<div><${Heading}>Webhook not found</${Heading}>
      <p>It may have been deleted.</p><button type="button" onClick=${() => go({ name: 'list' })}>All webhooks</button></div>`;
  }
  const back = html`<p class="crumb"><button type="button" class="link" onClick=${() => go({ name: 'list' })}>← All webhooks</button></p>`;
  if (!webhook && loadError) {
    return html`<div>
      ${back}
      <${Heading} key="failed">The webhook could not be loaded</${Heading}>
      <p class="error" role="alert">${loadError}</p>
      <div class="actions"><button type="button" class="primary" onClick=${firstLoad}>Retry</button></div>
    </div>`;
  }
  if (!webhook) return html`<div>${back}<p>Loading…</p></div>`;
  if (mode === 'edit') {
    return html`<div><${Heading} key="edit">Edit ${webhook.name}</${Heading}>
      <${WebhookForm} eventTypes=${eventTypes} initial=${webhook} submitLabel="Save changes"
        onSubmit=${async (input) => { const errors = await update(input); if (!errors.length) { setMode('view'); setMessage('Changes saved.'); } return errors; }}
        onCancel=${() => setMode('view')} /></div>`;
  }
  return html`<div>
    ${back}
    <${Heading} key="view">${webhook.name}</${Heading}>
    <${WebhookFacts} webhook=${webhook} />
    <div class="actions" role="group" aria-label="Webhook actions">
      <button type="button" class="primary" onClick=${runTest}>Test</button>
      <button type="button" onClick=${() => setMode('edit')}>Edit</button>
      ${webhook.enabled
        ? html`<button type="button" onClick=${() => setEnabled(false)}>Disable</button>`
        : html`<button type="button" onClick=${() => setEnabled(true)}>Enable</button>`}
      <button type="button" onClick=${(e) => openDialog('rotate', e)}>Rotate secret</button>
      <button type="button" class="danger" onClick=${(e) => openDialog('delete', e)}>Delete</button>
    </div>
    <p role="status" class="hint" data-testid="message">${message}</p>
    <${TestResult} test=${test} />
    ${secret ? html`<${SecretPanel} secret=${secret} title="New signing secret" doneLabel="I have copied the new secret"
      onDone=${() => { setSecret(null); setMessage('The new secret is in use.'); }} />` : ''}
    <div class="detail">
      <${DeliveryLog} webhookId=${id} eventTypes=${eventTypes} />
      <${Recover} webhookId=${id} />
    </div>
    <${Dialog} open=${dialog === 'delete'} title="Delete this webhook?" labelId="delete-title" onClose=${closeDialog}>
      <p>${webhook.name} stops receiving events at once. Its delivery log is kept until it expires. This cannot be undone.</p>
      <div class="actions">
        <button type="button" autofocus onClick=${closeDialog}>Cancel</button>
        <button type="button" class="danger" onClick=${remove}>Delete webhook</button>
      </div>
    </${Dialog}>
    <${Dialog} open=${dialog === 'rotate'} title="Rotate the signing secret?" labelId="rotate-title" onClose=${closeDialog}>
      <form onSubmit=${rotate} novalidate>
        <p>A new secret signs every delivery from now on. During the grace period the old one signs too, so you
          can update your endpoint without missing a delivery.</p>
        <div class="field"><label for="grace-hours">Grace period (hours, 0 to 168)</label>
          <input id="grace-hours" type="number" min="0" max="168" value=${grace} onInput=${(e) => setGrace(e.target.value)} autofocus /></div>
        <div class="actions">
          <button type="submit" class="primary">Rotate secret</button>
          <button type="button" onClick=${closeDialog}>Cancel</button>
        </div>
      </form>
    </${Dialog}>
  </div>`;
}

function Ended({ title, children }) {
  return html`<main class="page"><${Heading}>${title}</${Heading}>${children}</main>`;
}

function LiveStatus() {
  const [state, setState] = useState({ state: live.state, resynced: false, at: null });
  useLive((kind, value) => {
    if (kind === 'state') setState({ ...value, at: value.resynced ? new Date() : null });
  });
  // The connection may have changed state before this component's listener was in place.
  useLayoutEffect(() => {
    setState((shown) => (shown.state === live.state ? shown : { state: live.state, resynced: false, at: null }));
  }, []);
  const text = state.state === 'live'
    ? state.resynced ? `Live updates on; reconnected and refreshed at ${state.at.toLocaleTimeString()}` : 'Live updates on'
    : state.state === 'reconnecting'
      ? 'Connection lost: reconnecting. Changes made meanwhile are fetched again when it is back.'
      : 'Connecting live updates…';
  return html`<p class="live" data-state=${state.state} role="status" data-testid="live-status"><span class="dot" aria-hidden="true"></span>${text}</p>`;
}

function App() {
  const [phase, setPhase] = useState(session.token ? 'starting' : 'none'); // starting | ready | expired | none
  const [view, setView] = useState({ name: 'list' });
  const [eventTypes, setEventTypes] = useState([]);
  const [error, setError] = useState('');

  useEffect(() => {
    session.onExpire = () => setPhase('expired');
    if (!session.token) return;
    (async () => {
      try {
        const { data, serverNow } = await gqlRequest('{ portalSession { id expiresAt } eventTypes { value name description } }');
        if (!data.portalSession) {
          store.removeItem(STORAGE_KEY);
          session.token = null;
          setPhase('none');
          return;
        }
        scheduleExpiry(data.portalSession.expiresAt, serverNow);
        setEventTypes(data.eventTypes);
        live.start();
        setPhase('ready');
      } catch (err) {
        if (!session.expired) setError(err.message);
      }
    })();
  }, []);

  const go = (next) => setView(next);
  // The page shows the session ended only once the server says it revoked it: a failure (no network, an
  // error in the answer) leaves the session working, says so and offers to try again.
  const [ending, setEnding] = useState({ busy: false, error: '' });
  const signOut = async () => {
    setEnding({ busy: true, error: '' });
    try {
      const data = await gql('mutation { revokePortalSession { revokedId errors { message } } }');
      const result = data.revokePortalSession;
      if (result.errors.length || !result.revokedId) {
        throw new Error(result.errors.map((e) => e.message).join(' ') || 'The service did not end it.');
      }
      expireSession();
    } catch (err) {
      // UNAUTHENTICATED: the session had already ended, and the page says so (gql ended it here too).
      if (session.expired) return;
      setEnding({ busy: false, error: err.message });
    }
  };

  if (phase === 'expired') {
    return html`<${Ended} title="Session expired"><p>For your security this page's session has ended. Go back to the
      product and open <strong>Settings → Webhooks</strong> again to continue.</p></${Ended}>`;
  }
  if (phase === 'none') {
    return html`<${Ended} title="No session"><p>This page opens from the product's <strong>Settings → Webhooks</strong>,
      which gives it a session. Open it from there.</p></${Ended}>`;
  }
  if (phase === 'starting') {
    return html`<main class="page">${error ? html`<p class="error" role="alert">${error}</p>` : html`<p>Loading…</p>`}</main>`;
  }
  return html`<div>
    <header class="page bar">
      <${LiveStatus} />
      <button type="button" class="link" onClick=${signOut} disabled=${ending.busy}>End session</button>
      ${ending.error ? html`<div class="notice warning bar-notice" role="alert">
        <p>The session could not be ended and is still active: ${ending.error}</p>
        <button type="button" onClick=${signOut} disabled=${ending.busy}>Try again</button>
      </div>` : ''}
    </header>
    <main class="page">
      ${view.name === 'list' ? html`<${WebhookList} go=${go} />` : ''}
      ${view.name === 'add' ? html`<${AddWebhook} go=${go} eventTypes=${eventTypes} />` : ''}
      ${view.name === 'webhook' ? html`<${WebhookDetail} key=${view.id} id=${view.id} go=${go} eventTypes=${eventTypes} />` : ''}
    </main>
  </div>`;
}

const saved = takeSession();
session.token = saved ? saved.token : null;
const root = document.getElementById('app');
root.textContent = '';
render(html`<${App} />`, root);
