// How long the fleet page takes to first show a large fleet: the page of a real hub, in Debian's
// headless Chromium, with `/api/devices` answered by FLEET copies of the hub's real devices
// (renamed sim-0000...). Run by benches/hub-load.sh, which starts the hub and its devices.
// Env: HUB_URL, FLEET (1000), LOADS (5). Prints each load's time to the first painted fleet table
// and to a sort by one column, and their medians.
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
// Each time is taken in the page, from the start of navigation (or the click) to the end of the
// first frame that shows the result, so it includes the layout and painting that follow the script.
const renders = [];
const sorts = [];
try {
  for (let load = 0; load < loads; load++) {
    const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
    const page = await context.newPage();
    await page.route('**/api/devices', (route) => route.fulfill({ contentType: 'application/json', body }));
    await page.goto(`${hub}/`);
    renders.push(await page.evaluate(async (n) => {
      const counts = () => document.querySelector('.toolbar p')?.textContent ?? '';
      while (!counts().startsWith(`${n} devices`) || !document.querySelector('table.fleet tbody tr[data-device]')) {
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
      await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
      return performance.now();
    }, fleet));
    sorts.push(await page.evaluate(async () => {
      const header = document.querySelector('th[data-key=cpu]');
      const started = performance.now();
      header.click();
      await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
      if (header.getAttribute('aria-sort') !== 'ascending') throw new Error('the table did not sort');
      return performance.now() - started;
    }));
    await context.close();
  }
} finally {
  await browser.close();
}
const report = (times) => {
  const sorted = [...times].sort((a, b) => a - b).map(Math.round);
  return `${sorted.join(', ')} ms; median ${sorted[Math.floor(sorted.length / 2)]} ms`;
};
console.log(`fleet page, ${fleet} devices (${(body.length / 1e6).toFixed(1)} MB of JSON): first render ${report(renders)}`);
console.log(`fleet page, ${fleet} devices: sort by CPU ${report(sorts)}`);
