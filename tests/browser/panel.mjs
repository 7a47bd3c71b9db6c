// panel.mjs: drives backupmx's web panel in a real browser (Debian's /usr/bin/chromium through
// playwright-core; never a downloaded browser) for tests/e2e/test_panel.py.
//
//   node tests/browser/panel.mjs --base http://127.0.0.1:PORT --artefacts DIR
//
// Protocol: one JSON command a line on stdin, one JSON result a line on stdout, in order. The
// first line out is {"ok":true,"ready":true,"version":"<chromium>"} once the browser runs. A
// result is {"ok":true,...} or {"ok":false,"error":"..."}; a command never hangs: every
// Playwright wait is bounded (WAIT_MS) and a whole command is cut at COMMAND_MS. Diagnostics go
// to stderr. Commands (fields after the name):
//   open_login                        the login page                    -> url, error
//   login user password               sign in through the form          -> user, role | error
//   logout                            the Sign out button               -> url
//   goto hash                         open /#<hash>, wait for the view  -> state, url
//   dashboard_domains                 #/                                -> domains (names shown)
//   add_domain name primary           #/add, submit the form            -> mx_record, dns_check
//                                                                           | error (#form-error)
//   copy_mx                           press #copy-mx                    -> status, clipboard
//   domain domain                     #/domain/NAME                     -> state, queue_count,
//                                         primary_state, messages, outages, not_found, error
//   wait_queue_count domain count [timeout_ms]   on the domain page, no reload: waits for the
//                                     panel's own refresh to show count  -> queue_count, rows
//   flush domain                      press #flush                      -> status | error
//   delete_domain domain [accept]     press #delete-domain, confirm()   -> deleted, error, dialog
//   delete_message domain [id] [accept]   press a .delete-message       -> deleted, error
//   filter_messages domain [sender] [recipient] [state]   type into #filter-sender and
//                                     #filter-recipient, pick #filter-state (all|queued|held;
//                                     all by default), wait for the list to show them
//                                     -> filter (the list's query), messages, state
//   wait_refresh domain [timeout_ms]  on the domain page, no action: waits for the panel's own
//                                     next refresh  -> domain facts + filters (the inputs)
//   open_message domain id            press the id's .message-open, wait for #message
//                                     -> message (see `message`), url
//   message                           the open message view (#message) -> open, id, state,
//                                     facts, sender, recipients [{address, status,
//                                     last_reply}], headers, headers_box, history [{time,
//                                     result}], buttons (the visible ones), status, error
//   message_action action [accept]    press #message-<hold|release|bounce|delete> in the open
//                                     message, answer its confirm(), wait for the outcome
//                                     (held, queued, or the view closed and the row gone)
//                                     -> status, error, dialog, message, messages
//   viewport width height             resize the page
//   metrics                           scrollWidth, clientWidth, innerWidth (horizontal scroll?)
//   screenshot name [full_page]       DIR/<name>.png                    -> path
//   errors                            page errors, console errors, failed HTTP calls, dialogs,
//                                     requests that tried to leave the server's origin
//   api_calls [since]                 the panel's calls to /api/ so far (from index since):
//                                     calls [{method, url (path?query), csrf (header sent)}]
//   quit                              closes the browser and exits
// The browser runs in a fresh context (no cookies, no cache) and may only reach --base: every
// other request is aborted and listed by `errors`.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';

const WAIT_MS = 15000;
const COMMAND_MS = 45000;
const CHROMIUM = '/usr/bin/chromium';
const SIGNED_OUT = 'not signed in: the panel sent the browser to /login';

function parseArgs(argv) {
  const out = { base: '', artefacts: '' };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--base') out.base = argv[++i] || '';
    else if (argv[i] === '--artefacts') out.artefacts = argv[++i] || '';
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  if (!/^https?:\/\/[^/]+$/.test(out.base)) throw new Error('--base http://host:port is needed');
  return out;
}

function reply(obj) { process.stdout.write(JSON.stringify(obj) + '\n'); }
function log(...a) { process.stderr.write(`panel.mjs: ${a.join(' ')}\n`); }

const opts = parseArgs(process.argv.slice(2));
const base = opts.base;
const artefacts = opts.artefacts || path.join(process.cwd(), 'panel-artefacts');
const seen = { pageErrors: [], console: [], http: [], external: [], dialogs: [], api: [] };
let acceptDialogs = true;
let browser;
let page;

async function launch() {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: WAIT_MS,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({
    viewport: { width: 1400, height: 900 },
    serviceWorkers: 'block',
    acceptDownloads: false,
    locale: 'en-GB',
    timezoneId: 'UTC',
  });
  try {
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
  } catch (e) {
    log('no clipboard permission:', e.message);
  }
  const origin = new URL(base).origin;
  await context.route('**/*', route => {
    const url = route.request().url();
    if (url.startsWith('data:') || url.startsWith('blob:') || new URL(url).origin === origin) {
      return route.continue();
    }
    seen.external.push(url);
    return route.abort('blockedbyclient');
  });
  page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.setDefaultNavigationTimeout(WAIT_MS);
  page.on('pageerror', e => { seen.pageErrors.push(String(e && e.message || e)); });
  page.on('console', m => {
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) {
      seen.console.push(m.text());
    }
  });
  page.on('request', r => {
    const u = new URL(r.url());
    if (u.origin === origin && u.pathname.startsWith('/api/')) {
      seen.api.push({ method: r.method(), url: u.pathname + u.search,
        csrf: !!r.headers()['x-csrf-token'] });
    }
  });
  page.on('response', r => {
    if (r.status() >= 400) {
      seen.http.push(`${r.request().method()} ${new URL(r.url()).pathname} ${r.status()}`);
    }
  });
  page.on('dialog', d => {
    seen.dialogs.push(`${d.type()}: ${d.message()}`);
    (acceptDialogs ? d.accept() : d.dismiss()).catch(() => {});
  });
}

// --- helpers ----------------------------------------------------------------------------

function pathname() { return new URL(page.url()).pathname; }

async function viewGen() {
  if (pathname() !== '/') return -1;
  return page.evaluate(() => Number(document.getElementById('view')?.dataset.gen || -1))
    .catch(() => -1);
}

// Opens the panel at #<hash> and waits until the view has loaded (or failed, or is not found).
async function open(hash) {
  const before = await viewGen();
  const cur = page.url().startsWith(base) ? new URL(page.url()) : null;
  if (!cur || cur.pathname !== '/') {
    await page.goto(`${base}/${hash}`, { waitUntil: 'domcontentloaded' });
  } else if (cur.hash !== hash) {
    await page.evaluate(h => { location.hash = h; }, hash);
  } else {
    await page.evaluate(() => { window.dispatchEvent(new HashChangeEvent('hashchange')); });
  }
  if (pathname() === '/login') throw new Error(SIGNED_OUT);
  await page.waitForFunction(b => {
    const v = document.getElementById('view');
    return location.pathname === '/login'
      || (v && Number(v.dataset.gen || 0) > b && v.dataset.state !== 'loading');
  }, before > 0 && cur && cur.pathname === '/' ? before : 0, { timeout: WAIT_MS });
  if (pathname() === '/login') throw new Error(SIGNED_OUT);
  return page.$eval('#view', v => v.dataset.state);
}

async function onDomainPage(domain) {
  const hash = `#/domain/${encodeURIComponent(domain)}`;
  const cur = new URL(page.url());
  const here = cur.pathname === '/' && cur.hash === hash
    && await page.$eval('#view', v => v.dataset.state).catch(() => '') === 'ready';
  const st = here ? 'ready' : await open(hash);
  if (st !== 'ready') throw new Error(`domain page of ${domain} is ${st}: ${await pageError()}`);
}

async function text(sel) {
  const h = await page.$(sel);
  return h ? (await h.textContent() || '').trim() : null;
}

async function pageError() {
  return (await text('#not-found-detail')) || (await text('#page-error')) || '';
}

async function domainFacts() {
  return page.evaluate(() => {
    const t = s => { const n = document.querySelector(s); return n ? n.textContent.trim() : null; };
    const rows = [...document.querySelectorAll('#queue-table tr.message')];
    return {
      state: document.getElementById('view').dataset.state,
      queue_count: t('#queue-count') === null ? null : Number(t('#queue-count')),
      primary_state: t('#primary-state'),
      messages: rows.map(r => ({
        id: r.dataset.id,
        cells: Object.fromEntries([...r.cells].filter(c => c.dataset.label)
          .map(c => [c.dataset.label.toLowerCase().replace(/ /g, '_'), c.textContent.trim()])),
      })),
      outages: document.querySelectorAll('#outages tr.outage').length,
      recipients_warning: t('#recipients-warning'),
      not_found: t('#not-found'),
      error: t('#not-found-detail') || t('#page-error') || '',
      loads: Number(document.getElementById('view').dataset.loads || 0),
    };
  });
}

// Clears the action messages, runs act(), waits for one of them to say something; or, with
// until 'left', for the panel to leave the page (a deleted domain); 'now': no wait (dismissed).
async function actionOutcome(act, until) {
  await page.evaluate(() => {
    for (const id of ['action-status', 'action-error']) {
      const n = document.getElementById(id);
      if (n) n.textContent = '';
    }
  });
  await act();
  if (until !== 'now') {
    await page.waitForFunction(u => document.getElementById('action-status')?.textContent
      || document.getElementById('action-error')?.textContent
      || (u === 'left' && !location.hash.startsWith('#/domain/')), until || '');
  }
  return { status: (await text('#action-status')) || '',
    error: (await text('#action-error')) || '' };
}

// The filter query the panel shows in #queue-table[data-filter], for these filter values.
function filterQuery({ sender = '', recipient = '', state = 'all' }) {
  const p = new URLSearchParams();
  if (String(sender).trim()) p.set('sender', String(sender).trim());
  if (String(recipient).trim()) p.set('recipient', String(recipient).trim());
  if (state && state !== 'all') p.set('state', String(state));
  return p.toString();
}

async function messageFacts() {
  return page.evaluate(() => {
    const card = document.getElementById('message');
    const t = s => { const n = card?.querySelector(s); return n ? n.textContent.trim() : ''; };
    const visible = n => !!n && !n.closest('[hidden]') && n.getClientRects().length > 0;
    if (!card || card.hidden) return { open: false };
    const pre = document.getElementById('message-headers');
    const cells = (sel, keys) => [...card.querySelectorAll(`${sel} tbody tr`)].map(r =>
      Object.fromEntries(keys.map((k, i) => [k, (r.cells[i]?.textContent || '').trim()])));
    return {
      open: true,
      id: card.dataset.id || null,
      state: card.dataset.state || null,
      loads: Number(card.dataset.loads || 0),
      title: t('h2'),
      sender: t('#message-sender'),
      facts: Object.fromEntries([...card.querySelectorAll('dl.facts dt')].map(dt =>
        [dt.textContent.trim().toLowerCase().replace(/ /g, '_'),
          (dt.nextElementSibling?.textContent || '').trim()])),
      recipients: cells('#message-recipients', ['address', 'status', 'last_reply']),
      headers: pre && visible(pre) ? pre.textContent : '',
      headers_box: pre ? {
        tag: pre.tagName.toLowerCase(), scrollWidth: pre.scrollWidth,
        clientWidth: pre.clientWidth, scrollHeight: pre.scrollHeight,
        clientHeight: pre.clientHeight, overflowY: getComputedStyle(pre).overflowY,
        whiteSpace: getComputedStyle(pre).whiteSpace } : null,
      history: cells('#message-history', ['time', 'result']),
      buttons: ['hold', 'release', 'bounce', 'delete']
        .filter(b => visible(document.getElementById(`message-${b}`))),
      status: t('#message-status'),
      error: t('#message-error'),
    };
  });
}

// --- commands -----------------------------------------------------------------------------

const commands = {
  async open_login() {
    await page.goto(`${base}/login`, { waitUntil: 'domcontentloaded' });
    return { url: page.url(), error: (await text('#login-error')) || '' };
  },

  async login({ user, password }) {
    if (pathname() !== '/login') await commands.open_login();
    await page.fill('#user', String(user));
    await page.fill('#password', String(password));
    const nav = page.waitForEvent('framenavigated', { predicate: f => f === page.mainFrame() });
    await page.click('#login', { noWaitAfter: true });
    await nav;
    await page.waitForLoadState('domcontentloaded');
    if (pathname() === '/login') {
      return { ok: false, error: (await text('#login-error')) || 'login page again, no message',
        url: page.url() };
    }
    await page.waitForFunction(() => document.getElementById('whoami')?.textContent
      && document.getElementById('view')?.dataset.state !== 'loading');
    const who = await text('#whoami');
    const [u, role] = who.split('\u00b7').map(s => s.trim());
    return { user: u, role, url: page.url() };
  },

  async logout() {
    await page.click('#logout');
    await page.waitForURL(u => new URL(u).pathname === '/login');
    return { url: page.url() };
  },

  async goto({ hash }) {
    const st = await open(String(hash));
    return { state: st, url: page.url() };
  },

  async dashboard_domains() {
    const st = await open('#/');
    if (st !== 'ready') return { ok: false, error: `dashboard is ${st}: ${await pageError()}` };
    const domains = await page.$$eval('#domains tr.domain .domain-name',
      ns => ns.map(n => n.textContent.trim()));
    return { domains };
  },

  async add_domain({ name, primary }) {
    const st = await open('#/add');
    if (st !== 'ready') return { ok: false, error: `add page is ${st}` };
    await page.fill('#domain-name', String(name));
    await page.fill('#domain-primary', String(primary));
    await page.click('#add-domain');
    await page.waitForFunction(() => document.querySelector('#add-result #mx-record')
      || document.getElementById('form-error')?.textContent);
    const error = await text('#form-error');
    if (error) return { ok: false, error };
    // A slow DNS: the page asks again until the report is there (bounded here all the same).
    await page.waitForFunction(() => !document.querySelector('#dns-check[data-pending]'))
      .catch(() => {});
    const dnsCheck = await page.evaluate(() => ({
      pending: !!document.querySelector('#dns-check[data-pending]'),
      summary: document.getElementById('dns-summary')?.textContent.trim() || '',
      checks: [...document.querySelectorAll('#dns-check li.check')].map(li => ({
        check: li.dataset.check,
        level: li.querySelector('.badge')?.textContent.trim() || '',
        text: [...li.children].map(c => c.textContent.trim()).join(' '),
      })),
    }));
    return { mx_record: await text('#mx-record'), dns_check: dnsCheck };
  },

  async copy_mx() {
    await page.click('#copy-mx');
    await page.waitForFunction(() => document.getElementById('copy-status')?.textContent);
    const clipboard = await page.evaluate(() => navigator.clipboard.readText())
      .catch(e => `(clipboard not readable: ${e.message})`);
    const selected = await page.evaluate(() => String(window.getSelection()));
    return { status: await text('#copy-status'), clipboard, selected };
  },

  async domain({ domain }) {
    await open(`#/domain/${encodeURIComponent(String(domain))}`);
    return domainFacts();
  },

  async wait_queue_count({ domain, count, timeout_ms }) {
    await onDomainPage(String(domain));
    const want = Number(count);
    const limit = Math.min(Number(timeout_ms) || WAIT_MS, WAIT_MS);
    try {
      await page.waitForFunction(n => {
        const q = document.getElementById('queue-count');
        const rows = document.querySelectorAll('#queue-table tr.message').length;
        return q && Number(q.textContent.trim()) === n && (rows === n || (n > 50 && rows >= 50));
      }, want, { timeout: limit });
    } catch (e) {
      const f = await domainFacts();
      return { ...f, ok: false, error: `#queue-count did not become ${want} in ${limit} ms` };
    }
    const f = await domainFacts();
    return { ...f, rows: f.messages.length };
  },

  async flush({ domain }) {
    await onDomainPage(String(domain));
    const r = await actionOutcome(() => page.click('#flush'));
    return r.error ? { ok: false, ...r } : r;
  },

  async delete_domain({ domain, accept = true }) {
    await onDomainPage(String(domain));
    acceptDialogs = !!accept;
    const dialogs = seen.dialogs.length;
    try {
      const r = await actionOutcome(() => page.click('#delete-domain'), accept ? 'left' : 'now');
      return { deleted: !r.error && !(await page.$('#delete-domain')), error: r.error,
        dialog: seen.dialogs[dialogs] || null };
    } finally {
      acceptDialogs = true;
    }
  },

  async delete_message({ domain, id, accept = true }) {
    await onDomainPage(String(domain));
    const sel = id ? `#queue-table .delete-message[data-id="${CSS_escape(String(id))}"]`
      : '#queue-table .delete-message';
    const target = await page.$eval(sel, b => b.dataset.id);
    acceptDialogs = !!accept;
    const dialogs = seen.dialogs.length;
    try {
      const r = await actionOutcome(() => page.click(sel), accept ? '' : 'now');
      const gone = !(await page.$(`#queue-table tr.message[data-id="${CSS_escape(target)}"]`));
      return { id: target, deleted: !r.error && gone, error: r.error,
        dialog: seen.dialogs[dialogs] || null };
    } finally {
      acceptDialogs = true;
    }
  },

  async filter_messages({ domain, sender = '', recipient = '', state = 'all' }) {
    await onDomainPage(String(domain));
    const want = filterQuery({ sender, recipient, state });
    await page.fill('#filter-sender', String(sender));
    await page.fill('#filter-recipient', String(recipient));
    await page.selectOption('#filter-state', String(state));
    try {
      await page.waitForFunction(q => {
        const t = document.getElementById('queue-table');
        return t && t.dataset.filter === q;
      }, want);
    } catch (e) {
      const f = await domainFacts();
      return { ...f, ok: false, error: `the list did not show the filter ${want} in time`,
        filter: await page.$eval('#queue-table', t => t.dataset.filter).catch(() => null) };
    }
    return { ...(await domainFacts()), filter: want };
  },

  async wait_refresh({ domain, timeout_ms }) {
    await onDomainPage(String(domain));
    const limit = Math.min(Number(timeout_ms) || WAIT_MS, WAIT_MS);
    const before = await page.$eval('#view', v => Number(v.dataset.loads || 0));
    await page.waitForFunction(b => Number(document.getElementById('view').dataset.loads) > b,
      before, { timeout: limit });
    const filters = await page.evaluate(() => ({
      sender: document.getElementById('filter-sender')?.value ?? null,
      recipient: document.getElementById('filter-recipient')?.value ?? null,
      state: document.getElementById('filter-state')?.value ?? null,
      list: document.getElementById('queue-table')?.dataset.filter ?? null,
    }));
    return { ...(await domainFacts()), filters };
  },

  async open_message({ domain, id }) {
    await onDomainPage(String(domain));
    const sel = `#queue-table .message-open[data-id="${CSS_escape(String(id))}"]`;
    await page.click(sel);
    await page.waitForFunction(i => {
      const c = document.getElementById('message');
      return c && !c.hidden && c.dataset.id === i && c.dataset.state !== 'loading'
        && Number(c.dataset.loads) > 0;
    }, String(id));
    return { message: await messageFacts(), url: page.url() };
  },

  async message() {
    return messageFacts();
  },

  async message_action({ action, accept = true }) {
    if (!['hold', 'release', 'bounce', 'delete'].includes(action)) {
      throw new Error(`unknown message action ${action}`);
    }
    const id = await page.$eval('#message', c => (c.hidden ? '' : c.dataset.id || ''))
      .catch(() => '');
    if (!id) throw new Error('no message is open');
    const ids = ['message-status', 'message-error', 'action-status', 'action-error'];
    await page.evaluate(ns => {
      for (const n of ns) { const e = document.getElementById(n); if (e) e.textContent = ''; }
    }, ids);
    acceptDialogs = !!accept;
    const dialogs = seen.dialogs.length;
    try {
      await page.click(`#message-${action}`);
      if (accept) {
        await page.waitForFunction(([a, i]) => {
          if (document.getElementById('message-error')?.textContent
            || document.getElementById('action-error')?.textContent) return true;
          const c = document.getElementById('message');
          if (a === 'hold' || a === 'release') {
            return c && !c.hidden && c.dataset.id === i
              && c.dataset.state === (a === 'hold' ? 'held' : 'queued')
              && !!document.getElementById('message-status')?.textContent;
          }
          const row = [...document.querySelectorAll('#queue-table tr.message')]
            .some(r => r.dataset.id === i);
          return (!c || c.hidden) && !row
            && !!document.getElementById('action-status')?.textContent;
        }, [action, id]);
      }
      const text = async s => (await page.$eval(s, n => n.textContent.trim()).catch(() => ''));
      return {
        id,
        status: (await text('#message-status')) || (await text('#action-status')),
        error: (await text('#message-error')) || (await text('#action-error')),
        dialog: seen.dialogs[dialogs] || null,
        message: await messageFacts(),
        messages: (await domainFacts()).messages,
      };
    } finally {
      acceptDialogs = true;
    }
  },

  async viewport({ width, height }) {
    await page.setViewportSize({ width: Number(width), height: Number(height) });
    return { width: Number(width), height: Number(height) };
  },

  async metrics() {
    return page.evaluate(() => ({
      scrollWidth: document.documentElement.scrollWidth,
      clientWidth: document.documentElement.clientWidth,
      innerWidth: window.innerWidth,
      bodyScrollWidth: document.body ? document.body.scrollWidth : 0,
    }));
  },

  async screenshot({ name, full_page = true }) {
    if (!/^[\w.-]+$/.test(String(name))) throw new Error(`bad screenshot name ${name}`);
    mkdirSync(artefacts, { recursive: true });
    const file = path.join(artefacts, `${name}.png`);
    await page.screenshot({ path: file, fullPage: !!full_page, timeout: WAIT_MS });
    return { path: file };
  },

  async api_calls({ since = 0 }) {
    return { calls: seen.api.slice(Number(since) || 0), count: seen.api.length };
  },

  async errors() {
    return { page_errors: seen.pageErrors, console: seen.console, http: seen.http,
      external: seen.external, dialogs: seen.dialogs };
  },
};

function CSS_escape(s) { return s.replace(/["\\]/g, '\\$&'); }

async function run(cmd) {
  const fn = Object.hasOwn(commands, cmd.cmd) ? commands[cmd.cmd] : null;
  if (!fn) return { ok: false, error: `unknown command ${JSON.stringify(cmd.cmd)}` };
  let timer;
  const cut = new Promise((_, rej) => {
    timer = setTimeout(() => rej(new Error(`${cmd.cmd} took over ${COMMAND_MS} ms`)), COMMAND_MS);
  });
  try {
    const r = await Promise.race([fn(cmd), cut]);
    return { ok: true, ...r };
  } catch (e) {
    return { ok: false, error: String(e && e.message || e).split('\n')[0], url: page?.url() };
  } finally {
    clearTimeout(timer);
  }
}

async function quit(code) {
  try {
    if (browser) await Promise.race([browser.close(), new Promise(r => setTimeout(r, 10000))]);
  } finally {
    process.exit(code);
  }
}

for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(sig, () => quit(1));

try {
  await launch();
} catch (e) {
  reply({ ok: false, error: `cannot start ${CHROMIUM}: ${String(e && e.message || e)}` });
  await quit(1);
}
reply({ ok: true, ready: true, version: browser.version() });

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (!line.trim()) continue;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    reply({ ok: false, error: `not JSON: ${line.slice(0, 200)}` });
    continue;
  }
  if (cmd.cmd === 'quit') {
    reply({ ok: true });
    await quit(0);
  }
  log('>', cmd.cmd);
  reply(await run(cmd));
}
await quit(0);  // stdin closed: nobody is listening any more
