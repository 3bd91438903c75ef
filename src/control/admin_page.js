// The admin status page's script (served as /page.js).
//
// It polls GET /status every POLL_MS and draws what it says: pools and their headroom, a row
// per backend with Drain / Maint / Enable buttons (POSTs to /pools/{pool}/backends/{id}/{action},
// then a refresh), a chart of sessions over the last minutes from the samples it keeps, and the
// recent events. Everything from the API goes into the DOM as text (textContent, attributes
// set one by one), never as HTML, so an id or an error message such as "<script>" shows as
// itself.
//
// The admin token: when the listener answers 401 (a mutation with `[admin] token` set, or any
// poll with `token_for_reads`), the page shows a field asking for it, keeps it in this tab's
// sessionStorage and sends it as `Authorization: Bearer <token>`; it never goes into a URL.
(() => {
  'use strict';

  const POLL_MS = 3000;
  const WINDOW_MS = 5 * 60 * 1000;
  const TOKEN_KEY = 'rtcgate.adminToken';
  const SVG = 'http://www.w3.org/2000/svg';
  const ACTIONS = [['drain', 'Drain'], ['maint', 'Maint'], ['enable', 'Enable']];

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, ...children) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  };
  const signal = (name, detail) => document.dispatchEvent(new CustomEvent(name, { detail }));

  // ---- talking to the listener ------------------------------------------------------------

  class Unauthorized extends Error {}

  async function call(method, path) {
    const headers = { Accept: 'application/json' };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = 'Bearer ' + token;
    const resp = await fetch(path, { method, headers, cache: 'no-store', credentials: 'same-origin' });
    if (resp.status === 401) throw new Unauthorized(method + ' ' + path);
    let body = null;
    try {
      body = await resp.json();
    } catch (_) {
      // Not JSON: the status says enough.
    }
    if (!resp.ok) {
      const why = body && typeof body.error === 'string' ? body.error : 'HTTP ' + resp.status;
      throw new Error(method + ' ' + path + ': ' + why);
    }
    return body;
  }

  // Runs `f`, asking for the token (with `why`) each time the listener answers 401.
  async function authorized(f, why) {
    for (;;) {
      try {
        return await f();
      } catch (e) {
        if (!(e instanceof Unauthorized)) throw e;
        const had = sessionStorage.getItem(TOKEN_KEY);
        if (had) sessionStorage.removeItem(TOKEN_KEY);
        await askToken(had ? 'That token was refused. ' + why : why);
      }
    }
  }

  let tokenWaiters = [];
  function askToken(why) {
    const given = new Promise((resolve) => tokenWaiters.push(resolve));
    $('token-why').textContent = why;
    $('token').hidden = false;
    $('token-input').focus();
    signal('rtcgate:token-asked', why);
    return given;
  }

  function tokenGiven(ev) {
    ev.preventDefault();
    const token = $('token-input').value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $('token-input').value = '';
    $('token').hidden = true;
    const waiting = tokenWaiters;
    tokenWaiters = [];
    waiting.forEach((resolve) => resolve());
  }

  // ---- polling ----------------------------------------------------------------------------

  let asked = 0;
  let shown = 0;
  const samples = []; // { t, pools: { name: sessions } }, oldest first, WINDOW_MS at most

  // Fetches /status and draws it; a slower answer never overwrites a newer one.
  async function refresh() {
    const mine = ++asked;
    const status = await authorized(() => call('GET', '/status'), 'Reading /status needs the admin token.');
    if (mine < shown) return;
    shown = mine;
    draw(status);
    signal('rtcgate:refreshed');
  }

  async function poll() {
    try {
      await refresh();
    } catch (e) {
      say('Cannot read /status: ' + e.message, true);
    }
    setTimeout(poll, POLL_MS);
  }

  // ---- drawing ----------------------------------------------------------------------------

  function say(text, error) {
    const m = $('message');
    m.textContent = text;
    m.className = error ? 'error' : '';
    m.hidden = false;
  }

  function draw(status) {
    const pools = Array.isArray(status.pools) ? status.pools : [];
    drawPools(pools);
    drawBackends(pools);
    sample(pools);
    drawChart();
    drawEvents(Array.isArray(status.events) ? status.events : []);
    $('updated').textContent = 'Updated ' + new Date().toLocaleTimeString() + ', every ' + POLL_MS / 1000 + ' s.';
    $('config').textContent = status.config ? 'Config: ' + status.config : '';
    if ($('message').classList.contains('error') && $('message').textContent.startsWith('Cannot read')) {
      $('message').hidden = true;
    }
  }

  // A bar of `n` against `max` (no bar when there is no cap), and the figures.
  function meter(n, max) {
    if (!(max > 0)) return el('span', { class: 'count' }, n + ' (no cap)');
    const share = Math.min(1, n / max);
    const fill = el('span');
    fill.style.width = (share * 100).toFixed(1) + '%';
    const cls = share >= 1 ? 'meter full' : share >= 0.8 ? 'meter high' : 'meter';
    const bar = el('span', { class: cls, role: 'meter', 'aria-valuenow': n, 'aria-valuemin': 0, 'aria-valuemax': max }, fill);
    return el('span', {}, bar, el('span', { class: 'count' }, n + ' / ' + max));
  }

  function drawPools(pools) {
    const box = $('pools');
    box.replaceChildren();
    if (pools.length === 0) box.append(el('p', { class: 'empty' }, 'No pools.'));
    for (const p of pools) {
      const share = Number(p.headroom) || 0;
      const card = el('div', { class: 'pool', 'data-pool': p.name },
        el('h3', {}, p.name),
        el('div', {}, 'headroom ', el('span', { class: share < 0.2 ? 'headroom low' : 'headroom' }, Math.round(share * 100) + '%')),
        // Headroom counts the backends that take new users (up and enabled) only.
        el('div', { title: 'on the backends taking new users' }, 'sessions ', meter(p.sessions, p.capacity_sessions)));
      if (p.capacity_rooms !== null && p.capacity_rooms !== undefined) {
        card.append(el('div', { title: 'on the backends taking new users' }, 'rooms ', meter(p.rooms, p.capacity_rooms)));
      }
      card.append(el('div', { class: 'note' }, 'of the backends taking new users'));
      const scale = Array.isArray(p.scale) ? p.scale[p.scale.length - 1] : null;
      if (scale) card.append(el('div', { class: 'note' }, 'scale ' + scale.direction + ': ' + scale.decision));
      box.append(card);
    }
  }

  function drawBackends(pools) {
    const body = $('backends').tBodies[0];
    body.replaceChildren();
    for (const p of pools) {
      for (const b of p.backends || []) body.append(backendRow(p.name, b));
    }
    if (body.rows.length === 0) body.append(el('tr', {}, el('td', { colspan: 10, class: 'empty' }, 'No backends configured.')));
  }

  function backendRow(pool, b) {
    const shown = b.drained ? 'drained' : b.state;
    const state = el('td', {}, el('span', { class: 'state ' + shown }, shown));
    // Down says nothing of the operator's state: show it beside.
    if (b.state === 'down' && b.admin && b.admin !== 'enabled') state.append(el('span', { class: 'note' }, b.admin));
    if (b.admin_by === 'agent') state.append(el('span', { class: 'note' }, 'by its agent'));

    const c = b.last_check;
    const check = c
      ? el('td', { class: 'check ' + c.result }, c.result + ' ',
        el('span', { class: 'when', title: c.at }, new Date(c.at).toLocaleTimeString()), ' ', c.detail)
      : el('td', { class: 'check' }, 'none yet');

    const actions = el('td', { class: 'actions' });
    const admin = b.admin || (b.state === 'maint' ? 'maint' : b.state === 'draining' ? 'draining' : 'enabled');
    for (const [action, label] of ACTIONS) {
      const current = { drain: 'draining', maint: 'maint', enable: 'enabled' }[action] === admin;
      const button = el('button', { type: 'button', 'data-action': action, title: 'POST ' + actionPath(pool, b.id, action) }, label);
      button.disabled = current;
      button.addEventListener('click', () => act(button, pool, b.id, action));
      actions.append(button);
    }

    return el('tr', { 'data-pool': pool, 'data-id': b.id },
      el('td', {}, pool),
      el('td', { class: 'id' }, b.id),
      el('td', {}, b.address),
      state,
      el('td', { class: 'bar' }, meter(b.sessions, b.max_sessions)),
      el('td', { class: 'bar' }, meter(b.rooms, b.max_rooms)),
      el('td', { class: 'n' }, b.load),
      el('td', { class: 'n' }, b.weight),
      check,
      actions);
  }

  function actionPath(pool, id, action) {
    return '/pools/' + encodeURIComponent(pool) + '/backends/' + encodeURIComponent(id) + '/' + action;
  }

  function sample(pools) {
    const now = Date.now();
    const counts = {};
    for (const p of pools) counts[p.name] = Number(p.sessions) || 0;
    samples.push({ t: now, pools: counts });
    while (samples.length > 0 && samples[0].t < now - WINDOW_MS) samples.shift();
  }

  function drawChart() {
    const svg = $('chart');
    svg.replaceChildren();
    const [w, h, pad] = [600, 120, 12];
    const names = [...new Set(samples.flatMap((s) => Object.keys(s.pools)))];
    const top = Math.max(1, ...samples.flatMap((s) => Object.values(s.pools)));
    const now = Date.now();
    const x = (t) => (w * (t - (now - WINDOW_MS)) / WINDOW_MS).toFixed(1);
    const y = (n) => (h - pad - (h - 2 * pad) * n / top).toFixed(1);
    const label = document.createElementNS(SVG, 'text');
    label.setAttribute('x', 4);
    label.setAttribute('y', 10);
    label.textContent = 'max ' + top;
    svg.append(label);
    const legend = $('chart-legend');
    legend.replaceChildren();
    names.forEach((name, i) => {
      const line = document.createElementNS(SVG, 'polyline');
      const points = samples.filter((s) => name in s.pools).map((s) => x(s.t) + ',' + y(s.pools[name]));
      line.setAttribute('points', points.join(' '));
      line.setAttribute('class', 'c' + (i % 5));
      svg.append(line);
      const last = samples[samples.length - 1].pools[name];
      legend.append(el('span', {}, el('span', { class: 'swatch c' + (i % 5) }), name + ': ' + (last === undefined ? '–' : last) + ' sessions'));
    });
  }

  function drawEvents(events) {
    const body = $('events').tBodies[0];
    body.replaceChildren();
    // /status lists them oldest first; the newest is what an operator looks for.
    for (const e of events.slice().reverse()) {
      body.append(el('tr', { 'data-event': e.event },
        el('td', { title: e.time }, new Date(e.time).toLocaleTimeString()),
        el('td', {}, e.event), el('td', {}, e.pool), el('td', {}, e.backend), el('td', {}, e.detail)));
    }
    if (body.rows.length === 0) body.append(el('tr', {}, el('td', { colspan: 5, class: 'empty' }, 'None yet.')));
  }

  // ---- acting -----------------------------------------------------------------------------

  async function act(button, pool, id, action) {
    const row = button.closest('tr');
    if (row) row.querySelectorAll('button').forEach((b) => { b.disabled = true; });
    let ok = false;
    try {
      const after = await authorized(
        () => call('POST', actionPath(pool, id, action)),
        'Drain, Maint and Enable need the admin token.');
      await refresh();
      ok = true;
      say(id + ' (' + pool + '): ' + action + ' done, now ' + (after && after.state ? after.state : 'changed') + '.');
    } catch (e) {
      say(e.message, true);
      await refresh().catch(() => {});
    }
    signal('rtcgate:acted', { pool, id, action, ok });
  }

  // ---- test hook --------------------------------------------------------------------------
  //
  // tests/it/admin.rs drives this page in headless Chromium (`--dump-dom`, which prints the DOM
  // once the page is quiet). `#click=ACTION:POOL:ID` in the address clicks that row's button
  // once the first /status is drawn, with button.click(), exactly what a user's click runs;
  // `&token=T` types T into the token field when the page asks for it and submits it, as a user
  // would. The fragment never reaches the server; the hook clears it from the address bar at
  // once. When the click's work is over (or the page waits for a token nobody gives), it writes
  // what the row then shows into <output id="hook">.
  // It acts only in a browser under automation (navigator.webdriver: the tests start Chromium
  // with --enable-automation). Otherwise a link from any site to /#click=maint:… would make an
  // operator's browser send a same-origin POST, which refuse_foreign rightly lets through.
  function hook() {
    if (navigator.webdriver !== true) return;
    const params = new URLSearchParams(location.hash.slice(1));
    const click = params.get('click');
    if (!click) return;
    history.replaceState(null, '', location.pathname);
    const [action, pool, id] = click.split(':');
    let token = params.get('token');
    const out = el('output', { id: 'hook' });
    document.body.append(out);
    const rowOf = () => [...$('backends').tBodies[0].rows].find((r) => r.dataset.pool === pool && r.dataset.id === id);
    document.addEventListener('rtcgate:token-asked', (ev) => {
      if (token) {
        $('token-input').value = token;
        token = null; // once: a refused token is not typed again
        $('token').querySelector('button[type=submit]').click();
      } else {
        out.textContent = 'token asked: ' + ev.detail;
      }
    });
    document.addEventListener('rtcgate:refreshed', function first() {
      document.removeEventListener('rtcgate:refreshed', first);
      const row = rowOf();
      const button = row && row.querySelector('button[data-action="' + action + '"]');
      if (!button) {
        out.textContent = 'no ' + action + ' button for ' + pool + '/' + id;
        return;
      }
      document.addEventListener('rtcgate:acted', (ev) => {
        const now = rowOf();
        const state = now ? now.querySelector('.state').textContent : 'no row';
        out.textContent = 'acted ' + (ev.detail.ok ? 'ok' : 'failed') + ': ' + state;
      }, { once: true });
      button.click();
    });
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('token').addEventListener('submit', tokenGiven);
    hook();
    poll();
  });
})();
