// A headless browser driven by puppeteer-core, for the admin console test: Debian's chromium
// by default; CONSOLE_BROWSER=firefox runs the same test in Firefox (ESR ≥ 129, WebDriver BiDi).
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer from 'puppeteer-core';

export const BROWSER = process.env.CONSOLE_BROWSER === 'firefox' ? 'firefox' : 'chrome';
export const EXECUTABLE = BROWSER === 'firefox'
  ? process.env.FIREFOX_BIN ?? '/usr/bin/firefox-esr'
  : process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';

/** Why no browser can run here (null when one can). */
export function browserMissing() {
  if (existsSync(EXECUTABLE)) return null;
  return BROWSER === 'firefox'
    ? `${EXECUTABLE} is missing: install Debian's firefox-esr or set FIREFOX_BIN`
    : `${EXECUTABLE} is missing: install Debian's chromium (apt-get install -y chromium) or set CHROMIUM_BIN`;
}

/** Launches a fresh headless browser; `close()` also removes its profile. */
export async function launch() {
  const profile = mkdtempSync(join(tmpdir(), `syncgate-${BROWSER}-`));
  const common = { executablePath: EXECUTABLE, headless: true, defaultViewport: { width: 1280, height: 900 } };
  const browser = BROWSER === 'firefox'
    ? await puppeteer.launch({ ...common, browser: 'firefox', userDataDir: profile })
    : await puppeteer.launch({
      ...common,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
        `--user-data-dir=${profile}`, '--window-size=1280,900'],
    });
  return {
    browser,
    async close() {
      await browser.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
