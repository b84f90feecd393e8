/**
 * Headless Chromium driven through the DevTools protocol over
 * `--remote-debugging-pipe` (fd 3: commands in, fd 4: replies and events
 * out, each message JSON ended by a NUL byte). No WebSocket, no npm package.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';

export const CHROMIUM = '/usr/bin/chromium';

/** Fails (never skips) without Chromium: install-deps installs Debian's `chromium`. */
export function requireChromium(what: string): void {
  if (!existsSync(CHROMIUM)) throw new Error(`${what} needs ${CHROMIUM} (Debian package chromium; scripts/install-deps.sh installs it)`);
}

interface Pending { resolve(v: Record<string, unknown>): void; reject(e: Error): void; method: string }
type EventWaiter = { method: string; sessionId?: string; resolve(params: Record<string, unknown>): void };

export class Chromium {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private waiters: EventWaiter[] = [];
  private buffered = '';
  private exited = false;

  private constructor(private readonly child: ChildProcess, private readonly profile: string, readonly stderr: string[]) {
    const out = child.stdio[4] as Readable;
    out.setEncoding('utf8');
    out.on('data', (chunk: string) => this.onData(chunk));
    child.on('exit', (code, signal) => {
      this.exited = true;
      const e = new Error(`chromium exited (${code ?? signal}): ${stderr.join('').slice(-500)}`);
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
    });
  }

  static async launch(viewport = { width: 1400, height: 1000 }): Promise<Chromium> {
    requireChromium('this test');
    const profile = mkdtempSync(join(tmpdir(), 'shadowvm-chromium-'));
    const child = spawn(CHROMIUM, [
      '--headless', '--remote-debugging-pipe', '--no-sandbox', '--disable-gpu', '--no-first-run', '--no-default-browser-check',
      '--disable-extensions', '--disable-background-networking', '--hide-scrollbars', '--mute-audio',
      `--user-data-dir=${profile}`, `--window-size=${viewport.width},${viewport.height}`, 'about:blank',
    ], { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] });
    const stderr: string[] = [];
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (c: string) => { if (stderr.length < 200) stderr.push(c); });
    const c = new Chromium(child, profile, stderr);
    await c.send('Browser.getVersion');
    return c;
  }

  /** A DevTools command; with `sessionId`, to that page. */
  send(method: string, params: Record<string, unknown> = {}, sessionId?: string): Promise<Record<string, unknown>> {
    if (this.exited) return Promise.reject(new Error(`chromium has exited; cannot send ${method}`));
    const id = this.nextId++;
    const msg = JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) });
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, method });
      (this.child.stdio[3] as Writable).write(`${msg}\0`);
    });
  }

  /** The next event `method` (of `sessionId`); register before causing it. */
  nextEvent(method: string, sessionId?: string, timeoutMs = 20_000): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${method} within ${timeoutMs} ms`)), timeoutMs);
      this.waiters.push({ method, sessionId, resolve: (p) => { clearTimeout(timer); resolve(p); } });
    });
  }

  /** Opens a page, loads `url` and resolves once its load event fired. */
  async open(url: string, viewport = { width: 1400, height: 1000 }): Promise<Page> {
    const { targetId } = await this.send('Target.createTarget', { url: 'about:blank' }) as { targetId: string };
    const { sessionId } = await this.send('Target.attachToTarget', { targetId, flatten: true }) as { sessionId: string };
    const page = new Page(this, sessionId);
    await page.send('Page.enable');
    await page.send('Emulation.setDeviceMetricsOverride', { width: viewport.width, height: viewport.height, deviceScaleFactor: 1, mobile: false });
    const loaded = this.nextEvent('Page.loadEventFired', sessionId);
    const nav = await page.send('Page.navigate', { url }) as { errorText?: string };
    if (nav.errorText) throw new Error(`could not load ${url}: ${nav.errorText}`);
    await loaded;
    return page;
  }

  async close(): Promise<void> {
    if (!this.exited) {
      const gone = new Promise<void>((r) => this.child.once('exit', () => r()));
      await this.send('Browser.close').catch(() => {});
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 5000);
      await gone;
      clearTimeout(timer);
    }
    rmSync(this.profile, { recursive: true, force: true });
  }

  private onData(chunk: string): void {
    this.buffered += chunk;
    let end: number;
    while ((end = this.buffered.indexOf('\0')) >= 0) {
      const text = this.buffered.slice(0, end);
      this.buffered = this.buffered.slice(end + 1);
      const msg = JSON.parse(text) as { id?: number; method?: string; params?: Record<string, unknown>; sessionId?: string; result?: Record<string, unknown>; error?: { message: string } };
      if (msg.id !== undefined) {
        const p = this.pending.get(msg.id);
        if (!p) continue;
        this.pending.delete(msg.id);
        if (msg.error) p.reject(new Error(`${p.method}: ${msg.error.message}`));
        else p.resolve(msg.result ?? {});
      } else if (msg.method) {
        const i = this.waiters.findIndex((w) => w.method === msg.method && (w.sessionId === undefined || w.sessionId === msg.sessionId));
        if (i >= 0) this.waiters.splice(i, 1)[0].resolve(msg.params ?? {});
      }
    }
  }
}

export class Page {
  constructor(private readonly browser: Chromium, readonly sessionId: string) {}

  send(method: string, params: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    return this.browser.send(method, params, this.sessionId);
  }

  /** Evaluates an expression in the page; its value (JSON-able). */
  async evaluate<T>(expression: string): Promise<T> {
    const r = await this.send('Runtime.evaluate', { expression, returnByValue: true, awaitPromise: true }) as { result: { value: T }; exceptionDetails?: { text: string; exception?: { description?: string } } };
    if (r.exceptionDetails) throw new Error(`in the page: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`);
    return r.result.value;
  }

  /** A real mouse click (pressed and released) at the centre of the first element matching `selector`. */
  async click(selector: string): Promise<void> {
    const box = await this.evaluate<{ x: number; y: number } | null>(`(() => {
      const e = document.querySelector(${JSON.stringify(selector)});
      if (!e) return null;
      e.scrollIntoView({ block: 'center' });
      const r = e.getBoundingClientRect();
      return { x: r.left + r.width / 2, y: r.top + r.height / 2 };
    })()`);
    if (!box) throw new Error(`nothing matches ${selector}`);
    await this.send('Input.dispatchMouseEvent', { type: 'mouseMoved', x: box.x, y: box.y });
    await this.send('Input.dispatchMouseEvent', { type: 'mousePressed', x: box.x, y: box.y, button: 'left', clickCount: 1 });
    await this.send('Input.dispatchMouseEvent', { type: 'mouseReleased', x: box.x, y: box.y, button: 'left', clickCount: 1 });
  }

  /** A PNG of the whole page. */
  async screenshot(): Promise<Buffer> {
    const r = await this.send('Page.captureScreenshot', { format: 'png', captureBeyondViewport: true }) as { data: string };
    return Buffer.from(r.data, 'base64');
  }
}

/** Width and height from a PNG's IHDR chunk; throws if `png` is not a PNG. */
export function pngSize(png: Buffer): { width: number; height: number } {
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  if (png.length < 33 || !png.subarray(0, 8).equals(signature) || png.toString('latin1', 12, 16) !== 'IHDR') throw new Error('not a PNG');
  return { width: png.readUInt32BE(16), height: png.readUInt32BE(20) };
}
