// How long the fleet page takes to first show a large fleet: the page of a real hub, in Debian's
// headless Chromium, with `/api/devices` answered by FLEET copies of the hub's real devices
// (renamed sim-0000...). Run by benches/hub-load.sh, which starts the hub and its devices.
// Env: HUB_URL, FLEET (1000), LOADS (5). Prints each load's time to the last row and the median.
import { chromium } from 'playwright-core';

const hub = process.env.HUB_URL;
const fleet = Number(process.env.FLEET || 1000);
const loads = Number(process.env.LOADS || 5);
const real = await (await fetch(`${hub}/api/devices`)).json();
if (real.length === 0) throw new Error('the hub has no devices to copy');
const devices = Array.from({ length: fleet }, (_, i) => ({
  ...real[i % real.length],
  device: `sim-${String(i).padStart(4, '0')}`,
}));
const body = JSON.stringify(devices);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const times = [];
try {
  for (let load = 0; load < loads; load++) {
    const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
    const page = await context.newPage();
    await page.route('**/api/devices', (route) => route.fulfill({ contentType: 'application/json', body }));
    const started = Date.now();
    await page.goto(`${hub}/`);
    await page.waitForFunction((n) => document.querySelectorAll('table.fleet tbody tr').length >= n, fleet,
      { polling: 'raf', timeout: 30000 });
    times.push(Date.now() - started);
    await context.close();
  }
} finally {
  await browser.close();
}
times.sort((a, b) => a - b);
console.log(`fleet page, ${fleet} devices (${(body.length / 1e6).toFixed(1)} MB of JSON): first render ${times.join(', ')} ms; median ${times[Math.floor(times.length / 2)]} ms`);
