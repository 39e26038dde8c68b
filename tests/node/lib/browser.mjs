// A real headless browser for tests, driven by puppeteer-core: Debian's chromium by default;
// TEST_BROWSER=firefox (or CONSOLE_BROWSER=firefox) runs the same tests in Firefox
// (ESR ≥ 129, WebDriver BiDi). CHROMIUM_BIN / FIREFOX_BIN point at another binary.
//
// scripts/test installs chromium when it is missing. launchBrowser() throws when the browser
// cannot start: a test that needs a browser fails loudly, it does not skip.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer from 'puppeteer-core';

const wanted = process.env.TEST_BROWSER || process.env.CONSOLE_BROWSER;
export const BROWSER = wanted === 'firefox' ? 'firefox' : 'chrome';
export const EXECUTABLE = BROWSER === 'firefox'
  ? process.env.FIREFOX_BIN || '/usr/bin/firefox-esr'
  : process.env.CHROMIUM_BIN || '/usr/bin/chromium';

/** Why no browser can run here (null when one can). */
export function browserMissing() {
  if (existsSync(EXECUTABLE)) return null;
  return BROWSER === 'firefox'
    ? `${EXECUTABLE} is missing: install Debian's firefox-esr or set FIREFOX_BIN`
    : `${EXECUTABLE} is missing: install Debian's chromium (apt-get update && apt-get install -y chromium; scripts/test does this) or set CHROMIUM_BIN`;
}

/**
 * Launches a fresh headless browser with its own empty profile (and, for Chromium, no network
 * services of its own). Returns { browser, newPage(), close() }; close() also removes the
 * profile directory.
 */
export async function launchBrowser() {
  const missing = browserMissing();
  if (missing) throw new Error(`No browser: ${missing}`);
  const profile = mkdtempSync(join(tmpdir(), `syncgate-${BROWSER}-`));
  const common = {
    executablePath: EXECUTABLE,
    headless: true,
    timeout: 60000,
    defaultViewport: { width: 1280, height: 900 },
  };
  let browser;
  try {
    browser = BROWSER === 'firefox'
      ? await puppeteer.launch({ ...common, browser: 'firefox', userDataDir: profile })
      : await puppeteer.launch({
        ...common,
        args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
          '--disable-background-networking', '--disable-component-update', '--disable-sync',
          `--user-data-dir=${profile}`, '--window-size=1280,900'],
      });
  } catch (e) {
    rmSync(profile, { recursive: true, force: true });
    throw new Error(`${BROWSER} (${EXECUTABLE}) did not start: ${e.message}`);
  }
  return {
    browser,
    async newPage() {
      const page = await browser.newPage();
      page.setDefaultTimeout(30000);
      return page;
    },
    async close() {
      await browser.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
