// The dashboard's pages in Debian's headless Chromium, timed in the page from the start of
// navigation to the end of the first frame that shows the result (so layout and painting are
// in). Run by benches/dashboard-browser.sh, which seeds the hub's store with 30 days of 100
// Jetsons (bench-000...) and starts one real agent, whose device record the fleet lists are
// copied from. Env: HUB_URL, LOADS (5).
import { chromium } from 'playwright-core';

const hub = process.env.HUB_URL;
const loads = Number(process.env.LOADS || 5);
const real = await (await fetch(`${hub}/api/devices`)).json();
if (real.length === 0) throw new Error('the hub has no device to copy');
const copies = (n) => Array.from({ length: n }, (_, i) => ({ ...real[0], device: `bench-${String(i).padStart(3, '0')}` }));
const fleet = JSON.stringify(copies(1000));
const hundred = JSON.stringify(copies(100));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});

// Resolves in the page once `ready()` holds, after the frame that follows: the time since the
// navigation started.
const shown = (page, ready, arg) => page.evaluate(async ([source, value]) => {
  // eslint-disable-next-line no-new-func
  const test = new Function('value', `return (${source})(value)`);
  while (!test(value)) await new Promise((resolve) => setTimeout(resolve, 2));
  await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
  return performance.now();
}, [ready.toString(), arg]);

// One measure: `loads` fresh pages, each with `devices` as the fleet list.
async function measure(name, { path, devices, ready, arg, check }) {
  const times = [];
  for (let load = 0; load < loads; load++) {
    const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
    const page = await context.newPage();
    await page.route('**/api/devices', (route) => route.fulfill({ contentType: 'application/json', body: devices }));
    await page.route(/\/api\/devices\/bench-\d+$/, (route) => {
      const device = decodeURIComponent(new URL(route.request().url()).pathname.split('/').pop());
      route.fulfill({ contentType: 'application/json', body: JSON.stringify({ ...real[0], device }) });
    });
    await page.goto(`${hub}${path}`);
    times.push(await shown(page, ready, arg));
    if (load === 0 && check) {
      const problem = await page.evaluate(check);
      if (problem) throw new Error(`${name}: ${problem}`);
    }
    await context.close();
  }
  const sorted = [...times].sort((a, b) => a - b).map(Math.round);
  console.log(`${name}: ${sorted.join(', ')} ms; median ${sorted[Math.floor(sorted.length / 2)]} ms`);
}

try {
  await measure('fleet page, 1,000 devices', {
    path: '/', devices: fleet,
    ready: (n) => (document.querySelector('.toolbar p')?.textContent ?? '').startsWith(`${n} devices`)
      && document.querySelector('table.fleet tbody tr[data-device]') !== null,
    arg: 1000,
  });
  for (const range of ['24h', '30d']) {
    await measure(`device page, ${range}`, {
      path: `/device/bench-000?range=${range}`, devices: hundred,
      ready: () => window.outpost?.pages >= 1,
      check: () => {
        const drawn = Object.keys(window.outpost.charts).length;
        return drawn >= 5 ? null : `only ${drawn} charts drawn`;
      },
    });
  }
  const query = 'jetson_cpu_load_ratio{instance=~"bench-0([0-6][0-9]|7[0-4])"}';
  await measure('explorer, 300 series over 24 h', {
    path: `/explore?${new URLSearchParams({ q: query, mode: 'range', range: '24h' })}`, devices: hundred,
    ready: () => window.outpost?.explore != null,
    check: () => {
      const series = document.querySelectorAll('.u-legend .u-series').length - 1;
      return series === 300 ? null : `${series} series drawn, not 300`;
    },
  });
  await measure('report, 30 days of 100 devices', {
    path: '/reports?range=30d&q=bench-', devices: hundred,
    ready: () => window.outpost?.report != null,
    check: () => {
      const { report } = window.outpost;
      const rows = document.querySelectorAll('table.report tbody tr').length;
      return report.devices.length === 100 && rows === 100 ? null : `${report.devices.length} devices, ${rows} rows`;
    },
  });
} finally {
  await browser.close();
}
