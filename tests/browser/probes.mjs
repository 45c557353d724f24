// The availability page of a real hub, in headless Chromium: each probe's availability and
// outages as the API gives them, with the operator's note. Run by tests/it/dashboard.rs, which
// passes HUB_URL, TOKEN (a viewer's), PROBE (device/probe), NOTE (the note on its outage) and
// SCREENSHOTS (a dir). Exits non-zero on the first failure.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
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
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
});
try {
  for (const [width, height] of [[1600, 1000], [390, 844]]) {
    const context = await browser.newContext({
      viewport: { width, height },
      extraHTTPHeaders: { Authorization: `Bearer ${env('TOKEN')}` },
    });
    const page = await context.newPage();
    const errors = [];
    page.on('pageerror', (error) => errors.push(error.message));
    const answered = page.waitForResponse((r) => r.url().includes('/api/probes/outages'));
    await page.goto(`${env('HUB_URL')}/probes?range=24h`);
    const answer = await (await answered).json();
    const [device, probe] = env('PROBE').split('/');
    const reported = answer.probes.find((p) => p.device === device && p.probe === probe);
    check(reported && reported.outages.length >= 1, `${width} px: the API reports the probe's outage`, answer);
    const row = page.locator(`tr[data-probe="${env('PROBE')}"]`);
    await row.waitFor();
    const cells = await row.locator('td').allInnerTexts();
    const shown = Number.parseFloat(cells[3]);
    const expected = reported.availability;
    check(Math.abs(shown - expected) < 0.01, `${width} px: the availability the API gives`, { cells, expected });
    check(Number(cells[5]) >= 1, `${width} px: the outage counted`, cells);
    const outages = await page.locator('table.outages tbody').innerText();
    check(outages.includes(env('NOTE')), `${width} px: the operator's note with its outage`, outages);
    check(!outages.includes('Add note'), `${width} px: a viewer is offered no note button`, outages);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 0, `${width} px: the page fits (tables scroll in their own box)`, overflow);
    await page.screenshot({ path: join(shots, `probes-${width}.png`), fullPage: true });
    await page.selectOption('select[name=range]', '7d');
    await page.waitForURL(/range=7d/);
    await row.waitFor();
    check(page.url().endsWith('/probes?range=7d'), `${width} px: the range is in the URL`, page.url());
    check(errors.length === 0, `${width} px: no script errors`, errors);
    await context.close();
  }
  // The report of the probe's device lists the probe with the availability the API gives.
  const reporter = await browser.newContext({ viewport: { width: 1600, height: 1000 }, extraHTTPHeaders: { Authorization: `Bearer ${env('TOKEN')}` } });
  const reportPage = await reporter.newPage();
  const [device] = env('PROBE').split('/');
  // A range that ended seconds ago: the samples in it have all reached the hub, so the page's
  // answer and the test's own are of the same data.
  const now = Date.now();
  await reportPage.goto(`${env('HUB_URL')}/reports?start=${now - 600000}&end=${now - 5000}&q=${device}`);
  await reportPage.waitForFunction(() => window.outpost.report, null, { timeout: 30000 });
  const { start, end } = await reportPage.evaluate(() => window.outpost.report);
  const expected = await reportPage.evaluate(async ([s, e, d]) => (await (await fetch(`/api/probes/outages?start=${s}&end=${e}&device=${d}`)).json()).probes[0].availability, [start, end, device]);
  const shown = await reportPage.$eval(`table.report-probes tr[data-probe="${env('PROBE')}"]`, (tr) => tr.children[2].textContent);
  check(Math.abs(Number.parseFloat(shown) - expected) < 0.001, 'the report lists the device\'s probe with its availability', { shown, expected });
  await reporter.close();

  // The public status page, for someone without a login, at desktop and phone width, light and
  // dark.
  for (const scheme of ['light', 'dark']) {
    for (const [width, height] of [[1600, 1000], [390, 844]]) {
      const anonymous = await browser.newContext({ viewport: { width, height }, colorScheme: scheme });
      const visitor = await anonymous.newPage();
      await visitor.goto(`${env('HUB_URL')}/status`);
      await visitor.waitForSelector(`table.status-probes tr[data-probe="${env('PROBE')}"]`);
      const row = await visitor.$eval(`tr[data-probe="${env('PROBE')}"]`, (tr) => [...tr.children].map((td) => td.textContent));
      const at = `${width} px, ${scheme}`;
      check(row[1] === 'up' && /%$/.test(row[2]) && /%$/.test(row[3]), `${at}: the public status page shows the probe without a login`, row);
      check(await visitor.locator('.top nav').isHidden(), `${at}: and no navigation into what needs one`);
      const wide = await visitor.evaluate(() => document.documentElement.scrollWidth);
      check(wide <= width, `${at}: the status page is no wider than the window`, wide);
      const background = await visitor.evaluate(() => getComputedStyle(document.body).backgroundColor);
      check((background === 'rgb(13, 17, 23)') === (scheme === 'dark'), `${at}: the status page follows the system's scheme`, background);
      if (width === 390 && scheme === 'light') {
        const api = await visitor.evaluate(async () => (await fetch('/api/devices')).status);
        check(api === 401, 'the rest of the API still needs a login', api);
      }
      await visitor.screenshot({ path: join(shots, `status-${width}-${scheme}.png`), fullPage: true });
      await anonymous.close();
    }
  }
} finally {
  await browser.close();
}
