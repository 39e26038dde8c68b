// A real headless browser for tests: Debian's chromium driven by puppeteer-core.
//
// scripts/test installs chromium when it is missing. When the browser cannot start, this
// throws: a browser test fails loudly, it never skips.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer from 'puppeteer-core';

export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

/**
 * Launches a fresh headless Chromium (its own empty profile, no network services of its own).
 * Returns { browser, newPage(), close() }; close() also removes the profile directory.
 */
export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`No browser at ${CHROMIUM}: install Debian's chromium (apt-get update && apt-get install -y chromium; scripts/test does this)`);
  }
  const profile = mkdtempSync(join(tmpdir(), 'syncgate-chromium-'));
  let browser;
  try {
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      userDataDir: profile,
      timeout: 60000,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        `--user-data-dir=${profile}`,
      ],
    });
  } catch (e) {
    rmSync(profile, { recursive: true, force: true });
    throw new Error(`Chromium (${CHROMIUM}) did not start: ${e.message}`);
  }
  return {
    browser,
    async newPage() {
      const page = await browser.newPage();
      page.setDefaultTimeout(30000);
      return page;
    },
    async close() {
      try { await browser.close(); } finally { rmSync(profile, { recursive: true, force: true }); }
    },
  };
}
