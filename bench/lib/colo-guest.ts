/**
 * A tiny guest for COLO probes and measurements, from Debian packages on the host:
 * the cloud kernel (unpacked from its .deb, booted as PVH `vmlinux` when its
 * compressed payload can be cut out of the bzImage, else the bzImage itself) and an
 * initramfs holding only busybox-static with an init that keeps rewriting
 * memory and checking it:
 *
 *   SVM-READY                 once, before the loop
 *   SVM-OK <n> / SVM-BAD <n>  each pass (busy, the default): half of about `dirtyMiB` of
 *                             strings in one awk process rewritten, the other half (the
 *                             previous pass's) checked; idle: a random file checked once a second
 *
 * A checkpoint that loses dirty pages shows as SVM-BAD or a kernel oops in the secondary.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const COLO_GUEST_KERNEL_DEB = '/var/cache/apt/archives/linux-image-6.1.0-53-cloud-amd64_6.1.187-1_amd64.deb';

export interface ColoGuest {
  kernel: string;
  initrd: string;
  append: string;
  readyPattern: RegExp;
  /** Printed by a healthy guest on every pass. */
  alivePattern: RegExp;
  failPattern: RegExp;
  /** Removes the guest's files. */
  remove(): void;
}

/** Whether `buildColoGuest` can work here (the kernel .deb and a static busybox). */
export function coloGuestAvailable(kernelDeb = COLO_GUEST_KERNEL_DEB): boolean {
  return existsSync(kernelDeb) && existsSync('/bin/busybox') && isStatic('/bin/busybox');
}

function isStatic(path: string): boolean {
  try {
    return /statically linked|static-pie/.test(execFileSync('file', ['-L', path], { encoding: 'utf8' }));
  } catch {
    // No `file`: a static busybox has no PT_INTERP, so no "ld-linux" string near its start.
    return !readFileSync(path).subarray(0, 4096).includes('ld-linux');
  }
}

/** `busy` (default) or `idle`: see above. */
export function buildColoGuest(opts: { dirtyMiB?: number; kernelDeb?: string; mode?: 'busy' | 'idle' } = {}): ColoGuest {
  const dirtyMiB = opts.dirtyMiB ?? 8;
  const idle = opts.mode === 'idle';
  const dir = mkdtempSync(join(tmpdir(), 'svm-colo-guest-'));
  try {
    const deb = join(dir, 'deb');
    execFileSync('dpkg-deb', ['-x', opts.kernelDeb ?? COLO_GUEST_KERNEL_DEB, deb]);
    const bz = join(deb, 'boot', readdirSync(join(deb, 'boot')).find((f) => f.startsWith('vmlinuz-'))!);
    let kernel = vmlinuxFrom(bz, join(dir, 'vmlinux'));
    if (!kernel) {
      kernel = join(dir, 'vmlinuz');
      execFileSync('cp', [bz, kernel]);
    }

    const root = join(dir, 'root');
    for (const d of ['bin', 'proc', 'sys', 'dev', 'mnt']) mkdirSync(join(root, d), { recursive: true });
    execFileSync('cp', ['/bin/busybox', join(root, 'bin', 'busybox')]);
    // busy: one long-running awk keeps an array of about `dirtyMiB` of strings; pass p rewrites
    // every other entry with text naming p and checks the entries pass p-1 wrote. One process,
    // no context switch, so TCG's TLB keeps fast write entries to the same heap pages between
    // checkpoints: exactly where lost dirty tracking bites. A page the checkpoint failed to
    // carry over holds entries from an older pass, and the next check counts them.
    const entries = Math.max(1024, Math.round((dirtyMiB * 1024 * 1024) / 128));
    writeFileSync(join(root, 'busy.awk'), [
      'BEGIN {',
      '  pad = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"',
      `  n = ${entries}`,
      '  for (i = 0; i < n; i++) a[i] = "init"',
      '  for (p = 1; ; p++) {',
      '    h = p % 2; bad = 0',
      '    for (i = h; i < n; i += 2) a[i] = p "-" i pad',
      '    if (p > 1) for (i = 1 - h; i < n; i += 2) if (a[i] != (p - 1) "-" i pad) bad++',
      '    if (bad) print "SVM-BAD " p " " bad; else print "SVM-OK " p',
      '    fflush()',
      '  }',
      '}',
      '',
    ].join('\n'));
    const pass = idle
      ? ['  sleep 1', '  ok=1; [ "$(md5sum < /mnt/a)" = "$wa" ] || ok=0']
      : ['  awk -f /busy.awk', '  ok=0 # awk ended: it never should'];
    writeFileSync(join(root, 'init'), [
      '#!/bin/busybox sh',
      '/bin/busybox --install -s /bin',
      'mount -t proc proc /proc',
      'mount -t devtmpfs dev /dev 2>/dev/null',
      `mount -t tmpfs -o size=${dirtyMiB + 8}m tmpfs /mnt`,
      `dd if=/dev/urandom of=/mnt/a bs=1M count=${dirtyMiB} 2>/dev/null`,
      'wa=$(md5sum < /mnt/a)',
      'echo SVM-READY',
      'n=0',
      'while true; do',
      '  n=$((n + 1))',
      ...pass,
      '  if [ $ok = 1 ]; then echo SVM-OK $n; else echo SVM-BAD $n; fi',
      'done',
      '',
    ].join('\n'));
    chmodSync(join(root, 'init'), 0o755);
    const initrd = join(dir, 'initrd.cpio');
    execFileSync('sh', ['-c', `cd '${root}' && find . | cpio -o -H newc --quiet > '${initrd}'`]);
    rmSync(deb, { recursive: true, force: true });
    rmSync(root, { recursive: true, force: true });
    return {
      kernel,
      initrd,
      append: 'console=ttyS0 panic=-1 quiet rdinit=/init',
      readyPattern: /SVM-READY/,
      alivePattern: /SVM-OK \d+/,
      failPattern: /SVM-BAD|Kernel panic|Oops[:\s]|general protection fault|BUG: |Unable to handle kernel|segfault at/,
      remove: () => rmSync(dir, { recursive: true, force: true }),
    };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

/**
 * The uncompressed kernel (an ELF that QEMU boots through PVH, faster under TCG) cut out of a
 * bzImage: the boot header gives the payload's offset and length; its magic gives the format.
 * Undefined when that does not work (no tool, unknown format): boot the bzImage then.
 */
function vmlinuxFrom(bzImage: string, out: string): string | undefined {
  const img = readFileSync(bzImage);
  if (img.length < 0x250 || img.readUInt32LE(0x202) !== 0x53726448) return undefined; // "HdrS"
  const setupSects = img[0x1f1] || 4;
  const start = (setupSects + 1) * 512 + img.readUInt32LE(0x248);
  const payload = img.subarray(start, start + img.readUInt32LE(0x24c));
  const formats: Array<[number[], string[]]> = [
    [[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], ['xz', '-dc', '--single-stream']],
    [[0x28, 0xb5, 0x2f, 0xfd], ['zstd', '-dcq']],
    [[0x02, 0x21, 0x4c, 0x18], ['lz4', '-dcq']],
    [[0x1f, 0x8b], ['gzip', '-dc']],
  ];
  const hit = formats.find(([magic]) => payload.subarray(0, magic.length).equals(Buffer.from(magic)));
  if (!hit) return undefined;
  // Not the exit status: trailing bytes make some tools complain after a good stream. The ELF magic decides.
  const r = spawnSync(hit[1][0], hit[1].slice(1), { input: payload, maxBuffer: 1 << 30 });
  if (!r.stdout || !r.stdout.subarray(0, 4).equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) return undefined;
  writeFileSync(out, r.stdout);
  return out;
}
