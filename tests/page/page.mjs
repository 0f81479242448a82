// Drives the host's page in headless Chromium for tests/page.rs, which
// starts the status server and vigil and says when it changed something.
//
//   node page.mjs URL CHROMIUM SCENE
//
// It talks with the Rust test in lines: it prints `ready` and waits for a
// line on stdin before each step, then prints what it saw. Every wait is for
// a condition in the DOM, with a bounded timeout; a failure prints `FAIL`
// and what the page showed on stderr, and exits 1.
//
// SCENE `alerts`: the page loads with no console or page error; after
// `high` a firing CpuUsageHigh row appears (also on a phone-sized screen,
// with nothing wider than the screen); after `low` it goes; after `stopped`
// (vigil is gone) the page says it cannot reach the host.
//
// SCENE `token`: the API needs the token; the page says so and shows the
// form; a wrong token is refused; the right one (the next stdin line) brings
// the tables, and a reload of the tab keeps it.
//
// Console errors fail a step except where the browser rightly logs failed
// requests (the 401s before the token, vigil stopped); a page error (an
// exception in the page's script) fails every step.

import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const [url, executablePath, scene] = process.argv.slice(2);
const WAIT_MS = 20_000;

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function expectLine(word) {
  const { value, done } = await lines.next();
  if (done) throw new Error(`stdin closed while waiting for \`${word}\``);
  if (word && value.trim() !== word) throw new Error(`expected \`${word}\` on stdin, got \`${value}\``);
  return value.trim();
}
const say = (word) => process.stdout.write(word + "\n");

const problems = [];
let watching = true;
function watch(page, name) {
  page.on("console", (message) => {
    if (watching && message.type() === "error") problems.push(`${name}: console error: ${message.text()}`);
  });
  // An exception in the page's script is a failure in every step, even
  // where failed requests are expected.
  page.on("pageerror", (error) => problems.push(`${name}: page error: ${error.message}`));
}
function noProblems(when) {
  if (problems.length) throw new Error(`${when}:\n  ${problems.join("\n  ")}`);
}

// Fails with what the page shows when `selector` does not reach `state`.
async function waitFor(page, selector, state, what) {
  try {
    await page.waitForSelector(selector, { state, timeout: WAIT_MS });
  } catch (error) {
    throw new Error(`${what}: \`${selector}\` not ${state} within ${WAIT_MS} ms\n${await shows(page)}`);
  }
}
async function shows(page) {
  return page.evaluate(() =>
    ["banner", "counts", "alerts", "targets", "rules"]
      .map((id) => {
        const el = document.getElementById(id);
        return `--- #${id}${el && el.hidden ? " (hidden)" : ""}: ${el ? el.innerText : "(none)"}`;
      })
      .join("\n")).catch((error) => `(the page cannot be read: ${error.message})`);
}
const text = (page, selector) => page.locator(selector).first().innerText({ timeout: WAIT_MS });
function equal(actual, expected, what) {
  if (actual !== expected) throw new Error(`${what}: expected \`${expected}\`, got \`${actual}\``);
}

async function open(browser, name, viewport) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  watch(page, name);
  const response = await page.goto(url, { waitUntil: "load", timeout: WAIT_MS });
  equal(response.status(), 200, `GET ${url}`);
  const policy = response.headers()["content-security-policy"] || "";
  if (!policy.includes("script-src 'sha256-") || policy.includes("unsafe-inline")) {
    throw new Error(`the page's Content-Security-Policy does not pin its script by hash: \`${policy}\``);
  }
  return page;
}

const ALERT = '#alerts tr.alert[data-name="CpuUsageHigh"][data-target="web-01"]';

async function alerts(browser) {
  const laptop = await open(browser, "laptop", { width: 1280, height: 800 });
  await waitFor(laptop, '#targets tr[data-name="web-01"][data-health="up"]', "attached", "target web-01 up");
  await waitFor(laptop, '#rules tr[data-name="threshold"][data-health="healthy"]', "attached", "rule threshold healthy");
  await waitFor(laptop, "#alerts td.none", "attached", "no alert yet");
  await waitFor(laptop, "#banner", "hidden", "no banner while the host answers");
  await waitFor(laptop, "#auth", "hidden", "no token form on loopback");
  equal(await text(laptop, "#count-firing b"), "0", "firing count before");
  equal(await text(laptop, '#rules tr[data-name="threshold"] td:nth-child(2)'), "1", "threshold's version");
  noProblems("after loading");
  say("ready");

  await expectLine("high");
  await waitFor(laptop, `${ALERT}[data-state="firing"]`, "attached", "CpuUsageHigh firing");
  const row = laptop.locator(ALERT);
  equal(await row.locator("td").nth(3).innerText(), "threshold", "the alert's rule");
  equal(await row.locator("td").nth(5).innerText(), "cpu_usage is 95.0, above 80", "the alert's summary");
  equal(await row.locator("td .label").first().innerText(), "metric=cpu_usage", "the alert's label");
  await waitFor(laptop, '#count-firing.bad b:text-is("1")', "attached", "the firing count");

  // A phone: the alert is there and nothing is wider than the screen.
  const phone = await open(browser, "phone", { width: 375, height: 740 });
  await waitFor(phone, `${ALERT}[data-state="firing"]`, "visible", "CpuUsageHigh on a phone");
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 0) throw new Error(`on a 375 px screen the page is ${overflow} px wider than the screen\n${await shows(phone)}`);
  const box = await phone.locator(ALERT).boundingBox();
  if (!box || box.x < 0 || box.x + box.width > 375) throw new Error(`on a 375 px screen the alert row spans ${JSON.stringify(box)}`);
  await phone.context().close();
  noProblems("while firing");
  say("firing");

  await expectLine("low");
  await waitFor(laptop, ALERT, "detached", "CpuUsageHigh gone after the resolve");
  await waitFor(laptop, "#alerts td.none", "attached", "no alert after the resolve");
  await waitFor(laptop, '#count-firing b:text-is("0")', "attached", "the firing count after the resolve");
  noProblems("after the resolve");
  say("resolved");

  // From here the browser rightly logs failed requests.
  watching = false;
  await expectLine("stopped");
  await waitFor(laptop, '#banner:has-text("Cannot reach the host")', "visible", "the banner once vigil is gone");
  noProblems("once vigil is gone");
  say("banner");
}

async function token(browser) {
  // The page's own 401s are logged by the browser as failed loads; what
  // matters here is that the page says so and recovers. Not watched from
  // before the page opens: its first API call can be refused before the
  // `load` event that `open` waits for.
  watching = false;
  const page = await open(browser, "token", { width: 1280, height: 800 });
  await waitFor(page, '#banner:has-text("needs its API token")', "visible", "the 401 banner");
  await waitFor(page, "#auth", "visible", "the token form");
  await page.fill("#token", "not-the-token-at-all");
  await page.click('#auth button[type="submit"]');
  await waitFor(page, '#banner:has-text("refused this token")', "visible", "a wrong token refused");
  noProblems("before the token");
  say("ready");
  const right = await expectLine();
  await page.fill("#token", right);
  await page.click('#auth button[type="submit"]');
  await waitFor(page, '#targets tr[data-name="web-01"]', "attached", "the tables with the token");
  await waitFor(page, "#banner", "hidden", "no banner with the token");
  await waitFor(page, "#auth", "hidden", "no form with the token");
  const kept = await page.evaluate(() => sessionStorage.getItem("vigil-api-token"));
  equal(kept, right, "the token in sessionStorage");
  // A reload of the tab keeps it (sessionStorage), and sends it again.
  noProblems("with the token");
  watching = true;
  await page.reload({ waitUntil: "load" });
  await waitFor(page, '#targets tr[data-name="web-01"]', "attached", "the tables after a reload");
  noProblems("after a reload with the token");
  say("authorized");
}

const scenes = { alerts, token };
let browser;
try {
  if (!scenes[scene]) throw new Error(`no scene \`${scene}\`; the scenes are: ${Object.keys(scenes).join(", ")}`);
  browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
    timeout: 60_000,
  });
  await scenes[scene](browser);
  say("ok");
} catch (error) {
  process.stderr.write(`FAIL ${error.stack || error}\n`);
  process.exitCode = 1;
} finally {
  if (browser) await browser.close().catch(() => {});
}
process.exit();
