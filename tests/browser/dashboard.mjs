// Drives headless Chromium through the dashboard of a real hub with real ingested data.
// Run by tests/it/dashboard.rs, which starts the hub and the agents and passes:
//   HUB_URL, HUB_USER, HUB_PASSWORD, EXPECT_STATES (JSON: device -> state), DEVICE (one with an
//   outage), RANGE_START, RANGE_END (ms: a window that holds the outage), SCREENSHOTS (a dir).
// Prints one line per check; exits non-zero on the first failure.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const hub = env('HUB_URL');
const expectStates = JSON.parse(env('EXPECT_STATES'));
const device = env('DEVICE');
const rangeStart = Number(env('RANGE_START'));
const rangeEnd = Number(env('RANGE_END'));
const shots = env('SCREENSHOTS');
mkdirSync(shots, { recursive: true });

function check(condition, message, detail) {
  if (!condition) {
    console.error(`FAIL ${message}${detail === undefined ? '' : `: ${JSON.stringify(detail).slice(0, 2000)}`}`);
    process.exit(1);
  }
  console.log(`ok   ${message}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const failures = [];
let promptAnswer;
try {
  // Times are checked as written in UTC; the zone setting is tested on its own.
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 }, timezoneId: 'UTC' });
  const page = await context.newPage();
  page.on('pageerror', (error) => failures.push(`page error: ${error.message}`));
  // Failed requests are logged too; the 401s this test provokes are expected.
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) failures.push(`console: ${message.text()}`);
  });

  // Login is required.
  await page.goto(`${hub}/`);
  await page.waitForSelector('form.login');
  const anonymous = await page.evaluate(async () => (await fetch('/api/devices')).status);
  check(anonymous === 401, 'the API refuses a browser that has not logged in', anonymous);
  await page.screenshot({ path: join(shots, 'login.png') });
  await page.fill('input[name=name]', env('HUB_USER'));
  await page.fill('input[name=password]', 'not the password');
  await page.click('form.login button[type=submit]');
  await page.waitForSelector('form.login .error');
  check(true, 'a wrong password is refused with a message');
  await page.fill('input[name=password]', env('HUB_PASSWORD'));
  await page.click('form.login button[type=submit]');

  // The fleet page: every device, with the state the API gives and the test set up.
  await page.waitForSelector('table.fleet tbody tr[data-device]');
  const rows = await page.$$eval('table.fleet tbody tr[data-device]', (trs) => trs.map((tr) => [tr.dataset.device, tr.dataset.state]));
  const api = await page.evaluate(async () => (await (await fetch('/api/devices')).json()).map((d) => [d.device, d.state]));
  const sortedPairs = (pairs) => JSON.stringify([...pairs].sort((a, b) => a[0].localeCompare(b[0])));
  check(sortedPairs(rows) === sortedPairs(api), 'the fleet page shows every device with the API\'s state', { rows, api });
  for (const [name, state] of Object.entries(expectStates)) {
    check(Object.fromEntries(rows)[name] === state, `${name} is shown ${state}`, rows);
  }
  const badges = await page.$eval(`table.fleet tbody tr[data-device="${device}"]`, (tr) => tr.textContent);
  check(/[1-9][0-9]* warning/.test(badges), `${device}'s firing alert is counted on the fleet page`, badges);
  const stateText = await page.$$eval('table.fleet tbody tr[data-device] td span.state', (spans) => spans.map((s) => s.textContent));
  check(stateText.length === rows.length, 'each state is written out, not only coloured', stateText);
  await page.fill('input[type=search]', device);
  const filtered = await page.$$eval('table.fleet tbody tr[data-device]', (trs) => trs.map((tr) => tr.dataset.device));
  check(filtered.length === 1 && filtered[0] === device, 'the filter narrows the list', filtered);
  await page.fill('input[type=search]', '');
  await page.click('th[data-key=device]');
  await page.click('th[data-key=device]');
  const sorted = await page.$$eval('table.fleet tbody tr[data-device]', (trs) => trs.map((tr) => tr.dataset.device));
  check(JSON.stringify(sorted) === JSON.stringify([...sorted].sort().reverse()), 'sorting by device, descending', sorted);
  await page.screenshot({ path: join(shots, 'fleet.png'), fullPage: true });

  // The device page over a fixed window that holds an outage.
  await page.goto(`${hub}/device/${encodeURIComponent(device)}?start=${rangeStart}&end=${rangeEnd}`);
  await page.waitForFunction(() => window.outpost && window.outpost.pages >= 1, null, { timeout: 30000 });
  const compared = await page.evaluate(async () => {
    // The test's own alignment of the API's JSON, written apart from the page's code.
    const out = { charts: 0, nulls: 0, points: 0, mismatches: [] };
    for (const [title, chart] of Object.entries(window.outpost.charts)) {
      out.charts += 1;
      const answer = await (await fetch(chart.url)).json();
      const times = [...new Set(answer.series.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
      const expected = [times.map((t) => t / 1000)];
      for (const series of answer.series) {
        const byTime = new Map(series.points.map(([t, v]) => [t, v]));
        expected.push(times.map((t) => (byTime.has(t) ? byTime.get(t) : undefined)));
        out.nulls += series.points.filter((p) => p[1] === null).length;
        out.points += series.points.length;
      }
      const given = chart.data;
      const same = given.length === expected.length && given.every((column, i) => column.length === expected[i].length
        && column.every((v, j) => Object.is(v, expected[i][j])));
      if (!same) out.mismatches.push({ title, given: given.map((c) => c.slice(0, 20)), expected: expected.map((c) => c.slice(0, 20)) });
    }
    return out;
  });
  check(compared.charts >= 3, 'the device page draws several chart groups', compared.charts);
  check(compared.mismatches.length === 0, 'every chart is handed exactly the API\'s arrays', compared.mismatches);
  check(compared.nulls > 0, 'the outage reaches the charts as nulls (a gap, not a line)', compared);
  // Regressions of the charts (issue: "Charts").
  {
    const charts = await page.evaluate(() => Object.fromEntries([...document.querySelectorAll('article.card:not([hidden])')].map((card) => {
      const plot = card._plot;
      const yAxes = plot.axes.filter((a) => a.scale !== 'x');
      return [card.dataset.group, {
        names: [...new Set(window.outpost.charts[card.dataset.group].answer.series.map((s) => s.name))],
        units: window.outpost.charts[card.dataset.group].units,
        axes: yAxes.map((a) => ({ scale: a.scale, side: a.side, values: a._values ?? [] })),
        time: plot.series[0].label,
        hover: plot.series[0].value(plot, plot.data[0][0]),
      }];
    })));
    const cpu = charts['CPU load per core'];
    check(cpu && cpu.names.length === 1, 'a Jetson\'s CPUs are charted once, not as host_* and jetson_* both', cpu?.names);
    const memory = charts.Memory;
    check(memory && memory.names.every((n) => n.startsWith(memory.names[0].split('_')[0])), 'memory from one source', memory?.names);
    for (const [title, chart] of Object.entries(charts)) {
      check(chart.units.length <= 2 || chart.axes.length === 2, `${title}: at most two axes`, chart);
      for (const axis of chart.axes) {
        check(new Set(axis.values).size === axis.values.length, `${title}: no axis label repeats`, axis.values);
      }
    }
    const any = Object.values(charts)[0];
    check(/\(.+\)$/.test(any.time) && /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/.test(any.hover), 'hover times have seconds and the zone is named', any);
  }
  await page.screenshot({ path: join(shots, 'device.png'), fullPage: true });
  // Annotations: an alert's firing, a reboot, a step of the clock, a config reload and the
  // outage marked on every chart, their text on hover. The outage is dev-a's real one; the rest
  // are made up. The clock's step moves the boot time too, which is no reboot.
  {
    const middle = Math.round((rangeStart + rangeEnd) / 2);
    const history = { alerts: [], history: [{ device, rule: 'marked_rule', state: 'firing', severity: 'critical', at: new Date(middle).toISOString(), summary: 'a test' }] };
    const bootStart = Math.round(rangeStart / 1000) - 3600;
    const stepAt = rangeStart + 10000;
    const reloadAt = rangeStart + 20000;
    const series = (name, points) => ({ series: name, name, labels: { instance: device }, points });
    const changes = { step_ms: 1000, series: [
      series('node_boot_time_seconds', [[rangeStart, bootStart], [stepAt + 1000, bootStart + 1800], [middle + 5000, Math.round((middle + 2000) / 1000)]]),
      series('outpost_clock_last_step_timestamp_seconds', [[stepAt + 1000, stepAt / 1000], [middle + 5000, stepAt / 1000]]),
      series('outpost_clock_last_step_seconds', [[stepAt + 1000, 1800], [middle + 5000, 1800]]),
      series('outpost_config_last_reload_success_timestamp_seconds', [[reloadAt + 1000, reloadAt / 1000], [middle + 5000, reloadAt / 1000]]),
    ] };
    const changeRange = (url) => url.pathname === '/api/range' && (url.searchParams.get('match') ?? '').includes('node_boot_time_seconds');
    await page.route('**/api/alerts', (route) => route.fulfill({ contentType: 'application/json', body: JSON.stringify(history) }));
    await page.route(changeRange, (route) => route.fulfill({ contentType: 'application/json', body: JSON.stringify(changes) }));
    await page.goto(`${hub}/device/${encodeURIComponent(device)}?start=${rangeStart}&end=${rangeEnd}`);
    await page.waitForFunction(() => window.outpost && window.outpost.pages >= 1, null, { timeout: 30000 });
    const marks = await page.$$eval('article.card:not([hidden])', (cards) => cards.map((card) => [...card.querySelectorAll('.u-over .mark')].map((m) => m.title)));
    const count = (titles, start) => titles.filter((t) => t.startsWith(start)).length;
    check(marks.length >= 3 && marks.every((m) => count(m, 'marked_rule firing (critical)') === 1 && count(m, 'rebooted at') === 1),
      'every chart marks the alert\'s firing and the reboot once (the clock\'s step is no reboot), with text on hover', marks);
    check(marks.every((m) => m.some((t) => /^the device's clock stepped by \+30 min at .+; the hub corrected/.test(t))
      && count(m, 'the agent reloaded its config at') === 1),
      'every chart marks the clock\'s step, by how much, and the config reload, each once', marks);
    check(marks.every((m) => count(m, 'no data from') === 1),
      'every chart marks dev-a\'s outage as a band, with its start, end and duration on hover', marks);
    const band = await page.$eval('article.card:not([hidden]) .mark.outage', (m) => ({
      band: getComputedStyle(m).pointerEvents, grip: getComputedStyle(m.querySelector('.grip')).pointerEvents, width: m.getBoundingClientRect().width }));
    check(band.band === 'none' && band.grip === 'auto' && band.width > 3,
      'the outage band lets a drag through to the chart and shows its text from its top edge', band);
    await page.screenshot({ path: join(shots, 'device-marks.png') });
    await page.unroute('**/api/alerts');
    await page.unroute(changeRange);
  }
  // A chart of two units (EMC load and frequency, as Orins report them) gets an axis for each.
  {
    const t = rangeStart + 60000;
    const labels = { engine: 'EMC', instance: device };
    const emcAnswer = { series: [
      { series: 'jetson_engine_load_ratio', name: 'jetson_engine_load_ratio', labels, points: [[t, 0.12], [t + 1000, 0.31]] },
      { series: 'jetson_engine_frequency_hertz', name: 'jetson_engine_frequency_hertz', labels, points: [[t, 1.6e9], [t + 1000, 2.133e9]] },
    ] };
    const emcRange = (url) => url.pathname === '/api/range' && url.searchParams.get('match').includes('engine="EMC"');
    await page.route(emcRange, (route) => route.fulfill({ contentType: 'application/json', body: JSON.stringify(emcAnswer) }));
    await page.reload();
    await page.waitForSelector('article.card[data-group="EMC"]:not([hidden]) canvas');
    const emc = await page.evaluate(() => {
      const plot = document.querySelector('article.card[data-group="EMC"]')._plot;
      return plot.axes.filter((a) => a.scale !== 'x').map((a) => ({ scale: a.scale, side: a.side, label: a.label, values: a._values ?? [] }));
    });
    check(emc.length === 2 && emc[1].side === 1 && emc.some((a) => a.values.some((v) => v.endsWith('%')))
      && emc.some((a) => a.values.some((v) => v.endsWith('Hz'))), 'EMC load and frequency each on an axis of its own unit, left and right', emc);
    await page.unroute(emcRange);
    await page.screenshot({ path: join(shots, 'device-two-axes.png') });
  }


  // Drag to zoom: a narrower range in the address and in every chart's request.
  const card = page.locator('article.card:not([hidden])').first();
  const title = await card.getAttribute('data-group');
  const over = card.locator('.u-over');
  const box = await over.boundingBox();
  const before = new URL(await page.evaluate((t) => window.outpost.charts[t].url, title), hub);
  const pagesBefore = await page.evaluate(() => window.outpost.pages);
  await page.mouse.move(box.x + box.width * 0.3, box.y + box.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.5, box.y + box.height / 2, { steps: 8 });
  await page.mouse.move(box.x + box.width * 0.6, box.y + box.height / 2, { steps: 4 });
  await page.mouse.up();
  await page.waitForFunction((n) => window.outpost.pages > n, pagesBefore, { timeout: 30000 });
  const address = new URL(page.url());
  const zoomStart = Number(address.searchParams.get('start'));
  const zoomEnd = Number(address.searchParams.get('end'));
  check(zoomStart > rangeStart && zoomEnd < rangeEnd && zoomEnd > zoomStart, 'dragging across a chart zooms the range', { zoomStart, zoomEnd, rangeStart, rangeEnd });
  const span = rangeEnd - rangeStart;
  check(Math.abs((zoomEnd - zoomStart) - span * 0.3) < span * 0.05, 'the zoomed range is the dragged part of the axis', { zoomStart, zoomEnd, span });
  const after = new URL(await page.evaluate((t) => window.outpost.charts[t]?.url ?? Object.values(window.outpost.charts)[0].url, title), hub);
  check(Number(after.searchParams.get('start')) === zoomStart && Number(after.searchParams.get('end')) === zoomEnd
    && Number(before.searchParams.get('start')) === rangeStart, 'the charts ask the API for the zoomed range', { before: before.search, after: after.search });
  await page.screenshot({ path: join(shots, 'zoomed.png'), fullPage: true });

  // A legend entry toggles its series.
  const legend = card.locator('.u-legend .u-series').nth(1);
  await legend.click();
  const toggled = await card.locator('.u-legend .u-series').nth(1).getAttribute('class');
  check(toggled.includes('u-off'), 'clicking a legend entry hides its series', toggled);

  // The alerts page renders, with the silence form for an admin.
  await page.goto(`${hub}/alerts`);
  await page.waitForSelector('table.alerts-table');
  check(await page.locator('form.silence').count() === 1, 'an admin sees the silence form');
  const firingRows = await page.$$eval('table.firing tbody tr', (trs) => trs.map((tr) => tr.textContent));
  check(firingRows.some((row) => row.includes(device) && row.includes('ram_in_use')), 'the alerts page lists the device\'s firing alert', firingRows);
  const silenceRows = await page.$$eval('table.silences tbody tr', (trs) => trs.map((tr) => tr.textContent));
  check(silenceRows.some((row) => row.includes(device) && row.includes('jetson_hot') && row.includes('ops') && row.includes('maintenance')),
    'the alerts page lists the hub\'s silences, with who made them and why', silenceRows);
  check(await page.locator('table.silences button').count() >= 1, 'an admin can expire an active silence');
  await page.screenshot({ path: join(shots, 'alerts.png'), fullPage: true });

  // Regressions of the alerts page (issue: "Alerts page"), on answers made to hold them.
  {
    const now = Date.now();
    const iso = (ms) => new Date(ms).toISOString();
    const base = { severity: 'warning', summary: '', labels: {}, instance: '' };
    const made = {
      alerts: [
        { ...base, device, rule: 'hot', state: 'firing', started_at: iso(now - 600000), fired_at: iso(now - 300000) },
        { ...base, device, rule: 'offline_soon', state: 'pending', started_at: iso(now - 60000) },
      ],
      history: [
        { ...base, device, rule: 'hot', state: 'firing', at: iso(now - 300000), started_at: iso(now - 600000) },
        { ...base, device: 'x-2', rule: 'cold', state: 'resolved', at: iso(now - 3600000), started_at: iso(now - 3720000), resolved_at: iso(now - 3600000) },
      ],
    };
    let asked = 0;
    await page.route('**/api/alerts', (route) => { asked += 1; route.fulfill({ contentType: 'application/json', body: JSON.stringify(made) }); });
    await page.goto(`${hub}/alerts`);
    await page.waitForSelector('table.firing tbody tr');
    const text = (selector) => page.$$eval(selector, (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
    const firingNow = await text('table.firing tbody tr');
    check(firingNow.length === 1 && firingNow[0][2] === 'hot', '"Firing" lists firing alerts only, not pending ones', firingNow);
    const pendingNow = await text('table.pending tbody tr');
    check(pendingNow.length === 1 && pendingNow[0][2] === 'offline_soon', 'pending alerts are listed apart', pendingNow);
    const past = await text('table.history tbody tr');
    const fired = past.find((r) => r[2] === 'hot');
    const ended = past.find((r) => r[2] === 'cold');
    check(fired[7] === '–', 'a firing transition in the history does not count on', fired);
    check(ended[7] === '2 min' && ended[6].endsWith(' UTC'), 'a resolve shows how long it fired, with times that say their zone', ended);
    check(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$/.test(fired[5]), 'history times are written for people, with seconds and zone', fired);
    await page.selectOption('select[name=device]', 'x-2');
    check(new URL(page.url()).searchParams.get('device') === 'x-2', 'the filter is in the address', page.url());
    const before = asked;
        await page.waitForResponse((r) => r.url().endsWith('/api/alerts'), { timeout: 20000 });
    check(asked > before, 'the page refreshes itself', { before, asked });
    const kept = await page.$eval('select[name=device]', (s) => s.value);
    check(kept === 'x-2', 'and keeps its filter', kept);
    await page.goto(`${hub}/device/${encodeURIComponent(device)}`);
    await page.waitForSelector('ul.alerts.now li');
    const listed = await page.$$eval('ul.alerts li', (lis) => lis.map((li) => [li.closest('ul').className, li.textContent]));
    const hot = listed.filter(([, t]) => t.includes('hot'));
    check(hot.length === 2 && hot.every(([, t]) => t.includes(' UTC')) && hot[0][0] !== hot[1][0],
      'the device page shows an alert once as it is now and once as its transition, each with its time', listed);
    await page.unroute('**/api/alerts');
  }

  // Regressions of the pages' states (issue: "States").
  {
    const deviceUrl = `${hub}/device/${encodeURIComponent(device)}`;
    await page.goto(`${deviceUrl}?start=${rangeEnd}&end=${rangeStart}`);
    await page.waitForSelector('.empty.error:not([hidden])');
    const errors = await page.$$eval('.error', (nodes) => nodes.filter((n) => n.textContent).map((n) => n.textContent));
    check(errors.length === 1 && /ends before it starts/.test(errors[0]), 'a reversed range is one clear message, not one per chart', errors);
    await page.goto(`${deviceUrl}?start=978307200000&end=978310800000`);
    await page.waitForFunction(() => window.outpost.pages >= 1);
    const nothing = await page.$eval('.empty', (p) => (p.hidden ? '' : p.textContent));
    check(/^No data from .* 2001-01-01 00:00:00 UTC and 2001-01-01 01:00:00 UTC\.$/.test(nothing), 'a range without data says so', nothing);
    const shownRange = await page.$eval('.ranges .shown', (s) => s.textContent);
    check(shownRange === '2001-01-01 00:00:00 UTC to 2001-01-01 01:00:00 UTC', 'the range shown is written out', shownRange);
    const before = page.url();
    await page.fill('.ranges input[name=from]', '2001-01-02T00:00');
    await page.fill('.ranges input[name=to]', '2001-01-01T00:00');
    await page.click('.ranges button:has-text("Apply")');
    const problem = await page.$eval('.ranges .error', (s) => s.textContent);
    check(problem === 'The end must be after the start.' && page.url() === before, 'Apply refuses a reversed range and says why', { problem, url: page.url() });
    await page.setViewportSize({ width: 390, height: 800 });
    await page.goto(`${deviceUrl}?start=${rangeStart}&end=${rangeEnd}`);
    await page.waitForFunction(() => window.outpost.pages >= 1, null, { timeout: 30000 });
    const wide = await page.evaluate(() => document.documentElement.scrollWidth);
    await page.screenshot({ path: join(shots, 'device-phone.png'), fullPage: true });
    check(wide <= 390, 'the device page fits a 390 px phone', wide);
    await page.setViewportSize({ width: 1400, height: 1000 });
    const response = await page.goto(`${hub}/no/such/page`);
    await page.waitForSelector('main h1');
    const heading = await page.textContent('main h1');
    check(response.status() === 404 && heading === 'Not found', 'an unknown page is a page that says so, not JSON', { status: response.status(), heading });
    await page.route('**/api/devices', (route) => route.fulfill({ contentType: 'application/json', body: '[]' }));
    await page.goto(`${hub}/`);
    await page.waitForSelector('.empty');
    const hint = await page.textContent('.empty');
    check(hint.includes('outpost hub device add'), 'a hub without devices says how to enrol one', hint);
    await page.unroute('**/api/devices');
  }

  // The log lines the device kept and shipped: listed newest first, searched at the hub.
  {
    await page.goto(`${hub}/device/${encodeURIComponent(device)}?range=15m`);
    await page.waitForFunction(() => window.outpost.logs, null, { timeout: 30000 });
    const all = await page.$$eval('table.log-lines tbody tr', (trs) => trs.map((tr) => tr.lastElementChild.textContent));
    check(all.length === 12 && all[0] === 'level=error module=net n=11 timeout' && all.every((l) => l.startsWith('level=error')),
      'the device page lists the kept error lines, newest first', all);
    await page.fill('section.logs input[type=search]', 'module=DB');
    await page.waitForFunction(() => window.outpost.logs?.search === 'module=DB');
    const found = await page.$$eval('table.log-lines tbody tr', (trs) => trs.map((tr) => tr.lastElementChild.textContent));
    check(found.length === 6 && found.every((l) => l.includes('module=db')), 'the search finds the lines that hold the text, ignoring case', found);
    await page.fill('section.logs input[type=search]', 'no such text');
    await page.waitForFunction(() => window.outpost.logs?.search === 'no such text');
    check((await page.textContent('section.logs')).includes('No kept line holds'), 'a search without a match says so');
  }

  // The explorer, and every metric of a device reachable from its page.
  {
    await page.goto(`${hub}/device/${encodeURIComponent(device)}?range=15m`);
    await page.waitForSelector('details.metrics');
    const listed = await page.$$eval('details.metrics li a', (as) => as.map((a) => a.textContent));
    const expected = await page.evaluate(async (d) => (await (await fetch(`/api/v1/label/__name__/values?match[]=${encodeURIComponent(`{instance="${d}"}`)}`)).json()).data, device);
    check(listed.length > 20 && JSON.stringify(listed) === JSON.stringify(expected), 'the device page links every metric the device sends', { listed: listed.length, expected: expected.length });
    await page.click('details.metrics summary');
    await page.click('details.metrics li a:text-is("jetson_ram_used_bytes")');
    await page.waitForURL(/\/explore\?/);
    await page.waitForFunction(() => window.outpost.explore !== null && window.outpost.explore !== undefined);
    const query = `jetson_ram_used_bytes{instance="${device}"}`;
    const ranged = await page.evaluate(() => window.outpost.explore);
    check(ranged.mode === 'range' && ranged.resultType === 'matrix' && ranged.series === 1 && await page.locator('.explore-chart canvas').count() > 0,
      'a metric link opens the explorer with a chart of it', ranged);
    check(await page.inputValue('input[name=q]') === query, 'the query is in the box and the address', page.url());
    await page.fill('input[name=q]', `count by (instance) (jetson_cpu_load_ratio)`);
    await page.selectOption('select[name=mode]', 'instant');
    await page.click('form.explore button[type=submit]');
    await page.waitForURL(/mode=instant/);
    await page.waitForFunction(() => window.outpost.explore?.mode === 'instant');
    const instant = await page.evaluate(() => window.outpost.explore);
    const vector = await page.evaluate(async () => (await (await fetch(`/api/v1/query?query=${encodeURIComponent('count by (instance) (jetson_cpu_load_ratio)')}`)).json()).data.result);
    const shownRows = await page.$$eval('table.explore-table tbody tr', (trs) => trs.map((tr) => tr.textContent));
    check(instant.resultType === 'vector' && shownRows.length === vector.length && vector.length >= 1, 'instant queries list every series of the answer', { shownRows, vector });
    const shared = page.url();
    await page.goto(shared);
    await page.waitForFunction(() => window.outpost.explore?.mode === 'instant');
    check(await page.inputValue('input[name=q]') === 'count by (instance) (jetson_cpu_load_ratio)', 'a shared address runs the same query', shared);
    // Boards: pin explorer queries, list, show, export, import, edit, delete.
    // Confirmations are accepted; a prompt gets `promptAnswer` when a check sets it.
    page.on('dialog', (dialog) => dialog.accept(dialog.type() === 'prompt' ? promptAnswer : undefined));
    await page.fill('form.pin input[name=board]', 'Site north');
    await page.fill('form.pin input[name=title]', 'Cores per device');
    await page.click('form.pin button[type=submit]');
    await page.waitForSelector('form.pin [role=status] a');
    await page.goto(`${hub}/explore?${new URLSearchParams({ q: query, range: '15m' })}`);
    await page.waitForSelector('form.pin');
    await page.fill('form.pin input[name=board]', 'Site north');
    await page.click('form.pin button[type=submit]');
    await page.waitForSelector('form.pin [role=status] a');
    await page.goto(`${hub}/boards`);
    await page.waitForSelector('table.boards tr[data-board="Site north"]');
    const listedBoard = await page.$eval('tr[data-board="Site north"]', (tr) => [...tr.children].map((td) => td.textContent));
    check(listedBoard[1] === '2' && listedBoard[3] === env('HUB_USER'), 'a board lists its pinned panels and who changed it', listedBoard);
    await page.click('a:text-is("Site north")');
    await page.waitForFunction(() => window.outpost.board?.panels === 2, null, { timeout: 30000 });
    const titles = await page.$$eval('article.card h2', (hs) => hs.map((h) => h.textContent));
    check(titles.includes('Cores per device') && titles.includes(query), 'the board shows its panels', titles);
    check(await page.locator('article.card canvas').count() >= 1 && await page.locator('article.card table.explore-table').count() === 1,
      'a range panel draws a chart, an instant one a table');
    const exported = await page.evaluate(async () => (await fetch('/api/boards/Site%20north')).text());
    await page.goto(`${hub}/boards`);
    await page.setInputFiles('form.import input[type=file]', { name: 'north.json', mimeType: 'application/json', buffer: Buffer.from(exported) });
    await page.fill('form.import input[name=name]', 'Copy of north');
    await page.click('form.import button[type=submit]');
    await page.waitForURL(/\/boards\/Copy%20of%20north$/);
    await page.waitForFunction(() => window.outpost.board?.panels === 2, null, { timeout: 30000 });
    const importedTitles = await page.$$eval('article.card h2', (hs) => hs.map((h) => h.textContent));
    check(await page.textContent('main h1') === 'Copy of north' && JSON.stringify(importedTitles.sort()) === JSON.stringify([...titles].sort()),
      'an exported board imports under another name, with the same panels', importedTitles);
    await page.click('article.card[data-panel="0"] button:text-is("Remove")');
    await page.waitForFunction(() => window.outpost.board?.panels === 1 && document.querySelectorAll('article.card').length === 1, null, { timeout: 30000 });
    const kept = await page.evaluate(async () => (await (await fetch('/api/boards/Copy%20of%20north')).json()).panels.length);
    check(kept === 1, 'a removed panel is gone from the stored board', kept);
    await page.click('button:text-is("Delete")');
    await page.waitForURL(/\/boards$/);
    await page.waitForSelector('table.boards tr[data-board]');
    const left = await page.$$eval('table.boards tr[data-board]', (trs) => trs.map((tr) => tr.dataset.board));
    check(JSON.stringify(left) === '["Site north"]', 'a board can be deleted', left);
    const refused = await page.evaluate(async () => {
      const put = (name, body) => fetch(`/api/boards/${encodeURIComponent(name)}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body });
      const bad = await put('x', JSON.stringify({ panels: [{ title: 't', query: 'sum(', mode: 'range' }] }));
      const slash = await put('a/b', JSON.stringify({ panels: [] }));
      return { bad: [bad.status, (await bad.json()).error], slash: slash.status };
    });
    check(refused.bad[0] === 400 && refused.bad[1].includes('panels[0].query') && refused.slash !== 200, 'a board with a broken query or a bad name is refused, saying what', refused);
    await page.goto(`${hub}/explore?${new URLSearchParams({ q: 'count by (instance) (jetson_cpu_load_ratio)', mode: 'instant' })}`);
    await page.waitForFunction(() => window.outpost.explore?.mode === 'instant');
    const offered = async (text) => {
      await page.fill('input[name=q]', '');
      await page.type('input[name=q]', text);
      await page.waitForFunction((t) => [...document.querySelectorAll('#explore-suggestions option')].some((o) => o.value.startsWith(t)), text, { timeout: 10000 });
      return page.$$eval('#explore-suggestions option', (os) => os.map((o) => o.value));
    };
    const names = await offered('jetson_ram_u');
    check(names.includes('jetson_ram_used_bytes'), 'metric names complete', names);
    const labels = await offered('jetson_ram_used_bytes{');
    check(labels.includes('jetson_ram_used_bytes{instance="'), 'label names complete inside braces', labels);
    const values = await offered('jetson_ram_used_bytes{instance="dev-');
    check(values.includes(`jetson_ram_used_bytes{instance="${device}"`), 'label values complete after label="', values);
    await page.goto(`${hub}/explore?q=${encodeURIComponent('sum(')}`);
    await page.waitForSelector('p.error:not([hidden])');
    const errors = await page.$$eval('p.error:not([hidden])', (ps) => ps.map((p) => p.textContent));
    check(errors.length === 1 && errors[0].length > 5, 'a bad query is one message from the engine', errors);
    await page.screenshot({ path: join(shots, 'explore.png'), fullPage: true });
  }

  // Compare: ticked rows, or the rows a filter shows, on one chart.
  {
    await page.goto(`${hub}/`);
    await page.waitForSelector('table.fleet tbody tr[data-device]');
    // dev-a and dev-b replayed a Jetson log within the hour (dev-b is offline now); dev-c never
    // sent a batch.
    const fleet = await page.$$eval('table.fleet tbody tr[data-device]', (trs) => trs.map((tr) => tr.dataset.device));
    const picked = ['dev-a', 'dev-b'];
    for (const name of picked) await page.check(`input[data-pick="${name}"]`);
    check(await page.textContent('button.compare') === 'Compare 2 ticked', 'the button counts the ticked devices');
    await page.click('button.compare');
    await page.waitForURL(/\/compare\?/);
    await page.waitForFunction(() => window.outpost.compare);
    const compared = await page.evaluate(() => window.outpost.compare);
    check(JSON.stringify(compared.devices) === JSON.stringify(picked), 'the ticked devices, one series each', { compared, picked });
    const answer = await page.evaluate(async (q) => (await (await fetch(`/api/v1/query?query=${encodeURIComponent(q)}`)).json()).data.result, compared.query);
    check(answer.length === 2, 'the same query answers for both devices at the engine', answer);
    await page.selectOption('select[name=metric]', 'temperature');
    await page.waitForURL(/metric=temperature/);
    await page.waitForFunction(() => window.outpost.compare?.query.includes('celsius'));
    await page.screenshot({ path: join(shots, 'compare.png'), fullPage: true });
    const layout = await page.evaluate(() => ({ chart: document.querySelector('.compare-chart canvas').getBoundingClientRect().width,
      main: document.querySelector('main').clientWidth, text: document.querySelector('main').textContent }));
    check(layout.chart > layout.main * 0.8 && !layout.text.includes('null'), 'the chart takes the page\'s width, and nothing prints "null"', layout);
    await page.goto(`${hub}/`);
    await page.waitForSelector('table.fleet tbody tr[data-device]');
    for (const name of picked) await page.uncheck(`input[data-pick="${name}"]`);
    await page.fill('input[type=search]', 'dev-');
    check((await page.textContent('button.compare')).startsWith(`Compare the ${fleet.length} shown`), 'with nothing ticked, the filter picks', await page.textContent('button.compare'));
    await page.click('button.compare');
    await page.waitForFunction(() => window.outpost.compare);
    const byFilter = await page.evaluate(() => window.outpost.compare.devices);
    check(JSON.stringify(byFilter) === JSON.stringify(picked), 'the filtered devices are compared', { byFilter, fleet });
    const note = await page.textContent('main');
    check(note.includes('No data for dev-c in this range.'), 'a device without data is named, not silently left out');
  }

  // Reports: a range and a set of devices; availability, outages, alerts, resources; CSV; PDF.
  {
    await page.goto(`${hub}/reports?range=24h&q=dev-`);
    await page.waitForFunction(() => window.outpost.report, null, { timeout: 30000 });
    const report = await page.evaluate(() => window.outpost.report);
    check(JSON.stringify(report.devices) === '["dev-a","dev-b","dev-c"]', 'the report covers the devices the filter picks', report.devices);
    const cells = await page.$eval('table.report tr[data-device="dev-a"]', (tr) => [...tr.children].map((td) => td.textContent));
    const availability = Number.parseFloat(cells[1]);
    check(availability > 0 && availability <= 100, 'a device reporting has its availability', cells);
    const lines = report.csv.trim().split('\n').map((l) => l.split(','));
    check(lines.length === 4 && lines.every((l) => l.length === lines[0].length) && lines[0][0] === 'device' && lines[1][0] === 'dev-a',
      'the CSV has a row per device and a value per column', lines);
    // dev-b on made answers: a gap, then silence since five steps ago.
    const step = report.step_ms;
    // Away from a step's end, so that the page (a moment later) counts the same steps.
    if (Date.now() % step > step - 10000) await page.waitForTimeout(step - (Date.now() % step) + 1000);
    const now = Date.now();
    const t0 = Math.floor((now - 20 * step) / step) * step;
    const made = { step_ms: step, series: [{ series: 'outpost_uptime_seconds', name: 'outpost_uptime_seconds', labels: { instance: 'dev-b' },
      points: [[t0, 1], [t0 + step, 1], [t0 + 2 * step, null], [t0 + 3 * step, null], [t0 + 4 * step, 1], [t0 + 14 * step, 1]] }] };
    const presence = (url) => url.pathname === '/api/range' && (url.searchParams.get('match') ?? '').startsWith('outpost_uptime_seconds');
    await page.route(presence, (route) => route.fulfill({ contentType: 'application/json', body: JSON.stringify(made) }));
    await page.goto(`${hub}/reports?range=24h&q=dev-b`);
    await page.waitForFunction(() => window.outpost.report, null, { timeout: 30000 });
    const outages = await page.$$eval('table.report-outages tbody tr', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
    check(outages.length === 3, 'two gaps and a device gone silent are three outages', outages);
    check(outages.some((o) => o[2] === 'ongoing'), 'the silence that goes on is an ongoing outage', outages);
    const bRow = await page.$eval('table.report tr[data-device="dev-b"]', (tr) => [...tr.children].map((td) => td.textContent));
    check(bRow[1] === '20.00 %' && bRow[2] === '3', 'availability is the share of steps reported since the first (4 of 20)', bRow);
    // An admin notes the first gap; the note is found again on a finer view, where the gap
    // starts a few buckets later (a note is no longer tied to one resolution's bucket).
    promptAnswer = `power cut ${now}`;
    const firstGap = `table.report-outages tbody tr:last-child`;
    await page.click(`${firstGap} td.note button`);
    await page.waitForFunction(([row, text]) => document.querySelector(row)?.textContent.includes(text), [firstGap, promptAnswer]);
    const fine = step / 4;
    // Reported at every fine step but 9 to 15: the gap starts a quarter into the coarse bucket.
    const finePoints = [...Array(20).keys()].filter((i) => i < 9 || i > 15).map((i) => [t0 + i * fine, 1]);
    const finer = { step_ms: fine, series: [{ ...made.series[0], points: finePoints }] };
    await page.unroute(presence);
    await page.route(presence, (route) => route.fulfill({ contentType: 'application/json', body: JSON.stringify(finer) }));
    await page.goto(`${hub}/reports?start=${t0}&end=${t0 + 20 * fine}&q=dev-b`);
    await page.waitForFunction(() => window.outpost.report, null, { timeout: 30000 });
    const noted = await page.$$eval('table.report-outages tbody tr', (trs) => trs.map((tr) => tr.textContent));
    check(noted.length === 1 && noted[0].includes(promptAnswer), 'a note on a device outage shows at another resolution', noted);
    const stored = await page.evaluate(async () => (await (await fetch('/api/outages/notes?device=dev-b')).json()).notes);
    check(stored.length === 1 && stored[0].probe === '' && stored[0].by === env('HUB_USER'), 'the note is kept once, as the device\'s, with who wrote it', stored);
    await page.unroute(presence);
    // Alert counts: every firing the hub recorded in the range, which here (fewer than the
    // history holds) must equal the history's count.
    const [firings, alerts] = await page.evaluate(async () => [await (await fetch('/api/alerts/fired?start=now-24h&end=now')).json(), await (await fetch('/api/alerts')).json()]);
    const dayAgo = firings.start;
    const inHistory = alerts.history.filter((e) => e.state === 'firing' && Date.parse(e.at) >= dayAgo).length;
    const counted = firings.fired.reduce((sum, c) => sum + c.fired, 0);
    check(counted >= 1 && counted === inHistory, 'the firing counts agree with the history where it holds them all', { firings, inHistory });
    // Any range: from and to in the address (as the form's custom range writes them).
    const [from, to] = [Date.now() - 7200e3, Date.now() - 3600e3];
    await page.goto(`${hub}/reports?start=${from}&end=${to}&q=dev-a`);
    await page.waitForFunction(() => window.outpost.report, null, { timeout: 30000 });
    const ranged = await page.evaluate(() => window.outpost.report);
    check(ranged.start === from && ranged.end === to && JSON.stringify(ranged.devices) === '["dev-a"]', 'a report over any range', ranged);
    await page.fill('form.report-controls input[name=from]', '2026-01-02T00:00');
    await page.fill('form.report-controls input[name=to]', '2026-01-01T00:00');
    await page.click('form.report-controls button[type=submit]');
    const said = await page.textContent('main p.error');
    check(said.startsWith('Give a start and a later end'), 'a reversed custom range is refused, saying why', said);
    await page.emulateMedia({ media: 'print' });
    const navShown = await page.evaluate(() => getComputedStyle(document.querySelector('header.top')).display);
    check(navShown === 'none', 'printed, the report has no navigation or controls', navShown);
    const pdf = await page.pdf({ path: join(shots, 'report.pdf'), format: 'A4', landscape: true, printBackground: true });
    check(pdf.length > 5000, 'the browser saves it as a PDF', pdf.length);
    await page.emulateMedia({ media: 'screen' });
  }

  // Look: dark mode following the system with a switch, a time zone setting, every page at
  // desktop and phone width in light and dark (screenshots kept), none wider than the phone.
  {
    const background = () => page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    await page.emulateMedia({ colorScheme: 'dark' });
    await page.goto(`${hub}/`);
    await page.waitForSelector('table.fleet tbody tr[data-device]');
    check(await background() === 'rgb(13, 17, 23)', 'a dark system gets the dark page', await background());
    await page.selectOption('select[name=theme]', 'light');
    await page.waitForSelector('table.fleet tbody tr[data-device]');
    await page.reload();
    await page.waitForSelector('table.fleet tbody tr[data-device]');
    check(await background() === 'rgb(255, 255, 255)', 'the switch overrides the system, and is kept', await background());
    await page.selectOption('select[name=theme]', 'system');
    await page.emulateMedia({ colorScheme: 'light' });
    // The named zones join the list when it is reached for (a click or the keyboard's focus).
    check(await page.$$eval('select[name=zone] option', (os) => os.length) <= 3, 'the zone list is short until reached for');
    await page.focus('select[name=zone]');
    await page.selectOption('select[name=zone]', 'Asia/Tokyo');
    await page.goto(`${hub}/alerts`);
    await page.waitForSelector('table.history tbody tr');
    const at = await page.evaluate(async () => (await (await fetch('/api/alerts')).json()).history[0].at);
    const shownAt = await page.$eval('table.history tbody tr td:nth-child(6)', (td) => td.textContent);
    const tokyo = `${new Date(at).toLocaleString('sv-SE', { timeZone: 'Asia/Tokyo' })} Asia/Tokyo`;
    check(shownAt === tokyo, 'times follow the chosen zone and name it', { shownAt, tokyo, at });
    await page.goto(`${hub}/device/${encodeURIComponent(device)}?range=15m`);
    await page.waitForFunction(() => window.outpost.pages >= 1, null, { timeout: 30000 });
    const legend = await page.$eval('article.card:not([hidden]) .u-legend th', (th) => th.textContent);
    check(legend.includes('Asia/Tokyo'), 'charts name the chosen zone', legend);
    await page.selectOption('select[name=zone]', 'browser');
    await page.waitForFunction(() => window.outpost.pages >= 1, null, { timeout: 30000 });
    const pages = [['fleet', '/'], ['alerts', '/alerts'], ['availability', '/probes'], ['explore', '/explore?q=up'],
      ['device', `/device/${encodeURIComponent(device)}?range=15m`], ['boards', '/boards'], ['board', '/boards/Site%20north'],
      ['compare', '/compare?devices=dev-a,dev-b&metric=cpu'], ['reports', '/reports?range=24h']];
    for (const scheme of ['light', 'dark']) {
      await page.emulateMedia({ colorScheme: scheme });
      for (const width of [1600, 390]) {
        await page.setViewportSize({ width, height: 900 });
        for (const [name, path] of pages) {
          await page.goto(`${hub}${path}`);
          await page.waitForSelector('main h1');
          await page.waitForLoadState('networkidle');
          await page.screenshot({ path: join(shots, `look-${name}-${width}-${scheme}.png`), fullPage: true });
          const wide = await page.evaluate(() => document.documentElement.scrollWidth);
          check(wide <= width, `${name} at ${width} px (${scheme}) is no wider than the window`, wide);
          const nulls = await page.evaluate(() => [...document.querySelectorAll('main, main *')]
            .flatMap((node) => [...node.childNodes]).filter((n) => n.nodeType === 3 && /\b(null|undefined)\b/.test(n.textContent)).map((n) => n.textContent));
          check(nulls.length === 0, `${name} at ${width} px (${scheme}) prints no "null" or "undefined"`, nulls);
        }
      }
    }
    await page.emulateMedia({ colorScheme: 'light' });
    await page.setViewportSize({ width: 390, height: 900 });
    await page.goto(`${hub}/`);
    await page.waitForSelector('table.fleet tbody tr[data-device]');
    const pinned = await page.evaluate(async () => {
      const box = document.querySelector('table.fleet').closest('.scroll');
      const cell = document.querySelector('table.fleet tbody tr[data-device] td');
      box.scrollLeft = 400;
      await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
      return { scrolled: box.scrollLeft, cellLeft: Math.round(cell.getBoundingClientRect().left), boxLeft: Math.round(box.getBoundingClientRect().left) };
    });
    check(pinned.scrolled > 0 && Math.abs(pinned.cellLeft - pinned.boxLeft) <= 1, 'at phone width the fleet table scrolls with the device name pinned', pinned);
    await page.setViewportSize({ width: 1400, height: 1000 });
  }

  // Looking at "now", the charts follow the device's data as it arrives.
  await page.goto(`${hub}/device/${encodeURIComponent(device)}?range=15m`);
  await page.waitForFunction(() => window.outpost && window.outpost.pages >= 1, null, { timeout: 30000 });
  const firstEnd = await page.evaluate(() => Number(new URL(Object.values(window.outpost.charts)[0].url, location.href).searchParams.get('end')));
  await page.waitForFunction(() => window.outpost.pages >= 3, null, { timeout: 30000 });
  const laterEnd = await page.evaluate(() => Number(new URL(Object.values(window.outpost.charts)[0].url, location.href).searchParams.get('end')));
  check(laterEnd > firstEnd, 'live: new data redraws the charts with a later end', { firstEnd, laterEnd });

  // A phone-sized window still shows the fleet.
  await page.setViewportSize({ width: 390, height: 800 });
  await page.goto(`${hub}/`);
  await page.waitForSelector('table.fleet tbody tr[data-device]');
  await page.screenshot({ path: join(shots, 'fleet-phone.png'), fullPage: true });

  // Regressions of the fleet table (issue: "Tables"), on a list made to hold them: a device
  // without a current CPU value sorts last both ways, an offline device's sync lag is not shown
  // as current, and each number sits at the right edge of its column, under its header.
  {
    const real = await page.evaluate(async () => (await fetch('/api/devices')).json());
    const base = real[0];
    const withCpu = (name, cpu, state = 'online') => ({
      ...base, device: name, state, sync_lag_ms: 10000,
      summary: { ...base.summary, cpu: { unit: 'ratio', current: cpu, sparkline: [0.1, 0.2, cpu] } },
    });
    const made = [withCpu('m-low', 0.1), withCpu('m-none', null), withCpu('m-high', 0.9), withCpu('m-off', null, 'offline')];
    await page.route('**/api/devices', (route) => route.fulfill({ contentType: 'application/json', body: JSON.stringify(made) }));
    const order = async (query) => {
      await page.goto(`${hub}/?${query}`);
      await page.waitForSelector('table.fleet tbody tr[data-device]');
      return page.$$eval('table.fleet tbody tr[data-device]', (trs) => trs.map((tr) => tr.dataset.device));
    };
    const descending = await order('sort=cpu&desc=1');
    check(JSON.stringify(descending.slice(0, 2)) === '["m-high","m-low"]', 'descending, devices with a value come first', descending);
    const ascending = await order('sort=cpu');
    check(JSON.stringify(ascending.slice(0, 2)) === '["m-low","m-high"]', 'ascending, devices with a value come first', ascending);
    const lag = await page.$eval('tr[data-device="m-off"] td:last-child', (td) => td.textContent);
    check(lag === '–', 'an offline device shows no sync lag as if current', lag);
    const placed = await page.evaluate(() => {
      const index = [...document.querySelectorAll('table.fleet thead th')].findIndex((th) => th.dataset.key === 'cpu');
      const header = document.querySelectorAll('table.fleet thead th')[index].getBoundingClientRect();
      const cell = document.querySelector('tr[data-device="m-high"]').children[index];
      const value = cell.querySelector('.value').getBoundingClientRect();
      const spark = cell.querySelector('.spark').getBoundingClientRect();
      return { headerRight: header.right, valueRight: value.right, sparkRight: spark.right, valueLeft: value.left, cell: cell.textContent };
    });
    check(Math.abs(placed.headerRight - placed.valueRight) < 12 && placed.sparkRight <= placed.valueLeft,
      'a number sits at the right of its column, under its header, the sparkline before it', placed);
    await page.unroute('**/api/devices');
  }

  // A fleet of 1,000 (the hub's devices, copied under other names): the table holds only the rows
  // near the viewport, and scrolling, sorting and filtering still reach every device.
  await page.setViewportSize({ width: 1400, height: 1000 });
  const real = await page.evaluate(async () => (await fetch('/api/devices')).json());
  const fleet = Array.from({ length: 1000 }, (_, i) => ({ ...real[i % real.length], device: `big-${String(i).padStart(4, '0')}` }));
  await page.route('**/api/devices', (route) => route.fulfill({ contentType: 'application/json', body: JSON.stringify(fleet) }));
  await page.goto(`${hub}/?sort=device`);
  await page.waitForSelector('table.fleet tbody tr[data-device]');
  const inDocument = await page.$$eval('table.fleet tbody tr[data-device]', (trs) => trs.map((tr) => tr.dataset.device));
  check(inDocument[0] === 'big-0000' && inDocument.length < 200, 'a large fleet puts only the first rows in the document', inDocument.length);
  const rowIndex = await page.$eval('table.fleet tbody tr[data-device="big-0000"]', (tr) => tr.getAttribute('aria-rowindex'));
  const rowCount = await page.$eval('table.fleet', (t) => t.getAttribute('aria-rowcount'));
  check(rowIndex === '2' && rowCount === '1001', 'the table tells screen readers its full size', { rowIndex, rowCount });
  const counted = await page.textContent('.toolbar p');
  check(counted.startsWith('1000 devices'), 'and counts every device', counted);
  await page.evaluate(() => window.scrollTo(0, document.body.scrollHeight));
  await page.waitForFunction(() => [...document.querySelectorAll('table.fleet tbody tr[data-device]')].some((tr) => tr.dataset.device === 'big-0999'));
  const bottom = await page.evaluate(() => {
    const row = document.querySelector('table.fleet tbody tr[data-device="big-0999"]').getBoundingClientRect();
    return { top: row.top, bottom: row.bottom, height: window.innerHeight };
  });
  check(bottom.bottom <= bottom.height + 1 && bottom.top >= 0, 'scrolled to the end, the last device is on the screen', bottom);
  await page.evaluate(() => window.scrollTo(0, document.body.scrollHeight / 2));
  await page.waitForTimeout(200);
  const middle = await page.evaluate(() => [...document.querySelectorAll('table.fleet tbody tr[data-device]')]
    .filter((tr) => { const r = tr.getBoundingClientRect(); return r.bottom > 0 && r.top < window.innerHeight; })
    .map((tr) => Number(tr.dataset.device.slice(4))));
  check(middle.length > 10 && middle.every((n, i) => i === 0 || n === middle[i - 1] + 1) && middle[0] > 300 && middle[0] < 600,
    'half way down, the rows on the screen are the middle of the fleet, in order', middle);
  // The spacers stand for the rows left out at one measured height: a row of another height
  // (a badge, a sparkline) would move every row below it, and a refresh would show other rows.
  const heights = await page.$$eval('table.fleet tbody tr[data-device]', (trs) => [...new Set(trs.map((tr) => tr.getBoundingClientRect().height))]);
  check(heights.length === 1, 'every row of the fleet table is as tall as the others', heights);
  // The page refreshes the list every 15 s with a new table; the reader stays where they were.
  const scrolled = await page.evaluate(() => window.scrollY);
  await page.evaluate(() => { window.oldFleetTable = document.querySelector('table.fleet'); });
  await page.waitForFunction(() => document.querySelector('table.fleet') !== window.oldFleetTable, null, { timeout: 30000 });
  await page.waitForTimeout(200);
  const afterRefresh = await page.evaluate(() => ({
    y: window.scrollY,
    first: [...document.querySelectorAll('table.fleet tbody tr[data-device]')]
      .find((tr) => tr.getBoundingClientRect().bottom > 0)?.dataset.device,
  }));
  check(Math.abs(afterRefresh.y - scrolled) < 2 && Number(afterRefresh.first?.slice(4)) === middle[0],
    'a refresh keeps the scroll position and the rows on the screen', { scrolled, afterRefresh, first: middle[0] });
  await page.fill('input[type=search]', 'big-0777');
  const found = await page.$$eval('table.fleet tbody tr[data-device]', (trs) => trs.map((tr) => tr.dataset.device));
  check(JSON.stringify(found) === '["big-0777"]', 'the filter finds a device that was never in the document', found);
  await page.unroute('**/api/devices');

  check(failures.length === 0, 'no script errors in the page', failures);
} catch (error) {
  console.error(`FAIL ${error.message}\npage errors: ${JSON.stringify(failures)}`);
  const pages = browser.contexts().flatMap((c) => c.pages());
  if (pages[0]) await pages[0].screenshot({ path: join(shots, 'failure.png'), fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}
