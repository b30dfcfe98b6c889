// vivgate console: plain DOM, no framework, no inline script (the page's CSP allows only this
// file). Everything it shows and changes goes through the admin API, with the token from
// sessionStorage as a bearer header. Text from the API is always set as text, never as HTML.
'use strict';

const TOKEN_KEY = 'vivgate-admin-token';
const PAGE = 50;
const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  view: 'groups',
  // the gateway's month (its clock decides, not the browser's)
  serverMonth: '',
  q: '', tier: '', status: '', month: '', sort: 'id', desc: false, offset: 0,
  total: 0, trafficTimer: null,
};

const $ = (sel) => document.querySelector(sel);
const nf = new Intl.NumberFormat('en');

class AuthError extends Error {}

// --- the API ---------------------------------------------------------------------------------

async function api(method, path, body) {
  const headers = {};
  if (state.token) headers.Authorization = 'Bearer ' + state.token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, {
    method, headers, cache: 'no-store', credentials: 'omit',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let j = null;
  try { j = await r.json(); } catch (_) { /* not JSON */ }
  if (r.status === 401) throw new AuthError((j && j.error) || 'Missing or invalid admin token');
  if (!r.ok || !j || !j.success) throw new Error((j && j.error) || ('HTTP ' + r.status));
  return j.data;
}

// --- small DOM helpers -----------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) el.append(c);
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'text') el.textContent = v; else el.setAttribute(k, String(v));
  }
  for (const c of children) if (c) el.append(c);
  return el;
}

function flash(text, bad) {
  const f = $('#flash');
  f.textContent = text || '';
  f.classList.toggle('bad', !!bad);
}

function bytes(n) {
  const units = ['B', 'KB', 'MB', 'GB', 'TB', 'PB'];
  let i = 0;
  let v = n;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i += 1; }
  return (i === 0 ? nf.format(v) : v.toFixed(v < 10 ? 2 : 1)) + ' ' + units[i];
}

function prevMonth(m) {
  let [y, mo] = m.split('-').map(Number);
  mo -= 1;
  if (mo === 0) { mo = 12; y -= 1; }
  return y + '-' + String(mo).padStart(2, '0');
}

// a confirmation in a modal dialog (keyboard: Tab between the buttons, Esc cancels)
function confirmAction(text) {
  const dlg = $('#confirm');
  $('#confirm-text').textContent = text;
  return new Promise((resolve) => {
    dlg.addEventListener('close', () => resolve(dlg.returnValue === 'ok'), { once: true });
    dlg.returnValue = 'cancel';
    dlg.showModal();
    $('#confirm-cancel').focus();
  });
}

async function change(question, method, path, body, done) {
  if (!(await confirmAction(question))) return;
  try {
    await api(method, path, body);
    flash(done);
    await refresh();
  } catch (e) {
    handle(e);
  }
}

function handle(e) {
  if (e instanceof AuthError) {
    signedOut(e.message);
  } else {
    flash(e.message, true);
  }
}

// --- sign-in ---------------------------------------------------------------------------------

function signedOut(message) {
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  stopTraffic();
  for (const v of document.querySelectorAll('.view')) v.hidden = true;
  $('#nav').hidden = true;
  $('#tools').hidden = true;
  $('#signin').hidden = false;
  $('#signin-error').textContent = message || '';
  flash('');
  $('#token').focus();
}

function signedIn() {
  $('#signin').hidden = true;
  $('#signin-error').textContent = '';
  $('#nav').hidden = false;
  $('#tools').hidden = false;
  show(state.view);
}

async function start() {
  try {
    state.serverMonth = (await api('GET', '/usage?limit=1')).month;
    signedIn();
  } catch (e) {
    if (e instanceof AuthError) signedOut(state.token ? 'The stored token was refused.' : '');
    else flash(e.message, true);
  }
}

$('#signin-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  state.token = $('#token').value.trim();
  $('#token').value = '';
  try {
    state.serverMonth = (await api('GET', '/usage?limit=1')).month;
    sessionStorage.setItem(TOKEN_KEY, state.token);
    signedIn();
  } catch (e) {
    if (e instanceof AuthError) signedOut('The token was refused: ' + e.message + '.');
    else flash(e.message, true);
  }
});

$('#signout').addEventListener('click', () => signedOut('Signed out.'));

// --- views -----------------------------------------------------------------------------------

function show(view) {
  state.view = view;
  for (const b of document.querySelectorAll('#nav button')) {
    if (b.dataset.view === view) b.setAttribute('aria-current', 'page');
    else b.removeAttribute('aria-current');
  }
  for (const v of document.querySelectorAll('.view')) v.hidden = v.id !== 'view-' + view;
  stopTraffic();
  flash('');
  refresh();
  if (view === 'traffic') state.trafficTimer = setInterval(refresh, 5000);
}

function stopTraffic() {
  if (state.trafficTimer) clearInterval(state.trafficTimer);
  state.trafficTimer = null;
}

async function refresh() {
  try {
    if (state.view === 'groups') await loadGroups();
    else if (state.view === 'days') await loadDays();
    else if (state.view === 'traffic') await loadTraffic();
    else if (state.view === 'changes') await loadAudit();
  } catch (e) {
    handle(e);
  }
}

for (const b of document.querySelectorAll('#nav button')) {
  b.addEventListener('click', () => show(b.dataset.view));
}

$('#reload').addEventListener('click', () => change(
  'Reload the configuration files now (like SIGHUP)?', 'POST', '/reload', undefined,
  'Configuration reloaded.'));

// --- groups ----------------------------------------------------------------------------------

function usageBar(used, limit) {
  const share = limit > 0 ? used / limit : 0;
  const fill = h('div', { class: 'fill' + (share >= 1 ? ' full' : share >= 0.8 ? ' warn' : '') });
  fill.style.width = Math.min(share, 1) * 100 + '%';
  return h('div', { class: 'bar', title: limit > 0 ? (share * 100).toFixed(1) + ' % of the quota' : 'no limit' },
    fill, h('span', { class: 'mark m80' }), h('span', { class: 'mark m100' }));
}

function groupRow(g) {
  const statusBadge = h('span', {
    class: 'badge ' + g.status + (g.status_override ? ' override' : ''), text: g.status,
  });
  const act = [];
  const id = g.id;
  act.push(h('button', {
    type: 'button', class: 'act-days', text: 'Days',
    onclick: () => { $('#days-group').value = id; show('days'); },
  }));
  if (g.status === 'active') {
    act.push(h('button', {
      type: 'button', class: 'act-freeze', text: 'Freeze',
      onclick: () => change(`Freeze group ${id}? Its keys will be answered 400 "frozen".`,
        'PUT', `/groups/${encodeURIComponent(id)}/status`, { status: 'frozen' }, `Group ${id} frozen.`),
    }));
  } else if (g.status_override) {
    act.push(h('button', {
      type: 'button', class: 'act-unfreeze', text: g.status === 'frozen' ? 'Unfreeze' : 'Reactivate',
      onclick: () => change(`Remove the ${g.status} override of group ${id}? The tenants decide its status again.`,
        'DELETE', `/overrides/${encodeURIComponent(id)}`, undefined, `Override of ${id} removed.`),
    }));
  } else {
    act.push(h('button', {
      type: 'button', class: 'act-unfreeze', text: g.status === 'frozen' ? 'Unfreeze' : 'Reactivate',
      onclick: () => change(`Set group ${id} active? (The tenants say ${g.status}; this overrides them.)`,
        'PUT', `/groups/${encodeURIComponent(id)}/status`, { status: 'active' }, `Group ${id} active.`),
    }));
  }
  if (g.status !== 'deactivated') {
    act.push(h('button', {
      type: 'button', class: 'act-deactivate', text: 'Deactivate',
      onclick: () => change(`Deactivate group ${id}? Its keys will be answered 403.`,
        'PUT', `/groups/${encodeURIComponent(id)}/status`, { status: 'deactivated' }, `Group ${id} deactivated.`),
    }));
  }
  const over = [];
  if (g.calls_overage) over.push(nf.format(g.calls_overage) + ' calls');
  if (g.bytes_overage) over.push(bytes(g.bytes_overage));
  return h('tr', { 'data-group': id },
    h('td', { class: 'id', text: id }),
    h('td', { text: g.tier }),
    h('td', {}, statusBadge),
    h('td', { class: 'calls' },
      h('span', { class: 'nums', text: nf.format(g.calls) + ' / ' + nf.format(g.calls_limit) }),
      usageBar(g.calls, g.calls_limit)),
    h('td', { class: 'bytes' },
      h('span', { class: 'nums', text: bytes(g.bytes) + ' / ' + bytes(g.bytes_limit) }),
      usageBar(g.bytes, g.bytes_limit)),
    h('td', { class: 'overage', text: over.length ? over.join(', ') : (g.overage_billing ? '0' : '—') }),
    h('td', { class: 'actions' }, ...act));
}

async function loadGroups() {
  const p = new URLSearchParams({
    month: state.month || state.serverMonth, offset: state.offset, limit: PAGE,
    sort: state.sort + (state.desc ? ':desc' : ''),
  });
  if (state.q) p.set('q', state.q);
  if (state.tier) p.set('tier', state.tier);
  if (state.status) p.set('status', state.status);
  const [d, o] = await Promise.all([api('GET', '/usage?' + p), api('GET', '/overrides')]);
  state.total = d.total;
  $('#groups-month').textContent = d.month;
  $('#month').value = d.month;
  // the tiers in force (a reload may change them)
  const tier = $('#tier');
  const shown = Array.from(tier.options).slice(1).map((o) => o.value);
  if (shown.join('\n') !== d.tiers.join('\n')) {
    tier.replaceChildren(h('option', { value: '', text: 'all' }), ...d.tiers.map((t) => h('option', { text: t })));
    tier.value = d.tiers.includes(state.tier) ? state.tier : '';
  }
  $('#groups tbody').replaceChildren(...d.groups.map(groupRow));
  if (!d.groups.length) {
    $('#groups tbody').append(h('tr', {}, h('td', { colspan: 7, text: 'No group matches.' })));
  }
  for (const th of document.querySelectorAll('#groups th')) {
    const b = th.querySelector('button');
    if (b && b.dataset.sort === state.sort) th.setAttribute('aria-sort', state.desc ? 'descending' : 'ascending');
    else th.removeAttribute('aria-sort');
  }
  const last = Math.min(state.offset + PAGE, d.total);
  $('#range').textContent = d.total ? `${nf.format(state.offset + 1)}–${nf.format(last)} of ${nf.format(d.total)} groups` : '0 groups';
  $('#prev').disabled = state.offset === 0;
  $('#next').disabled = last >= d.total;
  const items = [];
  for (const [group, status] of Object.entries(o.status)) {
    items.push(h('li', {}, `group ${group}: ${status} `, h('button', {
      type: 'button', class: 'act-remove', text: 'Remove override',
      onclick: () => change(`Remove the ${status} override of group ${group}?`, 'DELETE',
        `/overrides/${encodeURIComponent(group)}`, undefined, `Override of ${group} removed.`),
    })));
  }
  for (const r of o.revoked_keys) {
    items.push(h('li', {}, `key ${r.key.slice(0, 15)}… of group ${r.group} revoked `, h('button', {
      type: 'button', class: 'act-remove', text: 'Remove revocation',
      onclick: () => change(`Give key ${r.key} of group ${r.group} back its access?`, 'DELETE',
        `/overrides/${encodeURIComponent(r.key)}`, undefined, 'Revocation removed.'),
    })));
  }
  $('#overrides').replaceChildren(...(items.length ? items : [h('li', { text: 'None.' })]));
}

for (const b of document.querySelectorAll('#groups th button')) {
  b.addEventListener('click', () => {
    const col = b.dataset.sort;
    // usage columns start with the largest, names with A
    if (state.sort === col) state.desc = !state.desc;
    else { state.sort = col; state.desc = !['id', 'tier', 'status'].includes(col); }
    state.offset = 0;
    refresh();
  });
}

let searchTimer = null;
$('#search').addEventListener('input', () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => { state.q = $('#search').value.trim(); state.offset = 0; refresh(); }, 200);
});
$('#filters').addEventListener('submit', (ev) => ev.preventDefault());
$('#tier').addEventListener('change', () => { state.tier = $('#tier').value; state.offset = 0; refresh(); });
$('#status').addEventListener('change', () => { state.status = $('#status').value; state.offset = 0; refresh(); });
$('#month').addEventListener('change', () => { state.month = $('#month').value; state.offset = 0; refresh(); });
$('#prev').addEventListener('click', () => { state.offset = Math.max(0, state.offset - PAGE); refresh(); });
$('#next').addEventListener('click', () => { state.offset += PAGE; refresh(); });

$('#revoke').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const group = $('#revoke-group').value.trim();
  const key = $('#revoke-key').value.trim();
  change(`Revoke key ${key} of group ${group}? It will be answered 401 from the next request on.`,
    'DELETE', `/groups/${encodeURIComponent(group)}/keys/${encodeURIComponent(key)}`, undefined,
    'Key revoked.');
});

// --- usage over time -------------------------------------------------------------------------

function barChart(days, index, cls, label, format) {
  const W = 900; const H = 150; const left = 56; const bottom = 22; const top = 10;
  const max = Math.max(1, ...days.map((d) => d[index]));
  const bw = (W - left) / days.length;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label });
  svg.append(s('line', { class: 'axis', x1: left, y1: H - bottom, x2: W, y2: H - bottom }));
  svg.append(s('text', { x: 0, y: top + 4, text: format(max) }));
  svg.append(s('text', { x: 0, y: H - bottom, text: '0' }));
  days.forEach((d, i) => {
    const v = d[index];
    const bh = (v / max) * (H - bottom - top);
    const rect = s('rect', {
      class: cls, x: left + i * bw + 1, y: H - bottom - bh, width: Math.max(1, bw - 2), height: bh,
      'data-day': d.day, ['data-' + index]: v,
    });
    rect.append(s('title', { text: `day ${d.day}: ${format(v)}` }));
    svg.append(rect);
    if (d.day === 1 || d.day % 5 === 0) {
      svg.append(s('text', { x: left + i * bw + bw / 2 - 4, y: H - 6, text: String(d.day) }));
    }
  });
  return svg;
}

async function loadDays() {
  const sel = $('#days-month');
  if (!sel.options.length) {
    const m = state.serverMonth;
    sel.append(h('option', { value: m, text: m + ' (this month)' }), h('option', { value: prevMonth(m), text: prevMonth(m) }));
  }
  const group = $('#days-group').value.trim();
  const month = sel.value;
  let days;
  let title;
  if (group) {
    const d = await api('GET', `/usage/${encodeURIComponent(group)}?month=${month}&by=day`);
    days = d.days;
    title = `Group ${group}, ${d.month}: ${nf.format(d.group.calls)} calls, ${bytes(d.group.bytes)} this month`;
  } else {
    const d = await api('GET', `/days?month=${month}`);
    days = d.days;
    const calls = days.reduce((a, x) => a + x.calls, 0);
    const b = days.reduce((a, x) => a + x.bytes, 0);
    title = `The whole gateway, ${d.month}: ${nf.format(calls)} calls, ${bytes(b)}`;
  }
  $('#days-title').textContent = title;
  if (!days) {
    $('#days-chart').replaceChildren(h('p', { text: 'Days are kept for this month and the previous one.' }));
    $('#bytes-chart').replaceChildren();
    return;
  }
  $('#days-chart').replaceChildren(h('h3', { text: 'API calls per day' }),
    barChart(days, 'calls', 'calls', 'API calls per day', (v) => nf.format(v)));
  $('#bytes-chart').replaceChildren(h('h3', { text: 'CDN bytes per day' }),
    barChart(days, 'bytes', 'bytes', 'CDN bytes per day', bytes));
}

$('#days-form').addEventListener('submit', (ev) => { ev.preventDefault(); refresh(); });

// --- traffic now -----------------------------------------------------------------------------

async function loadTraffic() {
  const d = await api('GET', '/traffic');
  const points = d.samples.slice();
  if (d.current && d.current.seconds > 0) points.push(d.current);
  const W = 900; const H = 200; const left = 56; const bottom = 22; const top = 10;
  const rps = points.map((p) => p.requests / p.seconds);
  const max = Math.max(1, ...rps);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'Requests per second' });
  svg.append(s('line', { class: 'axis', x1: left, y1: H - bottom, x2: W, y2: H - bottom }));
  svg.append(s('text', { x: 0, y: top + 4, text: max.toFixed(max < 10 ? 1 : 0) + '/s' }));
  svg.append(s('text', { x: 0, y: H - bottom, text: '0' }));
  svg.append(s('text', { x: left, y: H - 6, text: '15 min ago' }));
  svg.append(s('text', { x: W - 30, y: H - 6, text: 'now' }));
  const slots = Math.max(d.kept, points.length);
  const step = (W - left) / (slots - 1);
  const start = slots - points.length;
  const xy = rps.map((v, i) => `${(left + (start + i) * step).toFixed(1)},${(H - bottom - (v / max) * (H - bottom - top)).toFixed(1)}`);
  svg.append(s('polyline', { points: xy.join(' ') }));
  for (const [i, p] of xy.entries()) {
    const [x, y] = p.split(',');
    const dot = s('circle', { cx: x, cy: y, r: 2.5, class: 'dot' });
    dot.append(s('title', { text: `${rps[i].toFixed(1)} requests/s` }));
    svg.append(dot);
  }
  $('#rps-chart').replaceChildren(h('h3', {}, 'Requests per second ',
    h('span', { class: 'sub', text: rps.length ? `now ${rps[rps.length - 1].toFixed(1)}/s` : 'no sample yet' })), svg);

  const reasons = {};
  const routes = {};
  for (const p of points) {
    for (const [r, n] of Object.entries(p.rejections)) reasons[r] = (reasons[r] || 0) + n;
    for (const [r, v] of Object.entries(p.routes)) {
      const acc = routes[r] || (routes[r] = { requests: 0, errors: 0, p50: null, p99: null });
      acc.requests += v.requests;
      acc.errors += v.errors;
      if (v.p50_ms !== null && v.p50_ms !== undefined) { acc.p50 = v.p50_ms; acc.p99 = v.p99_ms; }
    }
  }
  const rej = Object.entries(reasons).sort((a, b) => b[1] - a[1]);
  $('#rejections tbody').replaceChildren(...(rej.length
    ? rej.map(([r, n]) => h('tr', {}, h('td', { text: r }), h('td', { text: nf.format(n) })))
    : [h('tr', {}, h('td', { colspan: 2, text: 'None.' }))]));
  const ms = (v) => (v === null ? '—' : v.toFixed(v < 10 ? 2 : 0) + ' ms');
  const rt = Object.entries(routes).sort((a, b) => b[1].requests - a[1].requests);
  $('#routes tbody').replaceChildren(...(rt.length
    ? rt.map(([r, v]) => h('tr', {}, h('td', { text: r }), h('td', { text: nf.format(v.requests) }),
      h('td', { text: nf.format(v.errors) }), h('td', { text: ms(v.p50) }), h('td', { text: ms(v.p99) })))
    : [h('tr', {}, h('td', { colspan: 5, text: 'No traffic.' }))]));
}

// --- changes ---------------------------------------------------------------------------------

async function loadAudit() {
  const d = await api('GET', '/audit');
  const rows = d.changes.map((c) => h('tr', { class: c.ok ? '' : 'error' },
    h('td', { text: new Date(c.at_ms).toISOString().replace('T', ' ').slice(0, 19) }),
    h('td', { text: c.caller }), h('td', { text: c.endpoint }), h('td', { text: c.change })));
  $('#audit tbody').replaceChildren(...(rows.length ? rows : [h('tr', {}, h('td', { colspan: 4, text: 'No change yet.' }))]));
}

start();
