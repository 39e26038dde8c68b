// Headless Debian Chromium driven by puppeteer-core, for the admin console test.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer from 'puppeteer-core';

export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';

/** Why no browser can run here (null when one can). */
export function browserMissing() {
  return existsSync(CHROMIUM) ? null : `${CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium) or set CHROMIUM_BIN`;
}

/** Launches a fresh headless Chromium; `close()` also removes its profile. */
export async function launch() {
  const profile = mkdtempSync(join(tmpdir(), 'syncgate-chromium-'));
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      `--user-data-dir=${profile}`, '--window-size=1280,900'],
    defaultViewport: { width: 1280, height: 900 },
  });
  return {
    browser,
    async close() {
      await browser.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
