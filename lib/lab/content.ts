/**
 * The content both replicas serve (nginx document root and vsftpd anonymous
 * root). Primary and backup get byte-identical trees with identical mtimes,
 * so Last-Modified, ETag and FTP listings agree; a `ContentDivergence` makes
 * one byte of one file differ in one tree, for mismatch scenarios.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Every file and directory gets this mtime (nginx derives Last-Modified and ETag from it). */
export const LAB_CONTENT_MTIME = new Date('2024-01-02T03:04:05Z');

export const LAB_FILES = {
  hello: 'hello.txt',
  index: 'index.html',
  /** ~4 KiB of text lines: readable when a mismatch is shown. */
  lorem: 'lorem.txt',
  /** 100 KiB from a fixed-seed generator: spans many segments. */
  blob: 'blob.bin',
  notes: 'docs/notes.txt',
} as const;

export const LAB_DIRS = ['docs'] as const;

export const LAB_BLOB_BYTES = 100 * 1024;
const BLOB_SEED = 0x5eed1ab;

export interface ContentDivergence {
  /** Path relative to the root, e.g. `lorem.txt`. */
  readonly file: string;
  /** Byte offset within the file that differs. */
  readonly offset: number;
}

/** xorshift32 (Marsaglia 2003): the same bytes on every machine and Node version. */
export function fixedSeedBytes(length: number, seed = BLOB_SEED): Buffer {
  const out = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

function loremText(): string {
  const words = ['shadow', 'replica', 'primary', 'backup', 'segment', 'checkpoint', 'compare', 'release', 'window', 'stream'];
  const lines: string[] = [];
  for (let i = 0; lines.join('').length < 4000; i++) {
    const line = Array.from({ length: 8 }, (_, k) => words[(i * 7 + k * 3) % words.length]).join(' ');
    lines.push(`${String(i + 1).padStart(4, '0')} ${line}\n`);
  }
  return lines.join('');
}

export function labContent(): Map<string, Buffer> {
  return new Map<string, Buffer>([
    [LAB_FILES.hello, Buffer.from('hello from the shadowvm lab\n')],
    [LAB_FILES.index, Buffer.from('<!doctype html>\n<title>shadowvm lab</title>\n<p>A protected service.</p>\n')],
    [LAB_FILES.lorem, Buffer.from(loremText())],
    [LAB_FILES.blob, fixedSeedBytes(LAB_BLOB_BYTES)],
    [LAB_FILES.notes, Buffer.from('notes in a subdirectory\n')],
  ]);
}

/** Changes one byte, keeping text text (a printable byte stays printable). */
function divergentByte(original: number): number {
  if (original >= 0x20 && original < 0x7f) return original === 0x23 ? 0x25 : 0x23; // '#' or '%'
  return original ^ 0xff;
}

/**
 * Writes the content tree into `root` (created, mode 0755, root-owned as
 * vsftpd requires of an anonymous root it may not write to).
 */
export function writeLabContent(root: string, divergence?: ContentDivergence): void {
  fs.mkdirSync(root, { recursive: true, mode: 0o755 });
  for (const dir of LAB_DIRS) fs.mkdirSync(path.join(root, dir), { recursive: true, mode: 0o755 });
  const content = labContent();
  if (divergence) {
    const original = content.get(divergence.file);
    if (!original || divergence.offset < 0 || divergence.offset >= original.length) {
      throw new RangeError(`cannot diverge ${divergence.file} at ${divergence.offset}: no such file or offset in the lab content`);
    }
    const changed = Buffer.from(original);
    changed[divergence.offset] = divergentByte(changed[divergence.offset]);
    content.set(divergence.file, changed);
  }
  for (const [file, bytes] of content) {
    fs.writeFileSync(path.join(root, file), bytes, { mode: 0o644 });
  }
  // Directories last: writing a file updates its directory's mtime.
  for (const file of content.keys()) fs.utimesSync(path.join(root, file), LAB_CONTENT_MTIME, LAB_CONTENT_MTIME);
  for (const dir of [...LAB_DIRS].reverse()) fs.utimesSync(path.join(root, dir), LAB_CONTENT_MTIME, LAB_CONTENT_MTIME);
  fs.chmodSync(root, 0o755);
  fs.utimesSync(root, LAB_CONTENT_MTIME, LAB_CONTENT_MTIME);
}
