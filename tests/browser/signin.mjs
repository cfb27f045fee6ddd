// The local page in a real browser: open it, type the local password twice
// into the account's sign-in form, click Sign in, let the (fake) provider
// send the browser back, and check the row now reads "locked until a client
// logs in with the password chosen at sign-in". Screenshots before and after
// go to SHOT_DIR (signin-before.png, signin.png).
//
// usage: node signin.mjs PAGE_URL ACCOUNT [SHOT_DIR]
// env:   CHROMIUM (default /usr/bin/chromium), SIGN_IN_PASSWORD (the local
//        password to choose; tests/admin.rs logs in with it afterwards)
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, account, shotDir = "target/browser"] = process.argv.slice(2);
if (!url || !account) {
  console.error("usage: node signin.mjs PAGE_URL ACCOUNT [SHOT_DIR]");
  process.exit(2);
}
mkdirSync(shotDir, { recursive: true });

const LOCKED = "signed in — locked until a client logs in with the password chosen at sign-in";
const password = process.env.SIGN_IN_PASSWORD;
if (!password) {
  console.error("SIGN_IN_PASSWORD is not set");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox"],
  timeout: 60_000,
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
  const violations = [];
  page.on("console", (m) => {
    if (/Content Security Policy/i.test(m.text())) violations.push(m.text());
  });
  const first = await page.goto(url, { waitUntil: "load", timeout: 30_000 });
  if (!first || first.status() !== 200) throw new Error(`GET ${url}: ${first && first.status()}`);
  const row = page.locator(`tr[data-account="${account}"]`);
  await row.waitFor({ timeout: 10_000 });
  console.log(`before: ${(await row.locator(".state").innerText()).trim()}`);
  await page.screenshot({ path: join(shotDir, "signin-before.png"), fullPage: true });

  // The local password, typed twice (the form refuses to submit without it).
  await row.locator('input[name="password"]').fill(password);
  await row.locator('input[name="password2"]').fill(password);
  // Sign in: POST /signin -> 303 to the provider -> 302 back to /callback -> 303 to /.
  await Promise.all([
    page.waitForRequest((r) => new URL(r.url()).pathname === "/callback", { timeout: 30_000 }),
    row.getByRole("button", { name: "Sign in", exact: true }).click(),
  ]);
  await page.waitForLoadState("load");
  await page
    .locator(`tr[data-account="${account}"] .state`, { hasText: LOCKED })
    .waitFor({ timeout: 30_000 })
    .catch(() => {});
  if (!page.url().startsWith(url)) throw new Error(`ended at ${page.url()}, not the page`);
  const state = (await row.locator(".state").innerText()).trim();
  console.log(`after: ${state}`);
  await page.screenshot({ path: join(shotDir, "signin.png"), fullPage: true });
  if (state !== LOCKED) throw new Error(`the row reads "${state}", expected "${LOCKED}"`);
  if ((await row.getAttribute("data-state")) !== "locked") throw new Error("data-state is not locked");
  if (violations.length) throw new Error(`CSP violations: ${violations.join("; ")}`);
  console.log(`ok: screenshot in ${join(shotDir, "signin.png")}`);
} catch (e) {
  failed = true;
  console.error(`browser sign-in failed: ${e && e.stack ? e.stack : e}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
