// Outpost's dashboard: the fleet, one device's history, the fleet's alerts. Plain DOM and uPlot;
// every number on a page comes from the hub's /api (docs/api.md).
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import './style.css';

const main = document.getElementById('main');
// What the browser tests read: per chart, the request, the API's answer and the arrays handed
// to uPlot.
window.outpost = { charts: {}, pages: 0 };

// ---------- helpers ----------

// Parts that are absent (null, undefined) are left out: the DOM would print "null".
const present = (children) => children.flat(Infinity).filter((child) => child !== null && child !== undefined);

function show(node, ...children) {
  node.replaceChildren(...present(children));
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'class') node.className = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value);
  }
  for (const child of present(children)) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

class Unauthorized extends Error {}

// GETs started before the page knows it needs them (while it asks who is logged in), taken by
// the first `api` call for the same path.
const early = new Map();

function prefetch(path) {
  const pending = fetch(path, { credentials: 'same-origin' });
  // Unused (a login page instead), it must not count as an unhandled failure.
  pending.catch(() => {});
  early.set(path, pending);
}

async function api(path, options = {}) {
  const started = !options.method && early.get(path);
  early.delete(path);
  const response = await (started || fetch(path, {
    credentials: 'same-origin',
    ...options,
    headers: { ...(options.body ? { 'content-type': 'application/json' } : {}), ...(options.headers || {}) },
  }));
  if (response.status === 401) throw new Unauthorized();
  const text = await response.text();
  let body;
  try { body = JSON.parse(text); } catch { body = { error: text }; }
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function go(path) {
  history.pushState(null, '', path);
  route();
}

document.addEventListener('click', (event) => {
  const link = event.target.closest('a');
  if (!link || link.target || link.hasAttribute('download')) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin || url.pathname.startsWith('/api/')) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey) return;
  event.preventDefault();
  go(url.pathname + url.search);
});
window.addEventListener('popstate', () => route());

const pct = (v) => (v === null || v === undefined ? '–' : `${(v * 100).toFixed(0)} %`);
const fixed = (unit, digits = 1) => (v) => (v === null || v === undefined ? '–' : `${v.toFixed(digits)} ${unit}`);

function duration(ms) {
  // NaN too: an uptime the device never sent arrives as undefined * 1000.
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '–';
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function ago(ms) {
  return ms ? `${duration(Date.now() - ms)} ago` : '–';
}

function bytes(v) {
  if (v === null || v === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function sparkline(values) {
  const present = values.filter((v) => v !== null);
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', '0 0 60 16');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('aria-hidden', 'true');
  if (present.length < 2) return svg;
  const lo = Math.min(...present);
  const hi = Math.max(...present);
  const scale = hi > lo ? 14 / (hi - lo) : 0;
  let d = '';
  let pen = false;
  values.forEach((v, i) => {
    if (v === null) { pen = false; return; }
    const y = (15 - (v - lo) * scale).toFixed(1);
    d += `${pen ? 'L' : 'M'}${i},${y}`;
    pen = true;
  });
  const path = document.createElementNS('http://www.w3.org/2000/svg', 'path');
  path.setAttribute('d', d);
  svg.append(path);
  return svg;
}

// ---------- look: theme and time zone ----------

// Kept in the browser: each person picks their own.
const SETTINGS_KEY = 'outpost.look';

function settings() {
  try {
    return { theme: 'system', zone: 'browser', ...JSON.parse(localStorage.getItem(SETTINGS_KEY) || '{}') };
  } catch {
    return { theme: 'system', zone: 'browser' };
  }
}

function applyTheme() {
  const { theme } = settings();
  if (theme === 'light' || theme === 'dark') document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}

// The zone times are shown in: the browser's, UTC, or one the person named.
function zone() {
  const chosen = settings().zone;
  const browser = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
  if (chosen === 'browser') return browser;
  try { new Intl.DateTimeFormat('en', { timeZone: chosen }); return chosen; } catch { return browser; }
}

const zoneFormats = new Map();
// "2026-12-06 03:09:40" in `zone()`.
function localTime(ms) {
  const z = zone();
  if (!zoneFormats.has(z)) {
    zoneFormats.set(z, new Intl.DateTimeFormat('sv-SE', { timeZone: z, year: 'numeric', month: '2-digit', day: '2-digit',
      hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false }));
  }
  return zoneFormats.get(z).format(new Date(ms));
}

// An instant as people read it, with its zone said: "2026-12-06 03:09:40 UTC".
function stamp(value) {
  if (value === null || value === undefined || value === '') return '';
  const ms = typeof value === 'number' ? value : Date.parse(value);
  if (Number.isNaN(ms)) return String(value);
  return `${localTime(ms)} ${zone()}`;
}

// The instant that a wall-clock time "YYYY-MM-DDTHH:MM[:SS]" in `zone()` names.
function fromZoneInput(text) {
  const [date, time = '00:00'] = text.split('T');
  const [y, mo, d] = date.split('-').map(Number);
  const [h, mi, sec = 0] = time.split(':').map(Number);
  const guess = Date.UTC(y, mo - 1, d, h, mi, sec);
  const shown = (ms) => { const [a, b] = localTime(ms).split(' '); const [yy, mm, dd] = a.split('-').map(Number); const [hh, nn, ss] = b.split(':').map(Number); return Date.UTC(yy, mm - 1, dd, hh, nn, ss); };
  const offset = shown(guess) - guess;
  return guess - offset;
}

function toZoneInput(ms) {
  return localTime(ms).replace(' ', 'T');
}

// The charts' colours follow the page's (dark or light).
function chartColours() {
  const css = getComputedStyle(document.documentElement);
  const fg = css.getPropertyValue('--muted').trim() || '#57606a';
  const line = css.getPropertyValue('--line').trim() || '#d0d7de';
  return { stroke: fg, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 } };
}

function lookControls() {
  const current = settings();
  const save = (key) => (event) => {
    localStorage.setItem(SETTINGS_KEY, JSON.stringify({ ...settings(), [key]: event.target.value }));
    applyTheme();
    route();
  };
  const browser = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
  const named = current.zone && current.zone !== 'browser' && current.zone !== 'UTC' ? [current.zone] : [];
  const zone = el('select', { name: 'zone', 'aria-label': 'Time zone', onchange: save('zone') },
    el('option', { value: 'browser', selected: current.zone === 'browser' }, `Times: browser (${browser})`),
    el('option', { value: 'UTC', selected: current.zone === 'UTC' }, 'UTC'),
    named.map((z) => el('option', { value: z, selected: true }, z)));
  // The ~400 named zones join the list when someone reaches for it, not on every page's load.
  const more = () => {
    zone.removeEventListener('pointerdown', more);
    zone.removeEventListener('focus', more);
    const zones = typeof Intl.supportedValuesOf === 'function' ? Intl.supportedValuesOf('timeZone') : [];
    zone.append(...zones.filter((z) => z !== 'UTC' && !named.includes(z)).map((z) => el('option', { value: z }, z)));
  };
  zone.addEventListener('pointerdown', more);
  zone.addEventListener('focus', more);
  return [
    el('select', { name: 'theme', 'aria-label': 'Theme', onchange: save('theme') },
      [['system', 'Theme: system'], ['light', 'Light'], ['dark', 'Dark']].map(([v, t]) => el('option', { value: v, selected: current.theme === v }, t))),
    zone,
  ];
}

applyTheme();

// ---------- login ----------

function showLogin(message, name = '') {
  document.getElementById('who').textContent = '';
  show(main,
    el('form', {
      class: 'login',
      onsubmit: async (event) => {
        event.preventDefault();
        const form = new FormData(event.target);
        try {
          await api('/api/login', {
            method: 'POST',
            body: JSON.stringify({ name: form.get('name'), password: form.get('password') }),
          });
          route();
        } catch (error) {
          showLogin(error instanceof Unauthorized ? 'Wrong name or password.' : error.message, form.get('name'));
        }
      },
    },
    el('h1', {}, 'Log in to Outpost'),
    message ? el('p', { class: 'error', role: 'alert' }, message) : null,
    el('label', {}, 'Name', el('input', { name: 'name', autocomplete: 'username', required: true, value: name })),
    el('label', {}, 'Password', el('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true })),
    el('button', { type: 'submit' }, 'Log in')),
  );
}

async function whoami() {
  const me = await api('/api/me');
  const who = document.getElementById('who');
  show(who, ...lookControls(), ' ');
  if (me.auth && me.identity) {
    who.append(`${me.identity.name} (${me.identity.role}) `,
      el('button', { class: 'link', onclick: async () => { await api('/api/logout', { method: 'POST', body: '{}' }); route(); } }, 'Log out'));
  }
  return me;
}

// ---------- fleet ----------

const STATE_ORDER = { offline: 0, stale: 1, online: 2 };
// Whether `device` matches the fleet filter `text`: words it contains, or `key=value` on its
// fields, its operators' labels and its meta.
function fleetMatches(device, text) {
  if (!text) return true;
  return text.split(/\s+/).every((word) => {
    const [key, value] = word.split('=');
    if (value !== undefined) {
      const field = device[key] ?? device.labels?.[key] ?? device.meta?.[key];
      return String(field ?? '').toLowerCase() === value.toLowerCase();
    }
    return JSON.stringify([device.device, device.state, device.labels, device.meta]).toLowerCase().includes(word.toLowerCase());
  });
}

// The devices ticked for Compare, kept across the fleet page's refreshes.
const FLEET_PICKED = new Set();

const FLEET_COLUMNS = [
  { key: 'device', title: 'Device', value: (d) => d.device,
    show: (d) => el('span', {},
      el('input', { type: 'checkbox', class: 'pick', 'aria-label': `Compare ${d.device}`, 'data-pick': d.device, checked: FLEET_PICKED.has(d.device),
        onchange: (event) => { if (event.target.checked) FLEET_PICKED.add(d.device); else FLEET_PICKED.delete(d.device); FLEET_PICKED.changed?.(); } }),
      el('a', { href: `/device/${encodeURIComponent(d.device)}` }, d.device),
      Object.entries(d.labels ?? {}).map(([k, v]) => el('span', { class: 'tag', title: `label ${k}` }, `${k}=${v}`))) },
  { key: 'state', title: 'State', value: (d) => STATE_ORDER[d.state] ?? -1, show: (d) => el('span', { class: `state ${d.state}` }, d.state) },
  { key: 'last_seen', title: 'Last seen', value: (d) => d.last_seen_ms, show: (d) => ago(d.last_seen_ms) },
  { key: 'model', title: 'Model', value: (d) => d.meta?.model ?? '', show: (d) => d.meta?.model ?? '–' },
  { key: 'jetpack', title: 'JetPack', value: (d) => d.meta?.jetpack ?? '', show: (d) => d.meta?.jetpack ?? '–' },
  { key: 'uptime', title: 'Uptime', value: (d) => d.summary?.uptime?.current, show: (d) => duration(d.summary?.uptime?.current * 1000) },
  ...[['cpu', 'CPU', pct], ['gpu', 'GPU', pct], ['ram', 'RAM', pct], ['temperature', 'Temp', fixed('°C')], ['power', 'Power', fixed('W')]].map(
    ([key, title, format]) => ({
      key, title, numeric: true,
      value: (d) => d.summary?.[key]?.current,
      show: (d) => el('span', { class: 'metric' }, sparkline(d.summary?.[key]?.sparkline ?? []), el('span', { class: 'value' }, format(d.summary?.[key]?.current))),
    })),
  { key: 'alerts', title: 'Alerts', value: (d) => (d.alerts.critical ?? 0) * 1000 + (d.alerts.warning ?? 0) * 10 + (d.alerts.info ?? 0),
    show: (d) => el('span', {}, ['critical', 'warning', 'info'].filter((s) => d.alerts[s]).map((s) => el('span', { class: `badge ${s}`, title: s }, `${d.alerts[s]} ${s}`))) },
  // An offline device's lag at its last batch is not its lag now, which nobody knows.
  { key: 'sync_lag', title: 'Sync lag', numeric: true, value: (d) => (d.state === 'offline' ? null : d.sync_lag_ms),
    show: (d) => (d.state === 'offline' ? '–' : duration(d.sync_lag_ms)) },
];

// Up to this many devices the fleet table holds every row; above it, the rows near the viewport.
const FLEET_ALL_ROWS = 100;
// The height of a fleet table row once measured; kept for the tables of later refreshes.
let rowHeight = 0;

async function fleetPage(view) {
  const [devices, alerts] = await Promise.all([api('/api/devices'), api('/api/alerts')]);
  for (const device of devices) {
    device.alerts = {};
    for (const alert of alerts.alerts ?? []) {
      if (alert.device === device.device && alert.state === 'firing') {
        device.alerts[alert.severity] = (device.alerts[alert.severity] ?? 0) + 1;
      }
    }
  }
  const params = new URLSearchParams(location.search);
  const sort = { key: params.get('sort') || 'state', descending: params.get('desc') === '1' };
  const filter = el('input', { type: 'search', placeholder: 'Filter: text or label=value', 'aria-label': 'Filter devices', value: params.get('q') || '' });
  const body = el('tbody');
  const head = el('tr', { 'aria-rowindex': 1 }, FLEET_COLUMNS.map((column) => el('th', {
    scope: 'col', 'data-key': column.key, tabindex: 0, class: column.numeric ? 'num' : '',
    onclick: () => { sort.descending = sort.key === column.key ? !sort.descending : false; sort.key = column.key; draw(); },
    onkeydown: (event) => { if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); event.target.click(); } },
  }, column.title)));
  const counts = el('p', { class: 'muted' });
  const matches = fleetMatches;
  // Only the rows near the viewport are in the document, between two spacer rows of the height
  // of the rest: laying out a table of 1,000 devices with their sparklines takes the browser most
  // of a second, and every sort, filter and refresh would pay it again.
  let shown = [];
  // The rows in the document, [start, end); null once they must be built again.
  let painted = null;
  const spacer = () => el('tr', { class: 'spacer', 'aria-hidden': 'true' }, el('td', { colspan: FLEET_COLUMNS.length }));
  const table = el('table', { class: 'fleet' }, el('thead', {}, head), body);
  const above = spacer();
  const below = spacer();
  const row = (d, index) => el('tr', { 'data-device': d.device, 'data-state': d.state, 'aria-rowindex': index + 2 },
    FLEET_COLUMNS.map((c) => el('td', { class: c.numeric ? 'num' : '' }, c.show(d))));
  function paint() {
    let start = 0;
    let end = shown.length;
    if (shown.length > FLEET_ALL_ROWS) {
      if (!rowHeight) {
        // One row laid out and measured (the page is small yet, so it is quick) tells how many
        // rows fill the screen; guessing would build too many or build twice.
        show(body, row(shown[0], 0));
        rowHeight = body.firstChild.getBoundingClientRect().height || 20;
        body.replaceChildren();
      }
      if (!body.firstChild) {
        // A new table starts at its full height, so that the page keeps its scroll position
        // while the rows to show are worked out.
        show(body, above, below);
        below.firstChild.style.height = `${shown.length * rowHeight}px`;
      }
      const top = body.getBoundingClientRect().top;
      const screens = Math.ceil(window.innerHeight / rowHeight);
      const firstVisible = Math.min(shown.length, Math.max(0, Math.floor(-top / rowHeight)));
      const lastVisible = Math.min(shown.length, Math.max(firstVisible, Math.ceil((window.innerHeight - top) / rowHeight)));
      // Rows already there that cover the screen stay: building them again is what costs.
      if (painted && painted[0] <= firstVisible && painted[1] >= lastVisible) return;
      // Once shown, a screen's worth either side, so that scrolling builds rows now and then,
      // not each frame; the first time, only what is on the screen.
      const ahead = painted ? screens : 0;
      start = Math.max(0, firstVisible - ahead);
      end = Math.min(shown.length, lastVisible + ahead);
    }
    if (painted && painted[0] === start && painted[1] === end) return;
    // Screen readers learn the table's real size and each row's place from the aria counts.
    table.setAttribute('aria-rowcount', shown.length + 1);
    show(body, above, ...shown.slice(start, end).map((d, i) => row(d, start + i)), below);
    painted = [start, end];
    above.firstChild.style.height = `${start * rowHeight}px`;
    below.firstChild.style.height = `${(shown.length - end) * rowHeight}px`;
  }
  let paintPending = false;
  function onScroll() {
    // A refresh builds a new table; this one's listeners go with it.
    if (!body.isConnected) {
      window.removeEventListener('scroll', onScroll);
      window.removeEventListener('resize', onScroll);
      return;
    }
    if (paintPending) return;
    paintPending = true;
    requestAnimationFrame(() => { paintPending = false; paint(); });
  }
  window.addEventListener('scroll', onScroll, { passive: true });
  window.addEventListener('resize', onScroll, { passive: true });
  function draw() {
    const column = FLEET_COLUMNS.find((c) => c.key === sort.key) ?? FLEET_COLUMNS[0];
    shown = devices.filter((d) => matches(d, filter.value.trim()));
    // Devices without a value go last whichever way the column is sorted.
    const empty = (v) => v === undefined || v === null || v === '' || Number.isNaN(v);
    shown.sort((a, b) => {
      const x = column.value(a); const y = column.value(b);
      if (empty(x) !== empty(y)) return empty(x) ? 1 : -1;
      const order = empty(x) || x === y ? 0 : x < y ? -1 : 1;
      return (sort.descending ? -order : order) || a.device.localeCompare(b.device);
    });
    for (const th of head.children) {
      th.setAttribute('aria-sort', th.dataset.key === sort.key ? (sort.descending ? 'descending' : 'ascending') : 'none');
    }
    const by = (s) => devices.filter((d) => d.state === s).length;
    counts.textContent = `${devices.length} devices: ${by('online')} online, ${by('stale')} stale, ${by('offline')} offline; showing ${shown.length}`;
    FLEET_PICKED.changed();
    // Last, once the toolbar above has its final height: the rows to build are worked out from
    // where the table is on the screen.
    painted = null;
    paint();
    const query = new URLSearchParams();
    if (filter.value) query.set('q', filter.value);
    if (sort.key !== 'state') query.set('sort', sort.key);
    if (sort.descending) query.set('desc', '1');
    history.replaceState(null, '', `/${query.toString() ? `?${query}` : ''}`);
  }
  filter.addEventListener('input', draw);
  // Compare what is ticked, or (ticking nothing) what the filter shows, such as `site=north`.
  const compare = el('button', { type: 'button', class: 'compare', onclick: () => {
    const chosen = FLEET_PICKED.size ? [...FLEET_PICKED] : shown.map((d) => d.device);
    go(`/compare?${new URLSearchParams({ devices: chosen.slice(0, 50).join(','), metric: sort.key in COMPARE_METRICS ? sort.key : 'cpu' })}`);
  } });
  FLEET_PICKED.changed = () => {
    compare.textContent = FLEET_PICKED.size ? `Compare ${FLEET_PICKED.size} ticked` : `Compare the ${Math.min(shown.length, 50)} shown`;
    compare.disabled = FLEET_PICKED.size === 1 || (!FLEET_PICKED.size && shown.length < 2);
  };
  const none = devices.length === 0
    ? el('div', { class: 'empty' }, el('p', {}, 'No device has reported to this hub yet. Enrol one on the hub and start its agent:'),
      el('pre', {}, 'outpost hub device add orin-01 --out .\n# copy orin-01.key and orin-01.password to the device, put the printed [mqtt] section\n# in its agent.toml, then on the device:\noutpost agent --config agent.toml'))
    : null;
  show(view, el('h1', {}, 'Fleet'), el('div', { class: 'toolbar' }, filter, compare, counts),
    none, el('div', { class: 'scroll', hidden: devices.length === 0 }, table));
  draw();
  const timer = setInterval(async () => {
    if (!view.isConnected) { clearInterval(timer); return; }
    if (document.activeElement === filter) return;
    fleetPage(view).catch(() => {});
    clearInterval(timer);
  }, 15000);
}

// ---------- device ----------

// Chart groups, as jtop and node_exporter dashboards group them: what to ask for and how to show it.
const GROUPS = [
  // A Jetson reports its CPUs and memory twice (tegrastats and the host collector): a list of
  // selectors is tried in order and the first that finds series is drawn, so each shows once.
  { title: 'CPU load per core', match: ['{__name__="jetson_cpu_load_ratio"}', '{__name__="host_cpu_usage_ratio",cpu!="total"}'], unit: 'ratio' },
  { title: 'CPU frequency', match: ['jetson_cpu_frequency_hertz', 'node_cpu_scaling_frequency_hertz'], unit: 'hertz' },
  { title: 'GPU load', match: '{__name__=~"jetson_gpu_load_ratio|jetson_engine_load_ratio",engine=~"|GR3D"}', unit: 'ratio' },
  { title: 'GPU utilisation (NVIDIA)', match: '{__name__=~"DCGM_FI_DEV_GPU_UTIL|DCGM_FI_DEV_MEM_COPY_UTIL"}', unit: 'percent' },
  { title: 'GPU memory (NVIDIA)', match: '{__name__=~"DCGM_FI_DEV_FB_USED|DCGM_FI_DEV_FB_TOTAL"}', unit: 'mebibytes' },
  { title: 'GPU clocks (NVIDIA)', match: '{__name__=~"DCGM_FI_DEV_SM_CLOCK|DCGM_FI_DEV_MEM_CLOCK"}', unit: 'megahertz' },
  { title: 'GPU frequency', match: '{__name__=~"jetson_gpu_frequency_hertz|jetson_engine_frequency_hertz",engine=~"|GR3D"}', unit: 'hertz' },
  { title: 'EMC', match: '{__name__=~"jetson_engine_load_ratio|jetson_engine_frequency_hertz",engine="EMC"}', unit: '' },
  { title: 'Engines', match: '{__name__="jetson_engine_load_ratio",engine!~"GR3D|EMC"}', unit: 'ratio' },
  { title: 'Memory', match: ['{__name__=~"jetson_ram_used_bytes|jetson_swap_used_bytes"}', '{__name__=~"host_memory_used_bytes|host_swap_used_bytes"}'], unit: 'bytes' },
  { title: 'Temperatures', match: '{__name__=~"jetson_temperature_celsius|node_hwmon_temp_celsius|DCGM_FI_DEV_GPU_TEMP|jetson_thermal_zone_celsius"}', unit: 'celsius' },
  { title: 'Power rails', match: '{__name__=~"jetson_rail_power_watts|DCGM_FI_DEV_POWER_USAGE"}', unit: 'watts' },
  { title: 'Disk space free', match: 'node_filesystem_avail_bytes', unit: 'bytes' },
  { title: 'Disk I/O', match: '{__name__=~"node_disk_read_bytes_total|node_disk_written_bytes_total"}', unit: 'bytes/s', fn: 'rate' },
  { title: 'Network', match: '{__name__=~"node_network_receive_bytes_total|node_network_transmit_bytes_total"}', unit: 'bytes/s', fn: 'rate' },
  { title: 'Load average', match: '{__name__=~"node_load1|node_load5|node_load15"}', unit: '' },
  { title: 'Network errors and drops', match: '{__name__=~"node_network_(receive|transmit)_(errs|drop)_total"}', unit: 'per second', fn: 'rate' },
  { title: 'Watched processes: CPU', match: 'host_process_cpu_seconds_total', unit: 'ratio', fn: 'rate' },
  { title: 'Watched processes: memory', match: 'host_process_resident_memory_bytes', unit: 'bytes' },
  { title: 'Watched processes: count', match: '{__name__=~"host_process_count|probe_process_count"}', unit: '' },
  { title: 'GPU engines (NVIDIA)', match: '{__name__=~"DCGM_FI_DEV_ENC_UTIL|DCGM_FI_DEV_DEC_UTIL"}', unit: 'percent' },
  { title: 'GPU power limit (NVIDIA)', match: '{__name__=~"DCGM_FI_DEV_POWER_USAGE|DCGM_FI_DEV_POWER_MGMT_LIMIT"}', unit: 'watts' },
  { title: 'GPU processes (NVIDIA)', match: '{__name__=~"nvml_process_memory_used_bytes|nvml_processes"}', unit: '' },
  { title: 'GPU PCIe (NVIDIA)', match: '{__name__=~"nvml_pcie_receive_bytes_per_second|nvml_pcie_transmit_bytes_per_second"}', unit: 'bytes/s' },
  { title: 'GPU ECC errors (NVIDIA)', match: '{__name__=~"nvml_ecc_corrected_errors_total|nvml_ecc_uncorrected_errors_total"}', unit: 'per second', fn: 'rate' },
  { title: 'Fans', match: '{__name__=~"jetson_fan_speed_ratio|nvml_fan_speed_ratio"}', unit: 'ratio' },
  { title: 'Containers: CPU', match: 'container_cpu_usage_seconds_total', unit: 'ratio', fn: 'rate' },
  { title: 'Containers: memory', match: 'container_memory_working_set_bytes', unit: 'bytes' },
  { title: 'Containers: network', match: '{__name__=~"container_network_(receive|transmit)_bytes_total"}', unit: 'bytes/s', fn: 'rate' },
  { title: 'Top processes: CPU', match: 'outpost_top_process_cpu_ratio', unit: 'ratio' },
  { title: 'Top processes: memory', match: 'outpost_top_process_resident_memory_bytes', unit: 'bytes' },
  { title: 'GPU memory per process (Jetson)', match: 'jetson_process_gpu_memory_bytes', unit: 'bytes' },
  { title: 'Probes', match: '{__name__=~"probe_success|probe_up"}', unit: 'ratio' },
  { title: 'Probe duration', match: 'probe_duration_seconds', unit: 'seconds' },
  { title: 'Agent: collector round time', match: 'node_scrape_collector_duration_seconds', unit: 'seconds' },
  { title: 'Agent: errors', match: '{__name__=~"outpost_collector_errors_total|outpost_store_write_errors_total|outpost_alert_notifications_failed_total|outpost_task_restarts_total"}', unit: 'per second', fn: 'rate' },
  { title: 'Agent: memory and store', match: '{__name__=~"process_resident_memory_bytes|outpost_store_disk_bytes"}', unit: 'bytes' },
  { title: 'Agent: sync', match: '{__name__=~"outpost_sync_lag_seconds|outpost_sync_backlog_chunks"}', unit: '' },
  { title: 'Application metrics', match: '{__name__!~"(host|node|process|jetson|nvml|DCGM|probe|outpost|container)_.*"}', unit: '' },
];

const RANGES = [['15m', 900e3], ['1h', 3600e3], ['6h', 21600e3], ['24h', 86400e3], ['7d', 604800e3], ['30d', 2592000e3]];
const COLOURS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#e377c2', '#8c564b', '#17becf', '#7f7f7f', '#bcbd22', '#ff7f0e'];

// A value in `unit`, with `digits` decimals where the unit shows decimals.
function formatWith(unit, digits) {
  const blank = (f) => (v) => (v === null || v === undefined ? '–' : f(v));
  const scaled = (steps, suffix) => blank((v) => {
    let i = 0;
    while (Math.abs(v) >= steps[i + 1]?.[0] && i < steps.length - 1) i++;
    return `${(v / steps[i][0]).toFixed(digits)} ${steps[i][1]}${suffix}`;
  });
  const binary = [[1, 'B'], [1024, 'KiB'], [1024 ** 2, 'MiB'], [1024 ** 3, 'GiB'], [1024 ** 4, 'TiB']];
  const hertz = [[1, 'Hz'], [1e3, 'kHz'], [1e6, 'MHz'], [1e9, 'GHz']];
  if (unit === 'ratio') return blank((v) => `${(v * 100).toFixed(Math.max(0, digits - 1))} %`);
  if (unit === 'bytes') return scaled(binary, '');
  if (unit === 'bytes/s') return scaled(binary, '/s');
  if (unit === 'percent') return blank((v) => `${v.toFixed(Math.max(0, digits - 1))} %`);
  if (unit === 'mebibytes') { const b = scaled(binary, ''); return blank((v) => b(v * 1048576)); }
  if (unit === 'megahertz') { const h = scaled(hertz, ''); return blank((v) => h(v * 1e6)); }
  if (unit === 'hertz') return scaled(hertz, '');
  if (unit === 'celsius') return blank((v) => `${v.toFixed(digits)} °C`);
  if (unit === 'watts') return blank((v) => `${v.toFixed(digits + 1)} W`);
  if (unit === 'seconds') return blank((v) => `${v.toFixed(digits + 2)} s`);
  if (unit === 'per second') return blank((v) => `${Number(v.toPrecision(digits + 3))}/s`);
  return blank((v) => Number(v.toPrecision(digits + 4)).toString());
}

function valueFormat(unit) {
  return formatWith(unit, 1);
}

// Axis labels in `unit` with as few decimals as keep every label apart ("73.4 GiB" once).
function axisValues(unit) {
  return (u, splits) => {
    for (let digits = 0; digits <= 6; digits++) {
      const labels = splits.map(formatWith(unit, digits));
      if (new Set(labels).size === labels.length) return labels;
    }
    return splits.map(formatWith(unit, 6));
  };
}

// A series' unit from its name, as Prometheus names units; the chart's own unit otherwise.
function unitOf(name, group) {
  const rate = group.fn === 'rate';
  const known = [['_ratio', 'ratio'], ['_hertz', 'hertz'], ['_bytes_total', 'bytes/s'], ['_bytes', 'bytes'], ['_celsius', 'celsius'],
    ['_watts', 'watts'], ['_seconds_total', 'ratio'], ['_seconds', 'seconds'], ['_total', 'per second']];
  for (const [suffix, unit] of known) {
    if (name.endsWith(suffix) && (rate || !suffix.endsWith('_total'))) return unit;
  }
  return group.unit;
}

// Each series' scale: the chart's most common unit on the left axis, the next on the right, any
// others on scales of their own without an axis (their values are in the legend).
function scalesFor(series, group) {
  const units = series.map((s) => unitOf(s.name, group));
  const counted = [...new Set(units)].sort((a, b) => units.filter((u) => u === b).length - units.filter((u) => u === a).length);
  const scale = (unit) => (counted.indexOf(unit) === 0 ? 'y' : counted.indexOf(unit) === 1 ? 'y2' : `y${counted.indexOf(unit) + 1}`);
  return { units, counted, scale };
}

function unitName(unit) {
  return { ratio: '%', bytes: 'bytes', 'bytes/s': 'bytes/s', hertz: 'Hz', celsius: '°C', watts: 'W', seconds: 's', percent: '%', 'per second': '/s' }[unit] ?? (unit || 'value');
}


function seriesLabel(series) {
  // A container's cgroup path (`id`) is long and its name says the same.
  const named = series.labels.name !== undefined;
  const rest = Object.entries(series.labels).filter(([k]) => k !== 'instance' && !(named && k === 'id'));
  return `${series.name}${rest.length ? `{${rest.map(([k, v]) => `${k}=${v}`).join(',')}}` : ''}`;
}

// The API's series as uPlot's aligned arrays: x is every timestamp of any series (seconds); a
// series' null (a gap the server found) stays null, so the line breaks; where a series simply
// has no point at another series' timestamp it is undefined, which uPlot draws across.
export function toAligned(answer) {
  const times = new Set();
  for (const series of answer.series) for (const [t] of series.points) times.add(t);
  const xs = [...times].sort((a, b) => a - b);
  const index = new Map(xs.map((t, i) => [t, i]));
  const data = [xs.map((t) => t / 1000)];
  for (const series of answer.series) {
    const ys = new Array(xs.length).fill(undefined);
    for (const [t, v] of series.points) ys[index.get(t)] = v;
    data.push(ys);
  }
  return data;
}

function rangeQuery(device, group, range, width) {
  const query = new URLSearchParams({
    device, match: group.match, start: String(Math.round(range.start)), end: String(Math.round(range.end)),
    max_points: String(Math.max(50, Math.min(2000, Math.round(width)))), fn: group.fn || 'avg',
  });
  return query;
}

// A chart as wide as the page (the explorer's, Compare's).
function fullWidth(view) {
  return Math.max(260, (view.clientWidth || 800) - 8);
}

// Cards are laid out in columns of at least 420 px (style.css); hidden cards have no width of
// their own yet, so the width comes from the grid.
function chartWidth(grid) {
  const total = grid.clientWidth || 800;
  const gap = 16;
  const columns = Math.max(1, Math.floor((total + gap) / (420 + gap)));
  return Math.max(260, Math.floor((total - gap * (columns - 1)) / columns) - 26);
}

// `pendingMarks` may be a promise: the chart's data and the marks are asked for at once.
async function drawChart(card, device, group, range, live, pendingMarks = []) {
  const width = chartWidth(card.parentElement);
  let query; let url; let answer;
  for (const match of [group.match].flat()) {
    query = rangeQuery(device, { ...group, match }, range, width);
    url = `/api/range?${query}`;
    answer = await api(url);
    if (answer.series.length) break;
  }
  const body = card.querySelector('.chart');
  const links = card.querySelector('.export');
  show(links,
    el('a', { href: `/api/export?${query}&format=csv`, download: 'outpost.csv' }, 'CSV'), ' ',
    el('a', { href: `/api/export?${query}&format=json`, download: 'outpost.json' }, 'JSON'));
  if (answer.series.length === 0) {
    card.hidden = true;
    delete window.outpost.charts[group.title];
    return;
  }
  const marks = await pendingMarks;
  card.hidden = false;
  const data = toAligned(answer);
  const { units, counted, scale } = scalesFor(answer.series, group);
  const hidden = new Set(card._hidden ?? []);
  // Ratios read best on a fixed 0-100 % axis (an idle GPU is a flat line at 0, not noise).
  const scales = { x: { time: true, min: range.start / 1000, max: range.end / 1000 } };
  for (const unit of counted) {
    scales[scale(unit)] = unit === 'ratio' ? { range: (u, min, max) => [0, Math.max(1, max ?? 1)] } : {};
  }
  // Wide enough for the longest label, which more decimals can make long.
  const size = (u, values) => Math.max(60, Math.max(0, ...(values ?? []).map((v) => String(v).length)) * 7 + 18);
  const colours = chartColours();
  const axes = [{ ...colours }, { ...colours, scale: 'y', values: axisValues(counted[0]), size, label: counted.length > 1 ? unitName(counted[0]) : undefined }];
  if (counted.length > 1) {
    axes.push({ ...colours, scale: 'y2', side: 1, values: axisValues(counted[1]), size, label: unitName(counted[1]), grid: { show: false } });
  }
  const options = {
    width, height: 220,
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), zone()),
    cursor: { drag: { x: true, y: false } },
    scales,
    legend: { live: true },
    axes,
    series: [{ label: `time (${zone()})`, value: (u, v) => (v === null || v === undefined ? '–' : localTime(v * 1000)) },
      ...answer.series.map((series, i) => ({
        label: seriesLabel(series),
        scale: scale(units[i]),
        stroke: COLOURS[i % COLOURS.length],
        width: 1.5,
        spanGaps: false,
        show: !hidden.has(seriesLabel(series)),
        value: (u, v) => valueFormat(units[i])(v),
      }))],
    hooks: {
      setSelect: [(u) => {
        if (u.select.width < 5) return;
        const start = u.posToVal(u.select.left, 'x') * 1000;
        const end = u.posToVal(u.select.left + u.select.width, 'x') * 1000;
        u.setSelect({ width: 0, height: 0 }, false);
        card.dispatchEvent(new CustomEvent('zoom', { bubbles: true, detail: { start, end } }));
      }],
      setSeries: [(u, i) => {
        if (i === null) return;
        const label = u.series[i].label;
        if (u.series[i].show) hidden.delete(label); else hidden.add(label);
        card._hidden = [...hidden];
      }],
      ready: [(u) => placeMarks(u, marks)],
      setSize: [(u) => placeMarks(u, marks)],
    },
  };
  if (card._plot) card._plot.destroy();
  card._plot = new uPlot(options, data, body);
  window.outpost.charts[group.title] = { url, answer, data: card._plot.data, live, units: counted };
}

// Events on every chart of a device: a line at each, a band over each outage, its text on hover.
function placeMarks(u, marks) {
  u.over.querySelectorAll('.mark').forEach((m) => m.remove());
  const [min, max] = [u.scales.x.min, u.scales.x.max];
  for (const mark of marks) {
    const from = mark.at / 1000;
    const to = (mark.until ?? mark.at) / 1000;
    if (!(to >= min && from <= max)) continue;
    const left = Math.round(u.valToPos(Math.max(from, min), 'x'));
    const style = mark.until === undefined ? `left: ${left}px`
      : `left: ${left}px; width: ${Math.max(3, Math.round(u.valToPos(Math.min(to, max), 'x')) - left)}px`;
    u.over.append(el('div', { class: `mark ${mark.kind}`, title: mark.text, 'data-kind': mark.kind, style },
      mark.until === undefined ? [] : el('span', { class: 'grip' })));
  }
}

const CHANGE_SERIES = ['node_boot_time_seconds', 'outpost_clock_last_step_timestamp_seconds',
  'outpost_clock_last_step_seconds', 'outpost_config_last_reload_success_timestamp_seconds'];

// A signed duration: "+1 h 0 min", "-3 d 0 h".
function signedDuration(seconds) {
  return `${seconds < 0 ? '-' : '+'}${duration(Math.abs(seconds) * 1000)}`;
}

// The times the agent sent no self-metrics, from their count per bucket: runs of empty buckets
// from the first report on, at least two buckets and three of the agent's reporting intervals
// long (estimated from the counts), so that one late report is no outage. The run going on at
// the end counts only for a device not online (an online device's last seconds are in transit).
function outageMarks(presence, range, online) {
  const counts = (presence?.series?.[0]?.points ?? []).filter(([, v]) => v !== null && v > 0);
  if (!counts.length) return [];
  const step = presence.step_ms;
  const first = counts[0][0];
  const total = counts.reduce((sum, [, v]) => sum + v, 0);
  const interval = (counts[counts.length - 1][0] + step - first) / total;
  const least = Math.max(2 * step, 3 * interval);
  const reported = new Set(counts.map(([t]) => t));
  const buckets = [];
  for (let t = first; t <= range.end; t += step) {
    if (t + step > range.end && !reported.has(t)) break;
    buckets.push([t, reported.has(t) ? 1 : null]);
  }
  return emptyRuns(buckets, step, range.end)
    .filter((run) => run.duration >= least && (run.end !== null || !online))
    .map((run) => {
      const until = run.end ?? run.until;
      return { at: run.start, until, kind: 'outage',
        text: `no data from ${stamp(run.start)} to ${run.end === null ? 'now' : stamp(until)} (${duration(run.duration)})` };
    });
}

// What happened to the device in `range`, to mark on its charts: alerts firing and resolving
// (the fleet's history), outages (no self-metrics from the agent), reboots (the boot time moving
// on past the last report), steps of the device's clock and config reloads (new values of the
// agent's series that record them).
async function deviceMarks(id, range, alerts, online) {
  const marks = [];
  for (const event of alerts.history ?? []) {
    if (event.device !== id || !(event.state === 'firing' || event.state === 'resolved')) continue;
    const at = Date.parse(event.at ?? event.resolved_at ?? event.fired_at ?? '');
    if (Number.isNaN(at) || at < range.start || at > range.end) continue;
    marks.push({ at, kind: event.state, text: `${event.rule} ${event.state} (${event.severity}) at ${stamp(at)}${event.summary ? `: ${event.summary}` : ''}` });
  }
  const [start, end] = [String(Math.round(range.start)), String(Math.round(range.end))];
  const changesQuery = new URLSearchParams({ device: id, match: `{__name__=~${promString(CHANGE_SERIES.join('|'))}}`, start, end, max_points: '2000', fn: 'last' });
  const presenceQuery = new URLSearchParams({ device: id, match: 'outpost_uptime_seconds', start, end, max_points: '2000', fn: 'count' });
  const [changes, presence] = await Promise.all([
    api(`/api/range?${changesQuery}`).catch(() => ({ series: [] })),
    api(`/api/range?${presenceQuery}`).catch(() => null)]);
  const points = (name) => (changes.series ?? []).filter((s) => s.name === name).flatMap((s) => s.points.filter(([, v]) => v !== null));
  let previous = null;
  for (const [t, value] of points('node_boot_time_seconds')) {
    // The boot time wanders by a second as the clock is slewed, and a step of the clock moves
    // it by the step, but neither moves it past the last report: a reboot does.
    if (previous !== null && value - previous.value > 1 && value * 1000 > previous.t) {
      marks.push({ at: value * 1000, kind: 'reboot', text: `rebooted at ${stamp(value * 1000)}` });
    }
    previous = { t, value };
  }
  const steps = new Map(points('outpost_clock_last_step_seconds'));
  const seen = new Set();
  for (const [t, value] of points('outpost_clock_last_step_timestamp_seconds')) {
    const at = value * 1000;
    if (seen.has(value) || at < range.start || at > range.end) continue;
    seen.add(value);
    const by = steps.get(t);
    marks.push({ at, kind: 'clock', text: `the device's clock stepped${by === undefined ? '' : ` by ${signedDuration(by)}`} at ${stamp(at)}; the hub corrected the timestamps written before` });
  }
  seen.clear();
  for (const [, value] of points('outpost_config_last_reload_success_timestamp_seconds')) {
    const at = value * 1000;
    if (seen.has(value) || at < range.start || at > range.end) continue;
    seen.add(value);
    marks.push({ at, kind: 'reload', text: `the agent reloaded its config at ${stamp(at)}` });
  }
  marks.push(...outageMarks(presence, range, online));
  return marks;
}

async function devicePage(view, id) {
  const params = new URLSearchParams(location.search);
  let range;
  function rangeFromUrl() {
    const now = Date.now();
    if (params.get('start') && params.get('end')) {
      return { start: Number(params.get('start')), end: Number(params.get('end')), live: false, name: 'custom' };
    }
    const name = params.get('range') || '1h';
    const span = RANGES.find(([n]) => n === name)?.[1] ?? 3600e3;
    return { start: now - span, end: now, live: true, name };
  }
  range = rangeFromUrl();
  const [device, alerts] = await Promise.all([api(`/api/devices/${encodeURIComponent(id)}`), api('/api/alerts')]);
  const meta = device.meta || {};
  const facts = [
    ['State', el('span', { class: `state ${device.state}` }, device.state)],
    ['Last seen', ago(device.last_seen_ms)], ['Model', meta.model ?? '–'], ['JetPack', meta.jetpack ?? '–'],
    ['L4T', meta.l4t ?? '–'], ['Agent', meta.agent_version ?? '–'], ['Boot', meta.boot_id ?? '–'],
    ['Batches', device.batches], ['Samples', device.samples], ['Sync lag', duration(device.sync_lag_ms)],
    ['Clock offset', device.clock_offset_ms === null || device.clock_offset_ms === undefined ? '–' : `${device.clock_offset_ms} ms`],
  ];
  // What holds now (with since when), then the transitions (each with its time): the same alert
  // appears in both only as what it is now and what happened to it.
  const holding = (alerts.alerts ?? []).filter((a) => a.device === id && (a.state === 'firing' || a.state === 'pending'));
  const transitions = (alerts.history ?? []).filter((a) => a.device === id).slice(0, 20);
  const alertItem = (a, time) => el('li', {}, el('span', { class: `badge ${a.severity}` }, a.severity), ` ${a.rule} ${a.state} `,
    el('time', { datetime: time ?? '' }, stamp(time)), a.summary ? el('div', { class: 'muted' }, a.summary) : null);
  // Every metric the device sends, each a link to the explorer: the charts show the common
  // ones, this reaches the rest.
  const selector = `{instance="${id.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"}`;
  const metricNames = (await api(`/api/v1/label/__name__/values?${new URLSearchParams({ 'match[]': selector })}`).catch(() => ({ data: [] }))).data ?? [];
  const metricsList = el('details', { class: 'metrics' }, el('summary', {}, `All ${metricNames.length} metrics`),
    el('ul', {}, metricNames.map((name) => el('li', {}, el('a', { href: `/explore?${new URLSearchParams({ q: `${name}${selector}` })}` }, name)))));
  const rangeProblem = el('span', { class: 'error', role: 'alert' });
  const picker = el('div', { class: 'ranges', role: 'group', 'aria-label': 'Time range' },
    RANGES.map(([name]) => el('button', { 'data-range': name, 'aria-pressed': String(range.name === name), onclick: () => setRange({ range: name }) }, name)),
    el('label', {}, ' from ', el('input', { type: 'datetime-local', name: 'from' })),
    el('label', {}, ' to ', el('input', { type: 'datetime-local', name: 'to' })),
    el('button', { onclick: () => {
      const from = picker.querySelector('[name=from]').value; const to = picker.querySelector('[name=to]').value;
      const start = from && fromZoneInput(from); const end = to && fromZoneInput(to);
      if (!from || !to) { rangeProblem.textContent = 'Give both ends of the range.'; return; }
      if (!(end > start)) { rangeProblem.textContent = 'The end must be after the start.'; return; }
      setRange({ start, end });
    } }, 'Apply'),
    el('span', { class: 'muted live' }, range.live ? 'live' : ''),
    el('span', { class: 'shown muted' }, `${stamp(range.start)} to ${stamp(range.end)}`),
    rangeProblem);
  if (!range.live) {
    picker.querySelector('[name=from]').value = toZoneInput(range.start);
    picker.querySelector('[name=to]').value = toZoneInput(range.end);
  }
  const charts = el('div', { class: 'charts' });
  const empty = el('p', { class: 'muted empty', hidden: true });
  // The log lines the device kept and sent (pattern hits, journal entries at err or worse),
  // newest first, searched at the hub.
  const logList = el('div', { class: 'scroll' });
  let logTimer = null;
  const logSearch = el('input', { type: 'search', name: 'logs', placeholder: 'Search the kept log lines', 'aria-label': 'Search the log lines',
    value: params.get('logs') ?? '',
    oninput: () => { clearTimeout(logTimer); logTimer = setTimeout(() => showLogs(logSearch.value).catch(() => {}), 250); } });
  async function showLogs(search) {
    const answer = await api(`/api/devices/${encodeURIComponent(id)}/logs?${new URLSearchParams({ q: search, limit: '200' })}`);
    if (search !== logSearch.value) return;
    const lines = answer.lines ?? [];
    show(logList, lines.length
      ? el('table', { class: 'log-lines' },
        el('thead', {}, el('tr', {}, ['Time', 'Source', 'Priority', 'Patterns', 'Line'].map((t) => el('th', { scope: 'col' }, t)))),
        el('tbody', {}, lines.map((l) => el('tr', { 'data-seq': String(l.seq) },
          el('td', {}, el('time', { datetime: new Date(l.at_ms).toISOString() }, stamp(l.at_ms))),
          el('td', {}, l.unit ? `${l.source} (${l.unit})` : l.source),
          el('td', {}, l.priority ? el('span', { class: `badge ${['emerg', 'alert', 'crit', 'err'].includes(l.priority) ? 'critical' : 'info'}` }, l.priority) : ''),
          el('td', {}, l.patterns.join(', ')),
          el('td', {}, el('code', {}, l.cut ? `${l.line}…` : l.line))))))
      : el('p', { class: 'muted' }, search ? `No kept line holds "${search}".`
        : 'No log lines kept. The agent keeps the lines its [[logs.pattern]] sections match and the journal\'s errors (docs/logs.md).'));
    window.outpost.logs = { search, lines: lines.length };
  }
  const logsSection = el('section', { class: 'logs' }, el('h2', {}, 'Log lines'), logSearch, logList);
  show(view,
    el('h1', {}, id),
    el('div', { class: 'device' },
      el('section', { class: 'main' }, picker, empty, charts, logsSection),
      el('aside', {},
        el('dl', {}, facts.map(([k, v]) => [el('dt', {}, k), el('dd', {}, v)])),
        el('h2', {}, 'Alerts now'),
        holding.length ? el('ul', { class: 'alerts now' }, holding.map((a) => alertItem(a, a.started_at))) : el('p', { class: 'muted' }, 'None.'),
        el('h2', {}, 'Recent transitions'),
        transitions.length ? el('ul', { class: 'alerts transitions' }, transitions.map((a) => alertItem(a, a.at))) : el('p', { class: 'muted' }, 'None.'),
        metricsList)));
  function setRange(next) {
    const query = new URLSearchParams();
    if (next.range) query.set('range', next.range);
    if (next.start) { query.set('start', String(Math.round(next.start))); query.set('end', String(Math.round(next.end))); }
    go(`/device/${encodeURIComponent(id)}?${query}`);
  }
  showLogs(logSearch.value).catch((error) => show(logList, el('p', { class: 'error' }, error.message)));
  charts.addEventListener('zoom', (event) => setRange(event.detail));
  window.outpost.charts = {};
  const cards = GROUPS.map((group) => {
    const card = el('article', { class: 'card', 'data-group': group.title, hidden: true },
      el('header', {}, el('h2', {}, group.title), el('span', { class: 'export' })), el('div', { class: 'chart' }));
    charts.append(card);
    return { card, group };
  });
  async function drawAll() {
    let failure = null;
    // Marks that cannot be had leave the charts unmarked, not undrawn.
    const marks = deviceMarks(id, range, alerts, device.state === 'online').catch(() => []);
    await Promise.all(cards.map(({ card, group }) => drawChart(card, id, group, range, range.live, marks).catch((error) => {
      if (error instanceof Unauthorized) throw error;
      card.hidden = true;
      failure = error;
    })));
    // One message for the page, not one per chart: a bad range or an unreachable hub is the
    // same for every chart.
    const shown = cards.some(({ card }) => !card.hidden);
    empty.hidden = shown;
    empty.className = failure ? 'error empty' : 'muted empty';
    empty.textContent = failure ? `The charts could not be drawn: ${failure.message}`
      : `No data from ${id} between ${stamp(range.start)} and ${stamp(range.end)}.`;
    window.outpost.pages += 1;
  }
  if (!(range.end > range.start)) {
    empty.hidden = false;
    empty.className = 'error empty';
    empty.textContent = 'This range ends before it starts: pick another.';
    return;
  }
  await drawAll();
  if (range.live) {
    // Redraw as the device's data arrives, at most every 2 s, while this page is shown.
    const source = new EventSource(`/api/live?device=${encodeURIComponent(id)}`);
    let pending = false;
    let last = 0;
    source.addEventListener('ingested', () => {
      if (!view.isConnected || location.pathname !== `/device/${encodeURIComponent(id)}`) { source.close(); return; }
      if (pending) return;
      pending = true;
      setTimeout(async () => {
        const span = range.end - range.start;
        range = { ...range, end: Date.now(), start: Date.now() - span };
        try { await drawAll(); } finally { pending = false; last = Date.now(); }
      }, Math.max(0, 2000 - (Date.now() - last)));
    });
    view._cleanup = () => source.close();
  }
}

// ---------- alerts ----------

// The hub's silences: what, for whom, until when, who and why, and what they hold back now.
function silencesTable(silences, admin, redraw) {
  const when = (ms) => stamp(ms);
  const rows = silences.map((s) => el('tr', { 'data-silence': s.id },
    el('td', {}, s.device === '*' ? (s.device_match ? el('code', {}, s.device_match) : 'whole fleet') : s.device), el('td', {}, el('code', {}, s.match)),
    el('td', {}, s.state), el('td', {}, when(s.starts_ms)), el('td', {}, when(s.expired_ms ?? s.ends_ms)),
    el('td', {}, s.created_by), el('td', {}, s.comment ?? ''),
    el('td', {}, (s.silencing ?? []).map((a) => `${a.device}: ${a.rule}`).join(', ') || '–'),
    el('td', {}, admin && s.state !== 'expired'
      ? el('button', { type: 'button', onclick: async () => { await api(`/api/silences/${encodeURIComponent(s.id)}/expire`, { method: 'POST' }); redraw(); } }, 'Expire')
      : null)));
  return el('div', { class: 'scroll' }, el('table', { class: 'alerts-table silences' },
    el('thead', {}, el('tr', {}, ['Devices', 'Match', 'State', 'Starts', 'Ends', 'By', 'Why', 'Silencing', ''].map((t) => el('th', { scope: 'col' }, t)))),
    el('tbody', {}, rows)));
}

async function alertsPage(view, me) {
  const alerts = await api('/api/alerts');
  const silences = (await api('/api/silences')).silences ?? [];
  const params = new URLSearchParams(location.search);
  const filters = { severity: params.get('severity') || '', device: params.get('device') || '', rule: params.get('rule') || '' };
  const all = (alerts.alerts ?? []).map((a) => ({ ...a, current: true })).concat(alerts.history ?? []);
  const pick = (key) => el('select', { name: key, 'aria-label': key, onchange: (e) => { filters[key] = e.target.value; draw(); } },
    el('option', { value: '' }, `any ${key}`),
    [...new Set(all.map((a) => a[key]).filter(Boolean))].sort().map((v) => el('option', { value: v, selected: filters[key] === v }, v)));
  const firing = el('tbody');
  const pending = el('tbody');
  const history = el('tbody');
  // A firing alert's duration runs until now; a transition in the history is one instant, and
  // only a resolve says how long the alert fired.
  const row = (a, live) => el('tr', {},
    el('td', {}, el('span', { class: `badge ${a.severity}` }, a.severity)), el('td', {}, a.device), el('td', {}, a.rule),
    el('td', {}, a.state), el('td', {}, a.summary ?? ''), el('td', {}, stamp(live ? a.started_at : a.at ?? a.started_at)),
    el('td', {}, stamp(a.resolved_at)),
    el('td', {}, a.started_at && (live || a.resolved_at) ? duration((a.resolved_at ? Date.parse(a.resolved_at) : Date.now()) - Date.parse(a.started_at)) : '–'));
  const pendingSection = el('section', { class: 'pending' }, el('h2', {}, 'Pending'),
    el('p', { class: 'muted' }, 'Conditions that hold but not yet for the rule\'s "for": not firing, nobody told.'),
    el('div', { class: 'scroll' }, el('table', { class: 'alerts-table pending' }, el('thead', {}, el('tr', {},
      ['Severity', 'Device', 'Rule', 'State', 'Summary', 'Since', '', 'Duration'].map((t) => el('th', { scope: 'col' }, t)))), pending)));
  function draw() {
    const keep = (a) => Object.entries(filters).every(([k, v]) => !v || a[k] === v);
    const current = (alerts.alerts ?? []).filter(keep);
    show(firing, ...current.filter((a) => a.state === 'firing').map((a) => row(a, true)));
    show(pending, ...current.filter((a) => a.state === 'pending').map((a) => row(a, true)));
    pendingSection.hidden = pending.children.length === 0;
    show(history, ...(alerts.history ?? []).filter(keep).map((a) => row(a, false)));
    const query = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
    window.history.replaceState(null, '', `/alerts${query.toString() ? `?${query}` : ''}`);
  }
  const head = (when) => el('thead', {}, el('tr', {}, ['Severity', 'Device', 'Rule', 'State', 'Summary', when, 'Resolved', 'Duration'].map((t) => el('th', { scope: 'col' }, t))));
  const admin = me.identity?.role === 'admin';
  const message = el('p', { role: 'status' });
  const form = el('form', {
    class: 'silence',
    onsubmit: async (event) => {
      event.preventDefault();
      const data = new FormData(event.target);
      const hours = Number(data.get('hours'));
      try {
        await api('/api/silences', { method: 'POST', body: JSON.stringify({
          device: data.get('device') || '', device_match: data.get('device_match') || '', match: data.get('match'),
          ends_ms: Date.now() + hours * 3600e3, comment: data.get('comment') || '',
        }) });
        message.textContent = data.get('device_match') ? `Silence sent to the devices ${data.get('device_match')}.`
          : data.get('device') === '*' ? 'Silence sent to the whole fleet.' : `Silence sent to ${data.get('device')}.`;
      } catch (error) { message.textContent = error.message; }
    },
  },
  el('h2', {}, 'Silence'),
  el('label', {}, 'Device ', el('input', { name: 'device', placeholder: 'dev-a, or * for the fleet' })),
  el('label', {}, 'Devices labelled ', el('input', { name: 'device_match', placeholder: '{site="north"}' })),
  el('label', {}, 'Match ', el('input', { name: 'match', required: true, placeholder: '{alertname="cpu_high"}' })),
  el('label', {}, 'Hours ', el('input', { name: 'hours', type: 'number', min: '0.1', step: '0.1', value: '2', required: true })),
  el('label', {}, 'Comment ', el('input', { name: 'comment' })),
  el('button', { type: 'submit' }, 'Silence'), message);
  show(view, el('h1', {}, 'Alerts'),
    el('div', { class: 'toolbar' }, pick('severity'), pick('device'), pick('rule')),
    el('h2', {}, 'Firing'), el('div', { class: 'scroll' }, el('table', { class: 'alerts-table firing' }, head('Started'), firing)),
    pendingSection,
    el('h2', {}, 'History'), el('div', { class: 'scroll' }, el('table', { class: 'alerts-table history' }, head('At'), history)),
    el('h2', {}, 'Silences'), silencesTable(silences, admin, () => alertsPage(view, me)),
    ...(admin ? [form] : []));
  draw();
  // The page follows the fleet by itself, except while someone is writing a silence.
  const timer = setInterval(() => {
    if (!view.isConnected) { clearInterval(timer); return; }
    if (form.contains(document.activeElement)) return;
    clearInterval(timer);
    alertsPage(view, me).catch(() => {});
  }, ALERTS_REFRESH_MS);
}

// How often the alerts page asks for the fleet's alerts again.
const ALERTS_REFRESH_MS = 10000;

// ---------- availability ----------

const AVAILABILITY_RANGES = [['24h', 'Last 24 hours'], ['7d', 'Last 7 days'], ['30d', 'Last 30 days'], ['90d', 'Last 90 days']];

// Each probe's availability and outages over a range, as uptime monitors show them; an admin
// notes what resolved an outage.
async function probesPage(view, me) {
  const params = new URLSearchParams(location.search);
  const range = AVAILABILITY_RANGES.some(([r]) => r === params.get('range')) ? params.get('range') : '24h';
  const answer = await api(`/api/probes/outages?start=now-${range}&end=now`);
  const admin = me.identity?.role === 'admin';
  const when = (ms) => (ms ? stamp(ms) : 'ongoing');
  const picker = el('select', {
    name: 'range', 'aria-label': 'Range',
    onchange: (event) => go(`/probes?range=${event.target.value}`),
  }, AVAILABILITY_RANGES.map(([value, title]) => el('option', { value, selected: value === range }, title)));
  const probes = answer.probes ?? [];
  const share = (p) => (p.availability === null || p.availability === undefined ? '–' : `${p.availability.toFixed(3)} %`);
  const restored = (p) => p.outages.filter((o) => o.severity === 'critical' && o.end_ms);
  const mttr = (p) => (restored(p).length ? duration(restored(p).reduce((sum, o) => sum + o.duration_seconds, 0) * 1000 / restored(p).length) : '–');
  const summary = el('table', { class: 'probes' },
    el('thead', {}, el('tr', {}, ['Device', 'Probe', 'Kind', 'Availability', 'Down', 'Outages', 'Mean time to restore']
      .map((t) => el('th', { scope: 'col', class: ['Availability', 'Down', 'Outages'].includes(t) ? 'num' : '' }, t)))),
    el('tbody', {}, probes.map((p) => el('tr', { 'data-probe': `${p.device}/${p.probe}` },
      el('td', {}, el('a', { href: `/device/${encodeURIComponent(p.device)}` }, p.device)), el('td', {}, p.probe), el('td', {}, p.kind ?? ''),
      el('td', { class: `num ${p.availability !== null && p.availability < 99 ? 'bad' : ''}` }, share(p)),
      el('td', { class: 'num' }, duration(p.down_seconds * 1000)),
      el('td', { class: 'num' }, p.outages.filter((o) => o.severity === 'critical').length),
      el('td', {}, mttr(p))))));
  const outages = probes.flatMap((p) => p.outages.map((o) => ({ ...o, device: p.device, probe: p.probe })))
    .sort((a, b) => b.start_ms - a.start_ms);
  const noteCell = (o) => el('td', {}, o.note ? `${o.note.note} (${o.note.by})` : '',
    admin ? el('button', {
      type: 'button', class: 'link',
      onclick: async () => {
        const text = prompt(`Note on ${o.device} ${o.probe} from ${when(o.start_ms)}`, o.note?.note ?? '');
        if (text === null) return;
        // An edit keeps the note's own start, so that it replaces the note rather than adding one.
        const at = o.note ? { start_ms: o.note.start_ms, step_ms: o.note.step_ms } : { start_ms: o.start_ms, step_ms: answer.step_ms };
        await api('/api/outages/note', { method: 'POST', body: JSON.stringify({ device: o.device, probe: o.probe, ...at, note: text }) });
        route();
      },
    }, o.note ? 'Edit' : 'Add note') : null);
  const list = el('table', { class: 'outages' },
    el('thead', {}, el('tr', {}, ['Device', 'Probe', 'Severity', 'Start', 'End', 'Duration', 'Note'].map((t) => el('th', { scope: 'col' }, t)))),
    el('tbody', {}, outages.map((o) => el('tr', {},
      el('td', {}, o.device), el('td', {}, o.probe), el('td', {}, el('span', { class: `badge ${o.severity}` }, o.severity)),
      el('td', {}, when(o.start_ms)), el('td', {}, when(o.end_ms)),
      el('td', {}, duration((o.end_ms ?? Date.now()) - o.start_ms)), noteCell(o)))));
  show(view, el('h1', {}, 'Availability'),
    el('div', { class: 'toolbar' }, picker, el('span', { class: 'muted' }, `${when(answer.start)} to ${when(answer.end)}, resolution ${duration(answer.step_ms)}`)),
    probes.length ? el('div', { class: 'scroll' }, summary) : el('p', { class: 'muted' }, 'No probe has reported in this range. Probes are set in the agents\' [[probe]] sections.'),
    el('h2', {}, 'Outages'),
    outages.length ? el('div', { class: 'scroll' }, list) : el('p', { class: 'muted' }, 'No outages in this range.'));
}

// ---------- explorer ----------

const EXPLORE_RANGES = ['15m', '1h', '6h', '24h', '7d'];

// A PromQL matrix as uPlot's aligned arrays (Prometheus answers seconds and values as text).
function matrixToAligned(result) {
  const series = result.map((s) => ({
    name: s.metric.__name__ ?? '',
    labels: Object.fromEntries(Object.entries(s.metric).filter(([k]) => k !== '__name__')),
    points: s.values.map(([t, v]) => [Math.round(t * 1000), Number(v)]),
  }));
  return { series, data: toAligned({ series }) };
}

function promLabel(metric) {
  const name = metric.__name__ ?? '';
  const rest = Object.entries(metric).filter(([k]) => k !== '__name__').map(([k, v]) => `${k}="${v}"`);
  return `${name}${rest.length || !name ? `{${rest.join(', ')}}` : ''}`;
}

// Completion for the query box: metric names for the word being typed, label names inside
// `{...}` (the hub's device labels among them), and a label's values after `label="`, as
// whole-query suggestions (what an input's datalist offers).
async function suggestions(text, names) {
  const open = text.lastIndexOf('{');
  if (open > text.lastIndexOf('}')) {
    const metric = text.slice(0, open).match(/([a-zA-Z_:][a-zA-Z0-9_:]*)$/)?.[1];
    const inside = text.slice(open + 1);
    const value = inside.match(/(?:^|,)\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!=|!~|=)\s*"([^"\\]*)$/);
    if (value) {
      const [, label, partial] = value;
      const query = metric ? `?match[]=${encodeURIComponent(metric)}` : '';
      const values = (await api(`/api/v1/label/${encodeURIComponent(label)}/values${query}`).catch(() => ({ data: [] }))).data ?? [];
      const stem = text.slice(0, text.length - partial.length);
      return values.filter((v) => v.startsWith(partial)).slice(0, 50).map((v) => `${stem}${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`);
    }
    const typed = inside.match(/(?:^|,)\s*([a-zA-Z_]*)$/)?.[1];
    if (typed === undefined) return [];
    const query = metric ? `?match[]=${encodeURIComponent(metric)}` : '';
    const labels = (await api(`/api/v1/labels${query}`)).data ?? [];
    const stem = text.slice(0, text.length - typed.length);
    return labels.filter((l) => l !== '__name__' && l.startsWith(typed)).slice(0, 50).map((l) => `${stem}${l}="`);
  }
  const word = text.match(/([a-zA-Z_:][a-zA-Z0-9_:]*)$/)?.[1] ?? '';
  if (!word) return [];
  const stem = text.slice(0, text.length - word.length);
  return names.filter((n) => n.startsWith(word)).slice(0, 50).map((n) => `${stem}${n}`);
}

// Anyone types PromQL: a chart over a range, or the values at one instant; the address holds
// the query, so it can be shared.
// Draws one query into `chart` and `table`: a chart over `range` and the last values, or the
// values at an instant. Returns what it drew.
async function renderQuery({ query, mode, range }, { chart, table, width, height }) {
  const end = Date.now() / 1000;
  let answer;
  if (mode === 'range') {
    const span = RANGES.find(([n]) => n === range)[1] / 1000;
    const step = Math.max(1, Math.ceil(span / Math.max(100, width / 2)));
    answer = await api(`/api/v1/query_range?${new URLSearchParams({ query, start: String(end - span), end: String(end), step: String(step) })}`);
    const { series, data } = matrixToAligned(answer.data.result);
    const units = series.map((s) => unitOf(s.name, { unit: '' }));
    const colours = chartColours();
    chart._plot?.destroy();
    chart._plot = new uPlot({
      width, height,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), zone()),
      scales: { x: { time: true } },
      axes: [{ ...colours }, { ...colours, values: axisValues(units[0] ?? ''), size: (u, v) => Math.max(60, Math.max(0, ...(v ?? []).map((x) => String(x).length)) * 7 + 18) }],
      series: [{ label: `time (${zone()})`, value: (u, v) => (v === null || v === undefined ? '–' : localTime(v * 1000)) },
        ...answer.data.result.map((s, i) => ({ label: promLabel(s.metric), stroke: COLOURS[i % COLOURS.length], width: 1.5, spanGaps: false, value: (u, v) => valueFormat(units[i])(v) }))],
    }, data, chart);
  } else {
    answer = await api(`/api/v1/query?${new URLSearchParams({ query, time: String(end) })}`);
  }
  const result = answer.data.result;
  const rows = answer.data.resultType === 'scalar' || answer.data.resultType === 'string'
    ? [[answer.data.resultType, result[1]]]
    : result.map((s) => [promLabel(s.metric), s.value ? s.value[1] : s.values[s.values.length - 1]?.[1] ?? '']);
  show(table, el('table', { class: 'explore-table' },
    el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'Series'), el('th', { scope: 'col', class: 'num' }, mode === 'range' ? 'Last value' : 'Value'))),
    el('tbody', {}, rows.map(([label, value]) => el('tr', {}, el('td', {}, el('code', {}, label)), el('td', { class: 'num' }, value))))),
  el('p', { class: 'muted' }, `${rows.length} series`));
  return { mode, resultType: answer.data.resultType, series: rows.length };
}

// Pins the explorer's query to a board, made if it does not exist yet.
function pinForm(state) {
  const boards = el('datalist', { id: 'board-names' });
  api('/api/boards').then((b) => show(boards, ...(b.boards ?? []).map((x) => el('option', { value: x.name })))).catch(() => {});
  const said = el('span', { class: 'muted', role: 'status' });
  return el('form', { class: 'pin', onsubmit: async (event) => {
    event.preventDefault();
    const data = new FormData(event.target);
    const name = String(data.get('board')).trim();
    try {
      const current = await api(`/api/boards/${encodeURIComponent(name)}`).catch((error) => {
        if (error instanceof Unauthorized) throw error;
        return { panels: [] };
      });
      const panel = { title: String(data.get('title')) || state.q, query: state.q, mode: state.mode, range: state.range };
      await api(`/api/boards/${encodeURIComponent(name)}`, { method: 'PUT', body: JSON.stringify({ panels: [...current.panels, panel] }) });
      show(said, 'Pinned to ', el('a', { href: `/boards/${encodeURIComponent(name)}` }, name), '.');
    } catch (error) { said.textContent = error.message; }
  } },
  el('label', {}, 'Pin to board ', el('input', { name: 'board', list: 'board-names', required: true, placeholder: 'Site north' })), boards,
  el('label', {}, ' as ', el('input', { name: 'title', placeholder: 'title' })),
  el('button', { type: 'submit' }, 'Pin'), said);
}

// Anyone types PromQL: a chart over a range, or the values at one instant; the address holds
// the query, so it can be shared.
async function explorePage(view, me) {
  const params = new URLSearchParams(location.search);
  const state = {
    q: params.get('q') ?? '',
    mode: params.get('mode') === 'instant' ? 'instant' : 'range',
    range: EXPLORE_RANGES.includes(params.get('range')) ? params.get('range') : '1h',
  };
  const names = (await api('/api/v1/label/__name__/values')).data ?? [];
  const options = el('datalist', { id: 'explore-suggestions' });
  const input = el('input', { type: 'text', name: 'q', value: state.q, list: 'explore-suggestions', spellcheck: 'false',
    autocomplete: 'off', placeholder: 'rate(node_network_receive_bytes_total[5m])', 'aria-label': 'PromQL query' });
  input.addEventListener('input', async () => {
    const text = input.value;
    const offered = await suggestions(text, names).catch(() => []);
    if (input.value === text) show(options, ...offered.map((value) => el('option', { value })));
  });
  const mode = el('select', { name: 'mode', 'aria-label': 'Mode' },
    [['range', 'Range'], ['instant', 'Instant']].map(([v, t]) => el('option', { value: v, selected: state.mode === v }, t)));
  const range = el('select', { name: 'range', 'aria-label': 'Range' },
    EXPLORE_RANGES.map((r) => el('option', { value: r, selected: state.range === r }, `last ${r}`)));
  const problem = el('p', { class: 'error', role: 'alert', hidden: true });
  const chart = el('div', { class: 'chart explore-chart' });
  const table = el('div', { class: 'scroll' });
  const form = el('form', { class: 'explore', onsubmit: (event) => {
    event.preventDefault();
    const query = new URLSearchParams({ q: input.value, mode: mode.value, range: range.value });
    go(`/explore?${query}`);
  } }, input, options, mode, range, el('button', { type: 'submit' }, 'Run'));
  const admin = !me?.auth || me?.identity?.role === 'admin';
  show(view, el('h1', {}, 'Explore'), form, problem, chart, table);
  window.outpost.explore = null;
  if (!state.q.trim()) {
    show(table, el('p', { class: 'muted' }, `${names.length} metric names; start typing one, or any PromQL expression.`));
    return;
  }
  try {
    window.outpost.explore = await renderQuery({ query: state.q, mode: state.mode, range: state.range },
      { chart, table, width: fullWidth(view), height: 320 });
    if (admin) view.append(pinForm(state));
  } catch (error) {
    if (error instanceof Unauthorized) throw error;
    problem.hidden = false;
    problem.textContent = error.message;
  }
}

// ---------- boards ----------

async function boardsPage(view, me) {
  const admin = !me?.auth || me?.identity?.role === 'admin';
  const { boards = [] } = await api('/api/boards');
  const said = el('p', { role: 'status', class: 'muted' });
  const list = boards.length
    ? el('table', { class: 'boards' }, el('thead', {}, el('tr', {}, ['Board', 'Panels', 'Changed', 'By'].map((t) => el('th', { scope: 'col' }, t)))),
      el('tbody', {}, boards.map((b) => el('tr', { 'data-board': b.name },
        el('td', {}, el('a', { href: `/boards/${encodeURIComponent(b.name)}` }, b.name)), el('td', {}, b.panels),
        el('td', {}, stamp(b.updated_ms)), el('td', {}, b.updated_by)))))
    : el('p', { class: 'muted' }, 'No boards yet: run a query in Explore and pin it to a board.');
  const importer = el('form', { class: 'import', onsubmit: async (event) => {
    event.preventDefault();
    const file = event.target.querySelector('input[type=file]').files[0];
    try {
      const board = JSON.parse(await file.text());
      const name = String(new FormData(event.target).get('name') || board.name || '').trim();
      await api(`/api/boards/${encodeURIComponent(name)}`, { method: 'PUT', body: JSON.stringify(board) });
      go(`/boards/${encodeURIComponent(name)}`);
    } catch (error) { said.textContent = `Not imported: ${error.message}`; }
  } },
  el('label', {}, 'Import a board (JSON) ', el('input', { type: 'file', name: 'file', accept: 'application/json,.json', required: true })),
  el('label', {}, ' as ', el('input', { name: 'name', placeholder: 'its own name' })),
  el('button', { type: 'submit' }, 'Import'));
  show(view, el('h1', {}, 'Boards'), el('div', { class: 'scroll' }, list), admin ? importer : null, said);
}

async function boardPage(view, name, me) {
  const admin = !me?.auth || me?.identity?.role === 'admin';
  const board = await api(`/api/boards/${encodeURIComponent(name)}`);
  const save = async (panels) => {
    await api(`/api/boards/${encodeURIComponent(name)}`, { method: 'PUT', body: JSON.stringify({ panels }) });
    route();
  };
  const grid = el('div', { class: 'charts board' });
  show(view, el('h1', {}, board.name),
    el('p', { class: 'muted' }, `Changed ${stamp(board.updated_ms)} by ${board.updated_by}. `,
      el('a', { href: `/api/boards/${encodeURIComponent(name)}`, download: `${name}.json` }, 'Export (JSON)'), ' ',
      admin ? el('button', { type: 'button', class: 'link', onclick: async () => {
        if (!confirm(`Delete the board ${name}?`)) return;
        await api(`/api/boards/${encodeURIComponent(name)}`, { method: 'DELETE', body: '{}' });
        go('/boards');
      } }, 'Delete') : null),
    board.panels.length ? grid : el('p', { class: 'muted' }, 'No panels: pin queries from Explore.'));
  window.outpost.board = { name, panels: 0 };
  await Promise.all(board.panels.map(async (panel, i) => {
    const chart = el('div', { class: 'chart' });
    const table = el('div', { class: 'scroll' });
    const card = el('article', { class: 'card', 'data-panel': String(i) },
      el('header', {}, el('h2', {}, panel.title || panel.query),
        el('span', { class: 'export' },
          el('a', { href: `/explore?${new URLSearchParams({ q: panel.query, mode: panel.mode, range: panel.range })}` }, 'Explore'),
          admin ? [' ', el('button', { type: 'button', class: 'link', onclick: () => save(board.panels.filter((_, j) => j !== i)) }, 'Remove')] : null)),
      chart, panel.mode === 'instant' ? table : null);
    grid.append(card);
    try {
      await renderQuery(panel, { chart, table, width: chartWidth(grid), height: 200 });
    } catch (error) {
      if (error instanceof Unauthorized) throw error;
      show(chart, el('p', { class: 'error' }, error.message));
    }
    window.outpost.board.panels += 1;
  }));
}

// ---------- compare ----------

// A PromQL string literal.
const promString = (text) => `"${text.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
// A regular expression that matches exactly these device names.
const exactly = (names) => names.map((n) => n.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|');

// The fleet table's columns as PromQL, one series per device: what Compare draws.
const COMPARE_METRICS = {
  cpu: ['CPU', 'ratio', (d) => `avg by (instance) (jetson_cpu_load_ratio{${d}}) or avg by (instance) (host_cpu_usage_ratio{cpu="total",${d}})`],
  gpu: ['GPU', 'ratio', (d) => `max by (instance) (jetson_engine_load_ratio{engine="GR3D",${d}}) or max by (instance) (jetson_gpu_load_ratio{${d}}) or max by (instance) (DCGM_FI_DEV_GPU_UTIL{${d}}) / 100`],
  ram: ['RAM', 'ratio', (d) => `sum by (instance) (jetson_ram_used_bytes{${d}}) / sum by (instance) (jetson_ram_total_bytes{${d}}) or sum by (instance) (host_memory_used_bytes{${d}}) / sum by (instance) (node_memory_MemTotal_bytes{${d}})`],
  temperature: ['Temperature', 'celsius', (d) => `max by (instance) (jetson_temperature_celsius{${d}}) or max by (instance) (node_hwmon_temp_celsius{${d}}) or max by (instance) (DCGM_FI_DEV_GPU_TEMP{${d}})`],
  power: ['Power', 'watts', (d) => `sum by (instance) (jetson_rail_power_watts{rail=~"VDD_IN|POM_5V_IN",${d}}) or sum by (instance) (DCGM_FI_DEV_POWER_USAGE{${d}})`],
};

// The same metric for several devices on one chart: picked in the fleet table, or by label.
async function comparePage(view) {
  const params = new URLSearchParams(location.search);
  const devices = (params.get('devices') ?? '').split(',').filter(Boolean).slice(0, 50);
  const metric = params.get('metric') || 'cpu';
  const range = EXPLORE_RANGES.includes(params.get('range')) ? params.get('range') : '1h';
  const known = COMPARE_METRICS[metric];
  const names = (await api('/api/v1/label/__name__/values')).data ?? [];
  const reload = (changes) => go(`/compare?${new URLSearchParams({ devices: devices.join(','), metric, range, ...changes })}`);
  const picker = el('select', { name: 'metric', 'aria-label': 'Metric', onchange: (e) => reload({ metric: e.target.value }) },
    Object.entries(COMPARE_METRICS).map(([key, [title]]) => el('option', { value: key, selected: key === metric }, title)),
    el('optgroup', { label: 'Any metric' }, names.map((n) => el('option', { value: n, selected: n === metric }, n))));
  const span = el('select', { name: 'range', 'aria-label': 'Range', onchange: (e) => reload({ range: e.target.value }) },
    EXPLORE_RANGES.map((r) => el('option', { value: r, selected: r === range }, `last ${r}`)));
  const chart = el('div', { class: 'chart compare-chart' });
  const table = el('div', { class: 'scroll' });
  const problem = el('p', { class: 'error', role: 'alert', hidden: true });
  show(view, el('h1', {}, 'Compare'),
    el('div', { class: 'toolbar' }, picker, span, el('span', { class: 'muted' }, devices.length ? devices.join(', ') : '')),
    problem, chart, table);
  window.outpost.compare = null;
  if (devices.length < 1) {
    show(table, el('p', { class: 'muted' }, 'Pick devices in the fleet table (tick them, or filter by a label) and choose Compare.'));
    return;
  }
  const matcher = `instance=~${promString(exactly(devices))}`;
  const unit = known ? known[1] : unitOf(metric, { unit: '' });
  const query = known ? known[2](matcher) : `avg by (instance) (${metric}{${matcher}})`;
  try {
    const end = Date.now() / 1000;
    const seconds = RANGES.find(([n]) => n === range)[1] / 1000;
    const step = Math.max(1, Math.ceil(seconds / 300));
    const answer = await api(`/api/v1/query_range?${new URLSearchParams({ query, start: String(end - seconds), end: String(end), step: String(step) })}`);
    const result = answer.data.result.sort((a, b) => (a.metric.instance ?? '').localeCompare(b.metric.instance ?? ''));
    const { data } = matrixToAligned(result);
    const colours = chartColours();
    const format = valueFormat(unit);
    chart._plot = new uPlot({
      width: fullWidth(view), height: 320,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), zone()),
      scales: { x: { time: true }, ...(unit === 'ratio' ? { y: { range: (u, min, max) => [0, Math.max(1, max ?? 1)] } } : {}) },
      axes: [{ ...colours }, { ...colours, values: axisValues(unit), size: (u, v) => Math.max(60, Math.max(0, ...(v ?? []).map((x) => String(x).length)) * 7 + 18) }],
      series: [{ label: `time (${zone()})`, value: (u, v) => (v === null || v === undefined ? '–' : localTime(v * 1000)) },
        ...result.map((s, i) => ({ label: s.metric.instance ?? '', stroke: COLOURS[i % COLOURS.length], width: 1.5, spanGaps: false, value: (u, v) => format(v) }))],
    }, data, chart);
    const missing = devices.filter((d) => !result.some((s) => s.metric.instance === d));
    show(table, el('table', { class: 'compare-table' },
      el('thead', {}, el('tr', {}, ['Device', 'Now', 'Average', 'Peak'].map((t, i) => el('th', { scope: 'col', class: i ? 'num' : '' }, t)))),
      el('tbody', {}, result.map((s) => {
        const values = s.values.map(([, v]) => Number(v)).filter(Number.isFinite);
        const mean = values.reduce((a, b) => a + b, 0) / (values.length || 1);
        return el('tr', { 'data-device': s.metric.instance },
          el('td', {}, el('a', { href: `/device/${encodeURIComponent(s.metric.instance ?? '')}` }, s.metric.instance ?? '')),
          el('td', { class: 'num' }, format(values[values.length - 1])), el('td', { class: 'num' }, format(mean)), el('td', { class: 'num' }, format(Math.max(...values))));
      }))),
    ...(missing.length ? [el('p', { class: 'muted' }, `No data for ${missing.join(', ')} in this range.`)] : []),
    el('p', { class: 'muted' }, el('a', { href: `/explore?${new URLSearchParams({ q: query })}` }, 'Open this query in the explorer')));
    window.outpost.compare = { query, devices: result.map((s) => s.metric.instance) };
  } catch (error) {
    if (error instanceof Unauthorized) throw error;
    problem.hidden = false;
    problem.textContent = error.message;
  }
}

// ---------- reports ----------

const REPORT_RANGES = [['24h', 86400e3], ['7d', 604800e3], ['30d', 2592000e3]];

// The runs of buckets without data in `points` ([t, v] at bucket starts, `null` where nothing
// came), as outages from the first empty bucket to the next with data.
function emptyRuns(points, step, end) {
  const runs = [];
  let start = null;
  for (const [t, v] of points) {
    if (v === null && start === null) start = t;
    if (v !== null && start !== null) { runs.push({ start, end: t }); start = null; }
  }
  if (start !== null) runs.push({ start, end: null, until: end });
  return runs.map((r) => ({ ...r, duration: ((r.end ?? r.until) - r.start) }));
}

// Numbers of a PromQL matrix per device: mean and peak over the range.
function meanAndPeak(result) {
  const out = {};
  for (const s of result) {
    const values = s.values.map(([, v]) => Number(v)).filter(Number.isFinite);
    if (!values.length) continue;
    out[s.metric.instance] = { mean: values.reduce((a, b) => a + b, 0) / values.length, peak: Math.max(...values) };
  }
  return out;
}

// As the hub's firing log bounds each device (hub/firings.rs).
const FIRINGS_PER_DEVICE_HOUR = 720;

// The newest of `notes` on `device`'s outage `o`: a note belongs to the outage whose time it
// overlaps, as it was made at one resolution and is read at another (outages::note_for).
function noteOn(notes, device, o) {
  const on = notes.filter((n) => n.device === device && n.start_ms + Math.max(n.step_ms ?? 0, 1) > o.start && (o.end === null || n.start_ms < o.end));
  return on.sort((a, b) => b.at_ms - a.at_ms)[0] ?? null;
}

// For any range and set of devices: availability and outages, alerts by severity and rule,
// and peak and mean CPU, GPU, memory, temperature and power; a CSV of it, and a page that
// prints as a tidy report.
async function reportsPage(view, me) {
  const params = new URLSearchParams(location.search);
  // A named range up to now, or any range `start` to `end` (ms) in the address.
  const custom = Number(params.get('start')) > 0 && Number(params.get('end')) > Number(params.get('start'));
  const span = custom ? ['custom', Number(params.get('end')) - Number(params.get('start'))]
    : REPORT_RANGES.find(([r]) => r === params.get('range')) ?? REPORT_RANGES[1];
  const filterText = params.get('q') ?? '';
  const end = custom ? Number(params.get('end')) : Date.now();
  const start = end - span[1];
  const devices = (await api('/api/devices')).filter((d) => fleetMatches(d, filterText)).map((d) => d.device).sort();
  const controls = el('form', { class: 'toolbar report-controls', onsubmit: (event) => {
    event.preventDefault();
    const data = new FormData(event.target);
    const from = data.get('from') ? fromZoneInput(String(data.get('from'))) : NaN;
    const to = data.get('to') ? fromZoneInput(String(data.get('to'))) : NaN;
    if (data.get('range') === 'custom') {
      if (!(to > from)) { heading.textContent = 'Give a start and a later end for a custom range.'; heading.className = 'error'; return; }
      go(`/reports?${new URLSearchParams({ start: String(from), end: String(to), q: data.get('q') })}`);
      return;
    }
    go(`/reports?${new URLSearchParams({ range: data.get('range'), q: data.get('q') })}`);
  } },
  el('select', { name: 'range', 'aria-label': 'Range' }, REPORT_RANGES.map(([r]) => el('option', { value: r, selected: r === span[0] }, `last ${r}`)),
    el('option', { value: 'custom', selected: custom }, 'from … to …')),
  el('input', { type: 'datetime-local', name: 'from', 'aria-label': 'From', value: custom ? toZoneInput(start).slice(0, 16) : '' }),
  el('input', { type: 'datetime-local', name: 'to', 'aria-label': 'To', value: custom ? toZoneInput(end).slice(0, 16) : '' }),
  el('input', { type: 'search', name: 'q', value: filterText, placeholder: 'Devices: text or label=value', 'aria-label': 'Devices' }),
  el('button', { type: 'submit' }, 'Report'));
  const heading = el('p', { class: 'muted' }, `${stamp(start)} to ${stamp(end)} · ${devices.length} devices${filterText ? ` matching ${filterText}` : ''}`);
  show(view, el('h1', {}, 'Report'), controls, heading);
  window.outpost.report = null;
  if (!devices.length) { view.append(el('p', { class: 'muted' }, 'No device matches.')); return; }
  const matcher = `instance=~${promString(exactly(devices))}`;
  const maxPoints = 2000;
  const presence = await api(`/api/range?${new URLSearchParams({ match: `outpost_uptime_seconds{${matcher}}`, start: String(start), end: String(end), max_points: String(maxPoints), fn: 'count' })}`);
  const step = Math.max(1, Math.ceil(span[1] / 1000 / 300));
  const resources = {};
  await Promise.all(Object.entries(COMPARE_METRICS).map(async ([key, [, , expression]]) => {
    const answer = await api(`/api/v1/query_range?${new URLSearchParams({ query: expression(matcher), start: String(start / 1000), end: String(end / 1000), step: String(step) })}`);
    resources[key] = meanAndPeak(answer.data.result);
  }));
  const [firings, notes] = await Promise.all([
    api(`/api/alerts/fired?${new URLSearchParams({ start: String(start), end: String(end) })}`),
    api('/api/outages/notes'),
  ]);
  const fired = (firings.fired ?? []).filter((c) => devices.includes(c.device));
  const uncounted = Object.entries(firings.uncounted ?? {}).filter(([device]) => devices.includes(device));
  const deviceNotes = (notes.notes ?? []).filter((n) => n.probe === '');
  const rows = devices.map((device) => {
    const series = (presence.series ?? []).find((s) => s.labels.instance === device);
    // From the device's first report in the range: a device enrolled last week was not down
    // for the month before.
    // Every step from the first report on, empty where none came: the API
    // marks gaps between reports, and a device that stopped reporting has none after its last.
    const reported = new Set((series ? series.points : []).filter(([, v]) => v !== null).map(([t]) => t));
    const first = Math.min(...reported);
    const buckets = [];
    for (let t = first; Number.isFinite(t) && t <= end; t += presence.step_ms) {
      // The step still going on counts once it has a report, not before.
      if (t + presence.step_ms > end && !reported.has(t)) break;
      buckets.push([t, reported.has(t) ? 1 : null]);
    }
    const seen = buckets.filter(([, v]) => v !== null).length;
    const outages = emptyRuns(buckets, presence.step_ms, end).map((o) => ({ ...o, note: noteOn(deviceNotes, device, o) }));
    const restored = outages.filter((o) => o.end !== null);
    const bySeverity = (sev) => fired.filter((c) => c.device === device && c.severity === sev).reduce((sum, c) => sum + c.fired, 0);
    return {
      device,
      availability: buckets.length ? (100 * seen) / buckets.length : null,
      outages,
      down: outages.reduce((sum, o) => sum + o.duration, 0),
      mttr: restored.length ? restored.reduce((sum, o) => sum + o.duration, 0) / restored.length : null,
      alerts: { critical: bySeverity('critical'), warning: bySeverity('warning'), info: bySeverity('info') },
      resources: Object.fromEntries(Object.keys(COMPARE_METRICS).map((key) => [key, resources[key][device] ?? null])),
    };
  });
  const unitOfKey = (key) => COMPARE_METRICS[key][1];
  const figure = (key, which) => (r) => (r.resources[key] ? valueFormat(unitOfKey(key))(r.resources[key][which]) : '–');
  const columns = [
    ['Device', (r) => el('a', { href: `/device/${encodeURIComponent(r.device)}` }, r.device)],
    ['Availability', (r) => (r.availability === null ? '–' : `${r.availability.toFixed(2)} %`)],
    ['Outages', (r) => r.outages.length], ['Down', (r) => duration(r.down)], ['MTTR', (r) => (r.mttr === null ? '–' : duration(r.mttr))],
    ['Alerts (crit/warn/info)', (r) => `${r.alerts.critical} / ${r.alerts.warning} / ${r.alerts.info}`],
    ...Object.entries(COMPARE_METRICS).flatMap(([key, [title]]) => [[`${title} mean`, figure(key, 'mean')], [`${title} peak`, figure(key, 'peak')]]),
  ];
  const summary = el('table', { class: 'report' },
    el('thead', {}, el('tr', {}, columns.map(([t], i) => el('th', { scope: 'col', class: i ? 'num' : '' }, t)))),
    el('tbody', {}, rows.map((r) => el('tr', { 'data-device': r.device }, columns.map(([, f], i) => el('td', { class: i ? 'num' : '' }, f(r)))))));
  const outageRows = rows.flatMap((r) => r.outages.map((o) => ({ device: r.device, ...o }))).sort((a, b) => b.start - a.start);
  const admin = me.identity?.role === 'admin';
  // An edit keeps the note's own start, so that it replaces the note rather than adding one.
  const noteCell = (o) => el('td', { class: 'note' }, o.note ? `${o.note.note} (${o.note.by})` : '',
    admin ? el('button', {
      type: 'button', class: 'link no-print',
      onclick: async () => {
        const text = prompt(`Note on ${o.device}'s outage from ${stamp(o.start)}`, o.note?.note ?? '');
        if (text === null) return;
        const at = o.note ? { start_ms: o.note.start_ms, step_ms: o.note.step_ms } : { start_ms: o.start, step_ms: presence.step_ms };
        await api('/api/outages/note', { method: 'POST', body: JSON.stringify({ device: o.device, probe: '', ...at, note: text }) });
        route();
      },
    }, o.note ? 'Edit' : 'Add note') : null);
  const outageTable = outageRows.length
    ? el('table', { class: 'report-outages' }, el('thead', {}, el('tr', {}, ['Device', 'Start', 'End', 'Duration', 'Note'].map((t) => el('th', { scope: 'col' }, t)))),
      el('tbody', {}, outageRows.map((o) => el('tr', { 'data-device': o.device }, el('td', {}, o.device), el('td', {}, stamp(o.start)), el('td', {}, o.end === null ? 'ongoing' : stamp(o.end)), el('td', {}, duration(o.duration)), noteCell(o)))))
    : el('p', { class: 'muted' }, 'No outages.');
  const byRule = {};
  for (const c of fired) byRule[`${c.rule}\u0000${c.severity}`] = (byRule[`${c.rule}\u0000${c.severity}`] ?? 0) + c.fired;
  const ruleTable = Object.keys(byRule).length
    ? el('table', { class: 'report-rules' }, el('thead', {}, el('tr', {}, ['Rule', 'Severity', 'Fired'].map((t, i) => el('th', { scope: 'col', class: i === 2 ? 'num' : '' }, t)))),
      el('tbody', {}, Object.entries(byRule).sort((a, b) => b[1] - a[1]).map(([k, n]) => { const [rule, sev] = k.split('\u0000'); return el('tr', {}, el('td', {}, rule), el('td', {}, el('span', { class: `badge ${sev}` }, sev)), el('td', { class: 'num' }, n)); })))
    : el('p', { class: 'muted' }, 'No alert fired.');
  const csvCell = (v) => (/[",\n]/.test(String(v)) ? `"${String(v).replace(/"/g, '""')}"` : String(v));
  const csvHeader = ['device', 'availability_percent', 'outages', 'down_seconds', 'mttr_seconds', 'alerts_critical', 'alerts_warning', 'alerts_info',
    ...Object.keys(COMPARE_METRICS).flatMap((k) => [`${k}_mean`, `${k}_peak`])];
  const csvRows = rows.map((r) => [r.device, r.availability?.toFixed(3) ?? '', r.outages.length, Math.round(r.down / 1000), r.mttr === null ? '' : Math.round(r.mttr / 1000),
    r.alerts.critical, r.alerts.warning, r.alerts.info, ...Object.keys(COMPARE_METRICS).flatMap((k) => (r.resources[k] ? [r.resources[k].mean, r.resources[k].peak] : ['', '']))]);
  const csv = [csvHeader, ...csvRows].map((row) => row.map(csvCell).join(',')).join('\n') + '\n';
  const download = el('a', { class: 'report-csv', href: URL.createObjectURL(new Blob([csv], { type: 'text/csv' })), download: `outpost-report-${span[0]}.csv` }, 'Download CSV');
  view.append(
    el('p', { class: 'report-actions' }, download, ' ', el('button', { type: 'button', onclick: () => window.print() }, 'Print or save as PDF')),
    el('h2', {}, 'Devices'), el('div', { class: 'scroll' }, summary),
    el('p', { class: 'muted' }, `Availability is the share of ${duration(presence.step_ms)} steps in which the device's agent reported; an outage is a run of steps without a report. Alerts count every firing the hub recorded in the range.`),
    // Spread: the DOM's own append writes a null out as the text "null".
    ...(uncounted.length ? [el('p', { class: 'error report-uncounted' }, `Firings sent beyond what the hub counts (more than ${FIRINGS_PER_DEVICE_HOUR} a device an hour): ${uncounted.map(([d, n]) => `${d} ${n}`).join(', ')}.`)] : []),
    el('h2', {}, 'Outages'), el('div', { class: 'scroll' }, outageTable),
    el('h2', {}, 'Alerts by rule'), ruleTable);
  // The devices' probes over the same range, as the availability page counts them.
  const probeAnswer = await api(`/api/probes/outages?${new URLSearchParams({ start: String(start), end: String(end) })}`);
  const probes = (probeAnswer.probes ?? []).filter((p) => devices.includes(p.device));
  view.append(el('h2', {}, 'Probes'), probes.length
    ? el('div', { class: 'scroll' }, el('table', { class: 'report-probes' },
      el('thead', {}, el('tr', {}, ['Device', 'Probe', 'Availability', 'Outages', 'Down'].map((t, i) => el('th', { scope: 'col', class: i > 1 ? 'num' : '' }, t)))),
      el('tbody', {}, probes.map((p) => el('tr', { 'data-probe': `${p.device}/${p.probe}` }, el('td', {}, p.device), el('td', {}, p.probe),
        el('td', { class: 'num' }, p.availability === null ? '–' : `${p.availability.toFixed(3)} %`),
        el('td', { class: 'num' }, p.outages.filter((o) => o.severity === 'critical').length),
        el('td', { class: 'num' }, duration(p.down_seconds * 1000)))))))
    : el('p', { class: 'muted' }, 'No probes on these devices.'));
  window.outpost.report = { devices: rows.map((r) => r.device), csv, step_ms: presence.step_ms, start, end, probes: probes.length };
}

// ---------- public status ----------

// The public status page (`[web.status]`): no login, only what the hub's config names.
async function statusPage(view) {
  document.body.classList.add('public');
  const answer = await api('/api/status');
  const percent = (v) => (v === null || v === undefined ? '–' : `${v.toFixed(2)} %`);
  const word = (up) => (up === null || up === undefined ? 'no data' : up ? 'up' : 'down');
  show(view, el('h1', {}, answer.title || 'Status'),
    el('p', { class: 'muted' }, `As of ${stamp(answer.at_ms)}`),
    answer.devices.length ? el('table', { class: 'status-devices' },
      el('thead', {}, el('tr', {}, ['Device', 'State'].map((t) => el('th', { scope: 'col' }, t)))),
      el('tbody', {}, answer.devices.map((d) => el('tr', { 'data-device': d.device }, el('td', {}, d.device),
        el('td', {}, el('span', { class: `state ${d.state ?? 'offline'}` }, d.state ?? 'unknown')))))) : null,
    answer.probes.length ? el('table', { class: 'status-probes' },
      el('thead', {}, el('tr', {}, ['Service', 'Now', 'Last 24 h', 'Last 30 days'].map((t, i) => el('th', { scope: 'col', class: i > 1 ? 'num' : '' }, t)))),
      el('tbody', {}, answer.probes.map((p) => el('tr', { 'data-probe': `${p.device}/${p.probe}` }, el('td', {}, `${p.probe} (${p.device})`),
        el('td', {}, el('span', { class: `state ${p.up ? 'online' : 'offline'}` }, word(p.up))),
        el('td', { class: 'num' }, percent(p.availability_24h)), el('td', { class: 'num' }, percent(p.availability_30d)))))) : null);
  const timer = setInterval(() => {
    if (!view.isConnected) { clearInterval(timer); return; }
    clearInterval(timer);
    statusPage(view).catch(() => {});
  }, 30000);
}

// ---------- routing ----------

async function route() {
  if (main._cleanup) { main._cleanup(); main._cleanup = null; }
  const view = el('div');
  show(main, view);
  for (const link of document.querySelectorAll('[data-nav]')) {
    link.setAttribute('aria-current', link.getAttribute('href') === location.pathname ? 'page' : 'false');
  }
  try {
    if (location.pathname === '/status') { await statusPage(view); return; }
    document.body.classList.remove('public');
    if (location.pathname === '/') { prefetch('/api/devices'); prefetch('/api/alerts'); }
    const me = await whoami();
    if (me.auth && !me.identity) { showLogin(); return; }
    const path = location.pathname;
    if (path.startsWith('/device/')) await devicePage(view, decodeURIComponent(path.slice('/device/'.length)));
    else if (path === '/alerts') await alertsPage(view, me);
    else if (path === '/probes') await probesPage(view, me);
    else if (path === '/explore') await explorePage(view, me);
    else if (path === '/boards') await boardsPage(view, me);
    else if (path.startsWith('/boards/')) await boardPage(view, decodeURIComponent(path.slice('/boards/'.length)), me);
    else if (path === '/compare') await comparePage(view);
    else if (path === '/reports') await reportsPage(view, me);
    else if (path === '/') await fleetPage(view);
    else show(view, el('h1', {}, 'Not found'), el('p', {}, `Nothing is at ${path}. `, el('a', { href: '/' }, 'See the fleet.')));
    main._cleanup = view._cleanup;
  } catch (error) {
    if (error instanceof Unauthorized) showLogin();
    else show(view, el('p', { class: 'error', role: 'alert' }, error.message));
  }
}

route();
