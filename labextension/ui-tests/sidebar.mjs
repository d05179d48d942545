// The Model Runner sidebar in a real browser (Debian's Chromium through playwright-core), against a real
// JupyterLab with the extension, a real registry and llama.cpp. Started by tests/browser/test_sidebar.py.
//
// Environment: LAB_URL (ending in /), LAB_TOKEN, MODEL (a reference to pull, e.g. ai/tiny), CHROMIUM (the
// browser binary), ARTIFACTS (a folder for screenshots); optional HF_CACHE_MODEL and HUB_SUGGESTION (a model in the
// server's HF cache, and one its Hub suggests for "tiny-gg"), SLOW_MODEL (a model behind a slow proxy, to watch partial progress and cancel) and EXPECT_BUILD (the entry point the
// page must load).
// Exits 0 when every step passed; prints each step as it goes.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = name => {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set`);
  }
  return value;
};
const LAB_URL = env('LAB_URL');
const TOKEN = env('LAB_TOKEN');
const MODEL = env('MODEL');
const ARTIFACTS = env('ARTIFACTS');
const STEP_TIMEOUT = 60_000;
/** A cold machine's first kernel start (imports not yet cached) takes tens of seconds: wait for it generously. */
const KERNEL_TIMEOUT = 300_000;
/** The Running view hears of a change from the server's events within this, well before the fallback poll (30 s). */
const EVENT_LATENCY = 3_000;
const AUTH = { Authorization: `token ${process.env.LAB_TOKEN}` };

mkdirSync(ARTIFACTS, { recursive: true });
const started = Date.now();
let shot = 0;

function log(message) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(6)} s] ${message}`);
}

async function screenshot(page, name, element = null) {
  shot += 1;
  const path = join(ARTIFACTS, `${String(shot).padStart(2, '0')}-${name}.png`);
  await (element ?? page).screenshot({ path });
  log(`screenshot ${path}`);
}

/** Poll `probe` until it returns something truthy (never a fixed sleep); fail naming `what` after `timeout` ms. */
async function until(what, probe, { timeout = STEP_TIMEOUT, interval = 250 } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await probe();
    if (value) {
      return value;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout / 1000} s waiting for ${what}`);
    }
    await new Promise(resolve => setTimeout(resolve, interval));
  }
}

/** A request to the server as a client outside the page would send it (the CLI, a script). */
async function api(path, init = {}) {
  const response = await fetch(`${LAB_URL}${path}`, { ...init, headers: { ...AUTH, ...(init.headers ?? {}) } });
  if (!response.ok) {
    throw new Error(`${init.method ?? 'GET'} ${path}: ${response.status} ${await response.text()}`);
  }
  return response.json();
}

/**
 * Run `step` while the page's reads of `engines/ps` are held (answered only afterwards): whatever the Running
 * view shows meanwhile came from the server's events.
 */
async function withoutReads(page, step) {
  const pattern = '**/modelrunner/engines/ps*';
  const held = [];
  const hold = route => {
    held.push(route);
  };
  await page.route(pattern, hold);
  try {
    return await step(held);
  } finally {
    await page.unroute(pattern, hold);
    for (const route of held) {
      await route.continue().catch(() => undefined);
    }
  }
}

/**
 * The open notebook's kernel has started and is idle, as the server and the page both see it. A cold machine's
 * first kernel start takes tens of seconds; cells run before it would wait on it inside their own time limits.
 */
async function kernelIdle(page) {
  const since = Date.now();
  await until('an idle kernel (GET api/kernels)', async () => {
    const kernels = await api('api/kernels');
    return kernels.length > 0 && kernels.every(k => k.execution_state === 'idle');
  }, { timeout: KERNEL_TIMEOUT, interval: 500 });
  await until('the notebook to show its kernel idle', () =>
    page.evaluate(() => {
      const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
      const indicator = panel?.querySelector('.jp-Notebook-ExecutionIndicator');
      const statusBar = document.querySelector('.jp-StatusBar-Widget')?.parentElement?.textContent ?? '';
      return indicator ? indicator.getAttribute('data-status') === 'idle' : /\bIdle\b/.test(statusBar);
    }), { timeout: KERNEL_TIMEOUT, interval: 250 });
  log(`kernel idle after ${((Date.now() - since) / 1000).toFixed(1)} s`);
}

function check(condition, message) {
  if (!condition) {
    throw new Error(`check failed: ${message}`);
  }
}

/**
 * Open the command palette and search it. Retried: a widget that takes the focus just after the shortcut
 * (a freshly shown panel activating) closes the modal palette again.
 */
async function openPalette(page, query) {
  const modal = page.locator('.jp-ModalCommandPalette');
  for (let attempt = 1; ; attempt++) {
    await page.keyboard.press('Control+Shift+C');
    try {
      await page.locator('.lm-CommandPalette-input').fill(query, { timeout: 5000 });
      await page.waitForTimeout(300);
      if (await modal.isVisible()) {
        return;
      }
    } catch (err) {
      if (attempt >= 3) {
        throw err;
      }
    }
    if (attempt >= 3) {
      throw new Error('the command palette did not stay open');
    }
    await page.waitForTimeout(1000);
  }
}

/** Run a palette command by its label. */
async function palette(page, label) {
  await openPalette(page, label);
  await page.locator('.lm-CommandPalette-item.lm-mod-active').waitFor();
  await page.keyboard.press('Enter');
}

const browser = await chromium.launch({
  executablePath: env('CHROMIUM'),
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync'
  ]
});
const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: new URL(LAB_URL).origin });
const page = await context.newPage();
page.setDefaultTimeout(STEP_TIMEOUT);
const consoleErrors = [];
page.on('console', msg => {
  if (msg.type() === 'error') {
    consoleErrors.push(msg.text());
  }
});

try {
  // 1. JupyterLab loads with the extension; the sidebar opens from its tab.
  log(`open ${LAB_URL}lab`);
  await page.goto(`${LAB_URL}lab?token=${TOKEN}`);
  await page.locator('#jupyterlab-splash').waitFor({ state: 'detached', timeout: 120_000 });
  if (process.env.EXPECT_BUILD) {
    // The extension's entry point the page loaded is the one the test just built, not an older install.
    const loaded = await page.evaluate(() =>
      JSON.parse(document.getElementById('jupyter-config-data').textContent).federated_extensions
        .filter(e => e.name === 'jupyter-modelrunner').map(e => e.load));
    check(loaded.length === 1 && loaded[0] === process.env.EXPECT_BUILD,
      `JupyterLab loads the fresh build ${process.env.EXPECT_BUILD}, not ${loaded}`);
  }
  const tab = page.locator('.jp-SideBar.jp-mod-left li[data-id="jupyter-modelrunner-sidebar"]');
  await tab.waitFor();
  await tab.click();
  const sidebar = page.locator('#jupyter-modelrunner-sidebar');
  await sidebar.getByText('No models yet').waitFor();
  const status = page.locator('.jp-ModelRunner-status');
  await status.getByText('No model loaded').waitFor();
  await screenshot(page, 'sidebar-empty');

  // 1b. The Hugging Face cache's runnable models are listed with a Pull button each, and the pull box suggests the
  // Hub's models as one types (the test's HF cache and fake hub: HF_CACHE_MODEL, HUB_SUGGESTION).
  if (process.env.HF_CACHE_MODEL) {
    const cached = env('HF_CACHE_MODEL');
    const row = sidebar.locator(`section[aria-label="Hugging Face cache"] li[data-model="${cached}"]`);
    await row.waitFor();
    check((await row.textContent()).includes('Q4_K_M'), `the cache row shows the quantization: ${await row.textContent()}`);
    await row.getByRole('button', { name: `Pull ${cached}` }).waitFor();
    const input = sidebar.locator('.jp-ModelRunner-input');
    await input.fill('tiny-gg');
    const suggested = env('HUB_SUGGESTION');
    const suggestion = sidebar.locator(`.jp-ModelRunner-suggestions li[data-model="${suggested}"]`);
    await suggestion.waitFor();
    check((await suggestion.textContent()).includes('downloads'), 'a suggestion shows its downloads');
    await screenshot(page, 'hf-cache-and-hub-suggestions', sidebar);
    await suggestion.locator('button').click();
    check((await input.inputValue()) === suggested, 'picking a suggestion fills the pull box');
    await sidebar.locator('.jp-ModelRunner-suggestions').waitFor({ state: 'detached' });
    await input.fill('');
    log('Hugging Face cache listed; the pull box suggests from the Hub');
  }

  // 2. The commands are in the palette.
  await openPalette(page, 'Model Runner');
  for (const label of ['Pull model…', 'Unload all', 'Open sidebar']) {
    await page.locator('.lm-CommandPalette-item', { hasText: label }).first().waitFor();
  }
  await screenshot(page, 'palette');
  await page.keyboard.press('Escape');
  log('palette lists Pull model…, Unload all, Open sidebar');

  // 3. The palette's Pull model… asks for a reference; a failed pull shows the server's message inline.
  await palette(page, 'Pull model…');
  const dialog = page.locator('.jp-Dialog');
  await dialog.locator('input').fill('ai/does-not-exist');
  await dialog.locator('.jp-Dialog-button.jp-mod-accept').click();
  const input = sidebar.getByLabel('Model to pull');
  const pullError = sidebar.locator('.jp-ModelRunner-pullStatus.jp-mod-error .jp-ModelRunner-error');
  await pullError.waitFor();
  const errorText = (await pullError.textContent()) ?? '';
  check(/does-not-exist/.test(errorText), `the pull error names the model: ${errorText}`);
  log(`pull error shown: ${errorText.slice(0, 120)}`);
  await screenshot(page, 'pull-error');

  // 4a. Through a slow registry proxy the progress is visibly partial; Cancel stops the pull and says so.
  if (process.env.SLOW_MODEL) {
    await input.fill(process.env.SLOW_MODEL);
    await input.press('Enter');
    const pct = sidebar.locator('.jp-ModelRunner-pullPercent');
    await page.waitForFunction(() => {
      const value = Number(document.querySelector('.jp-ModelRunner-pullPercent')?.getAttribute('data-percent'));
      return value > 0 && value < 100;
    });
    const partial = await pct.getAttribute('data-percent');
    await screenshot(page, 'pull-in-progress');
    await sidebar.getByRole('button', { name: /^Cancel pulling / }).click();
    await sidebar.locator('.jp-ModelRunner-pullStatus.jp-mod-cancelled').waitFor();
    const said = (await sidebar.locator('.jp-ModelRunner-pullStatus .jp-ModelRunner-message').textContent()) ?? '';
    check(/Cancelled/.test(said), `the cancelled pull says so: ${said}`);
    await screenshot(page, 'pull-cancelled');
    log(`cancelled at ${partial} %: ${said}`);
  }

  // 4. Pull the tiny model: progress streams to 100 %, the model appears with its engine.
  // Every percentage the page shows, recorded in the page as React renders it.
  await page.evaluate(() => {
    const seen = (window.__pullPercents = []);
    new MutationObserver(() => {
      const value = document.querySelector('.jp-ModelRunner-pullPercent')?.getAttribute('data-percent');
      if (value && seen[seen.length - 1] !== value) {
        seen.push(value);
      }
    }).observe(document.getElementById('jupyter-modelrunner-sidebar'), {
      subtree: true, childList: true, attributes: true, characterData: true
    });
  });
  await input.fill(MODEL);
  await input.press('Enter');
  const percent = sidebar.locator('.jp-ModelRunner-pullPercent');
  const deadline = Date.now() + STEP_TIMEOUT;
  while (!(await sidebar.locator('.jp-ModelRunner-pullStatus.jp-mod-success').count())) {
    check(Date.now() < deadline, 'the pull finished in time');
    check(!(await sidebar.locator('.jp-ModelRunner-pullStatus.jp-mod-error').count()), 'the pull did not fail');
    await page.waitForTimeout(50);
  }
  check((await percent.getAttribute('data-percent')) === '100', 'the total reached 100 %');
  const layers = sidebar.locator('.jp-ModelRunner-layer');
  check((await layers.count()) >= 1, 'per-layer progress is listed');
  for (const bar of await layers.locator('[role="progressbar"]').all()) {
    check((await bar.getAttribute('aria-valuenow')) === '100', 'every layer reached 100 %');
  }
  const seen = await page.evaluate(() => window.__pullPercents);
  check(seen[seen.length - 1] === '100', `the percentage ended at 100: ${seen}`);
  log(`pull done; percentages shown: ${seen.join(', ')}; ` +
      `${await layers.count()} layers`);
  const row = sidebar.locator(`.jp-ModelRunner-model[data-model$="${MODEL}:latest"]`);
  await row.waitFor();
  const engine = (await row.locator('.jp-ModelRunner-engine').textContent()) ?? '';
  check(engine.includes('llama.cpp'), `the model shows the engine that runs it: ${engine}`);
  check((await row.getAttribute('aria-selected')) === 'true', 'the pulled model is selected');
  await screenshot(page, 'pulled');

  // 5. Copy the OpenAI snippet, then insert a %%chat cell (a new notebook: none is open).
  const modelName = (await row.getAttribute('data-model')) ?? MODEL;
  await sidebar.getByRole('button', { name: 'Copy OpenAI snippet' }).click();
  await sidebar.getByText('Copied the OpenAI snippet').waitFor();
  const snippet = await page.evaluate(() => navigator.clipboard.readText());
  check(snippet.includes(`model="${modelName}"`) && snippet.includes('jupyter_modelrunner.base_url()'),
    `the clipboard holds the snippet:\n${snippet}`);
  log('OpenAI snippet copied');

  await sidebar.getByRole('button', { name: 'Insert %%chat cell' }).click();
  const notebook = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden)');
  await notebook.waitFor();
  const cells = notebook.locator('.jp-Cell');
  await page.waitForFunction(() => document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell').length >= 2);
  const sources = await cells.locator('.cm-content').allInnerTexts();
  check(sources[0].trim() === '%load_ext jupyter_modelrunner', `the first cell loads the extension: ${sources[0]}`);
  check(sources[1].startsWith(`%%chat ${modelName}`), `the second cell is the %%chat cell: ${sources[1]}`);
  log(`cells inserted: ${JSON.stringify(sources)}`);

  // 6. Run it once the kernel is up: the answer arrives (gibberish from a random-weight model) and the model is
  // loaded. The runner's row comes from the server's events: nothing polls for it in the meantime.
  await kernelIdle(page);
  await palette(page, 'Run All Cells');
  const output = notebook.locator('.jp-Cell').last().locator('.jp-OutputArea-output');
  await output.first().waitFor({ timeout: KERNEL_TIMEOUT });
  await page.waitForFunction(
    () => {
      const cells = document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell');
      const last = cells[cells.length - 1];
      const text = last?.querySelector('.jp-OutputArea')?.textContent ?? '';
      return text.trim().length > 0;
    },
    undefined,
    { timeout: KERNEL_TIMEOUT, polling: 250 }
  );
  // Finished: the prompt shows its execution count instead of [*] (the %%chat output streams in place).
  await page.waitForFunction(() => {
    const cells = document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell');
    const prompt = cells[cells.length - 1]?.querySelector('.jp-InputPrompt')?.textContent ?? '';
    return /\[\d+\]/.test(prompt);
  }, undefined, { timeout: KERNEL_TIMEOUT, polling: 250 });
  const answer = ((await output.allInnerTexts()).join('\n')).trim();
  check(!/Traceback|Error|UsageError/.test(answer), `the cell ran without an error:\n${answer}`);
  // The magic ends its answer with the engine that produced it.
  check(/llama\.cpp/.test(answer), `the %%chat answer names its engine:\n${answer}`);
  log(`answer (${answer.length} characters): ${answer.slice(0, 80).replace(/\n/g, ' ')}…`);

  // Loaded and ready: `name · engine` (while it loads, a spinner and `Loading name (engine)…`).
  await status.filter({ hasText: `${MODEL}:latest · llama.cpp` }).waitFor({ timeout: 30_000 });
  const statusText = (await status.textContent()) ?? '';
  const runner = sidebar.locator('.jp-ModelRunner-runner').filter({ hasText: MODEL });
  await runner.waitFor();
  await runner.getByText(/unloads in \d+:\d\d/).waitFor();
  log(`status bar: ${statusText}`);
  await screenshot(page, 'chat-and-status-bar');
  await screenshot(page, 'light-theme-sidebar', sidebar);

  // 7. The runner's log on demand.
  await runner.getByRole('button', { name: /^Show the log of / }).click();
  const logs = runner.locator('.jp-ModelRunner-logs');
  await logs.waitFor();
  check(((await logs.textContent()) ?? '').trim().length > 0, 'the log shows lines');
  await screenshot(page, 'runner-logs');

  // The same view in the dark theme.
  await palette(page, 'JupyterLab Dark');
  await page.waitForFunction(() => document.body.dataset.jpThemeLight === 'false');
  await page.waitForTimeout(500);
  await screenshot(page, 'dark-theme');
  await screenshot(page, 'dark-theme-sidebar', sidebar);
  await palette(page, 'JupyterLab Light');
  await page.waitForFunction(() => document.body.dataset.jpThemeLight === 'true');

  // 8. Unloaded by another client (the REST API, as `jupyter modelrunner unload` does): the row goes within
  // seconds, from the server's `unloaded` event. Reads of engines/ps are held meanwhile, so nothing else can
  // have removed it (the fallback poll, a read when the panel shows).
  await withoutReads(page, async held => {
    const since = Date.now();
    await api('modelrunner/engines/unload', { method: 'POST', body: JSON.stringify({ models: [MODEL] }) });
    await runner.waitFor({ state: 'detached', timeout: EVENT_LATENCY });
    await status.getByText('No model loaded').waitFor({ timeout: EVENT_LATENCY });
    log(`unloaded through the API: the row went in ${Date.now() - since} ms (${held.length} reads of engines/ps held)`);
  });
  await screenshot(page, 'unloaded-elsewhere');

  // Loaded by another client: the row comes back from `loading` and `ready`, with its keep-alive countdown.
  await withoutReads(page, async held => {
    const since = Date.now();
    await api('modelrunner/engines/v1/chat/completions', {
      method: 'POST',
      body: JSON.stringify({ model: MODEL, max_tokens: 1, messages: [{ role: 'user', content: 'hi' }] })
    });
    await runner.getByText(/unloads in \d+:\d\d/).waitFor({ timeout: EVENT_LATENCY });
    await status.filter({ hasText: `${MODEL}:latest · llama.cpp` }).waitFor({ timeout: EVENT_LATENCY });
    log(`loaded through the API: the row is back in ${Date.now() - since} ms (${held.length} reads of engines/ps held)`);
  });

  // 9. Unload it from the sidebar: the runners view and the status bar empty.
  await runner.getByRole('button', { name: /^Unload / }).click();
  await runner.waitFor({ state: 'detached' });
  await status.getByText('No model loaded').waitFor();
  log('unloaded');
  await screenshot(page, 'unloaded');

  // 10. Delete it, confirming in the dialog: by keyboard (focus the row, Enter selects; Enter on Delete).
  await row.focus();
  if ((await row.getAttribute('aria-selected')) !== 'true') {
    await page.keyboard.press('Enter');
  }
  check((await row.getAttribute('aria-selected')) === 'true', 'Enter selects the focused model');
  await sidebar.getByRole('button', { name: `Delete ${modelName}` }).focus();
  await page.keyboard.press('Enter');
  await dialog.waitFor();
  await screenshot(page, 'delete-confirm');
  await dialog.locator('.jp-Dialog-button.jp-mod-warn').click();
  await row.waitFor({ state: 'detached' });
  await sidebar.getByText('No models yet').waitFor();
  log('deleted');
  await screenshot(page, 'deleted');

  // 11. Ask a vision model about a picture: right-click it in the file browser. The %%chat cell names the model
  // that can see it (one the user packaged with its projector, as `package --mmproj` does) and the file as the
  // notebook's kernel finds it.
  if (process.env.VISION_MODEL && process.env.IMAGE) {
    await api('modelrunner/models/package', {
      method: 'POST',
      body: JSON.stringify({
        tag: process.env.VISION_MODEL,
        gguf: [process.env.VISION_GGUF],
        mmproj: process.env.VISION_MMPROJ
      })
    });
    await page.locator('.jp-SideBar .lm-TabBar-tab[data-id="filebrowser"]').click();
    const file = page.locator('.jp-DirListing-item').filter({ hasText: process.env.IMAGE });
    await file.waitFor();
    await file.click({ button: 'right' });
    await page.locator('.lm-Menu-item').filter({ hasText: 'Ask a Vision Model About This Image' }).click();
    const expected = `%%chat ${process.env.VISION_MODEL}:latest --image '${process.env.IMAGE}'`;
    await until(`a cell "${expected}"`, async () =>
      (await notebook.locator('.jp-Cell .cm-content').allInnerTexts()).some(text => text.startsWith(expected)));
    log(`vision cell inserted: ${expected}`);
    const count = await notebook.locator('.jp-Cell').count();
    await palette(page, 'Run Selected Cell');
    const visionCell = notebook.locator('.jp-Cell').nth(count - 1);
    await until('the vision answer, with its footer', async () =>
      /tiny-vision.*llama\.cpp/.test((await visionCell.locator('.jp-OutputArea').textContent()) ?? ''),
      { timeout: KERNEL_TIMEOUT });
    const seen = ((await visionCell.locator('.jp-OutputArea').textContent()) ?? '').trim();
    check(!/Traceback|Error/.test(seen), `the vision cell ran without an error:\n${seen}`);
    log(`vision answer: ${seen.slice(0, 80).replace(/\n/g, ' ')}…`);
    await screenshot(page, 'vision-chat');
    await tab.click(); // back from the file browser to the panel
    await sidebar.waitFor({ state: 'visible' });
  }

  // 12. The status-bar item opens the panel, by keyboard too.
  await tab.click(); // collapse the left area
  await sidebar.waitFor({ state: 'hidden' });
  await status.focus();
  await page.keyboard.press('Enter');
  await sidebar.waitFor({ state: 'visible' });
  log('the status-bar item opens the panel');

  const ours = consoleErrors.filter(text => /modelrunner/i.test(text));
  check(ours.length === 0, `no console errors from the extension:\n${ours.join('\n')}`);
  log('all steps passed');
} catch (err) {
  await screenshot(page, 'failure').catch(() => undefined);
  console.error(err);
  console.error(`console errors:\n${consoleErrors.join('\n')}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
