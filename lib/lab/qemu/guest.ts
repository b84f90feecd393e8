/**
 * The QEMU lab's guest, built on the host from Debian packages only and
 * cached: Debian's cloud kernel (the unpacked vmlinux for a direct PVH boot,
 * and the bzImage) and a gzip'd cpio initramfs with busybox-static (sh,
 * httpd + CGI), vsftpd with the libraries `ldd` lists, the virtio modules and
 * the content served.
 *
 *   kernel .deb ──dpkg-deb -x──► vmlinuz ──decompress──► vmlinux ─┐
 *   busybox-static, vsftpd(+libs), modules, /init, www ──cpio──►  ├─► <cache>/<key>/
 *                                                        initrd.gz┘
 *
 * The key is a hash of every input (the .deb, the binaries, the generated
 * text, the content), so a changed input builds a new image and an unchanged
 * one costs a hash. Cache root: $SHADOWVM_GUEST_CACHE, else
 * /var/cache/shadowvm/guest. The Debian kernel is never installed on the host.
 */
import { UserFacingError } from '../../errors';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { gzip } from 'node:zlib';
import { LogFn, noLog } from '../../control/logger';
import { LAB_CONTENT_MTIME, fixedSeedBytes, labContent } from '../content';
import { runAsync } from '../exec';
import { GUEST_ETC, GUEST_MODULES, GUEST_WWW, counterCgi, initScript, sessionCgi } from './guest-files';

/** Changes whenever the builder's way of building changes (part of the key). */
const BUILDER_VERSION = 'guest-builder-7';
export const DEFAULT_GUEST_CACHE = '/var/cache/shadowvm/guest';
export const GUEST_BIG_FILE = 'big.bin';
export const GUEST_BIG_BYTES = 4 * 1024 * 1024;
const BIG_SEED = 0xb16f11e;
/** Every file in the image gets this mtime, so HTTP headers and FTP listings never depend on build time. */
const IMAGE_MTIME = LAB_CONTENT_MTIME;

export class GuestBuildError extends UserFacingError {
  constructor(message: string) {
    super(`guest image: ${message}`);
    this.name = 'GuestBuildError';
  }
}

export interface GuestImage {
  /** Hash of every input; the cache directory's name. */
  readonly key: string;
  readonly dir: string;
  /** The uncompressed ELF kernel, booted directly through its PVH entry. */
  readonly vmlinux: string;
  /** Debian's compressed kernel (fallback boot). */
  readonly bzImage: string;
  readonly initrd: string;
  /** `uname -r` of the guest kernel, e.g. 6.1.0-53-cloud-amd64. */
  readonly kernelRelease: string;
  /** Whether this call built the image (false: found in the cache). */
  readonly built: boolean;
}

export interface GuestBuildOptions {
  /** Cache root; default $SHADOWVM_GUEST_CACHE or /var/cache/shadowvm/guest. */
  cacheDir?: string;
  /** A linux-image-*.deb to use; default: the newest cloud-amd64 one found, else `apt-get download`. */
  kernelDeb?: string;
  log?: LogFn;
}

/** Address settings passed on the kernel command line (see guest-files.ts). */
export interface GuestNet {
  ipv4: string;
  prefixLength: number;
  peerIpv4: string;
  peerMac: string;
  /** The guest's IPv6 address (`fd77::2/64`); absent: IPv6 off in the guest. */
  ipv6?: string;
  /** vsftpd's passive port range; default GUEST_FTP_PASV_PORTS. One port makes both replicas' 227 replies agree. */
  ftpPassivePorts?: { min: number; max: number };
}

/** What the guest serves over HTTP (/) and anonymous FTP: the netns lab's files plus a 4 MiB one. */
export function guestContent(): Map<string, Buffer> {
  const files = labContent();
  files.set(GUEST_BIG_FILE, fixedSeedBytes(GUEST_BIG_BYTES, BIG_SEED));
  return files;
}

/** The kernel command line for a guest with these addresses. */
export function guestCmdline(net: GuestNet): string {
  return [
    'console=ttyS0', 'quiet', 'loglevel=3', 'panic=-1', 'rdinit=/init', 'mitigations=off',
    'nokaslr', // the same layout on every boot: nothing about the guest depends on chance
    `svm.ip4=${net.ipv4}/${net.prefixLength}`, `svm.peer4=${net.peerIpv4}`, `svm.peermac=${net.peerMac}`,
    ...(net.ipv6 ? [`svm.ip6=${net.ipv6}`] : []),
    ...(net.ftpPassivePorts ? [`svm.pasv=${net.ftpPassivePorts.min}-${net.ftpPassivePorts.max}`] : []),
  ].join(' ');
}

export function guestCacheRoot(options: GuestBuildOptions = {}): string {
  return options.cacheDir ?? process.env.SHADOWVM_GUEST_CACHE ?? DEFAULT_GUEST_CACHE;
}

function sha256File(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

function newestCloudKernelDeb(dir: string): string | null {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return null;
  }
  const debs = names.filter((n) => /^linux-image-\d[^_]*-cloud-amd64_.*_amd64\.deb$/.test(n))
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  return debs.length ? path.join(dir, debs[debs.length - 1]) : null;
}

/** The kernel .deb: given, cached, in apt's archive, or downloaded (never installed). */
async function findKernelDeb(root: string, options: GuestBuildOptions, log: LogFn): Promise<string> {
  const given = options.kernelDeb ?? process.env.SHADOWVM_GUEST_KERNEL_DEB;
  if (given) {
    if (!fs.existsSync(given)) throw new GuestBuildError(`kernel package ${given} does not exist`);
    return given;
  }
  const debDir = path.join(root, 'debs');
  const found = newestCloudKernelDeb(debDir) ?? newestCloudKernelDeb('/var/cache/apt/archives');
  if (found) return found;
  fs.mkdirSync(debDir, { recursive: true });
  const cloudKernel = async (): Promise<string | undefined> => {
    const deps = await runAsync('apt-cache', ['depends', 'linux-image-cloud-amd64']).catch(() => '');
    return /Depends: (linux-image-\S+-cloud-amd64)/.exec(deps)?.[1];
  };
  let pkg = await cloudKernel();
  if (!pkg) {
    // A fresh machine may have no package lists yet.
    log('info', 'guest-apt-update', { why: 'apt-cache knows no linux-image-cloud-amd64' });
    await runAsync('apt-get', ['update', '-qq'], 300_000).catch((e: Error) => log('warn', 'guest-apt-update-failed', { error: e.message.split('\n')[0] }));
    pkg = await cloudKernel();
  }
  if (!pkg) throw new GuestBuildError('apt knows no linux-image-*-cloud-amd64 package (tried apt-get update): is a Debian mirror reachable?');
  log('info', 'guest-kernel-download', { package: pkg, dir: debDir });
  await runAsync('sh', ['-c', `cd '${debDir}' && apt-get -o APT::Sandbox::User=root download -q '${pkg}'`], 300_000);
  const got = newestCloudKernelDeb(debDir);
  if (!got) throw new GuestBuildError(`apt-get download ${pkg} left no .deb in ${debDir}`);
  return got;
}

/** Shared libraries of a dynamic executable, as ldd resolves them (absolute paths). */
async function libraryPaths(binary: string): Promise<string[]> {
  const out = await runAsync('ldd', [binary]);
  const libs: string[] = [];
  for (const line of out.split('\n')) {
    const m = /=>\s*(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
    if (m) libs.push(m[1]);
  }
  return libs;
}

async function assertStatic(binary: string): Promise<void> {
  try {
    await runAsync('ldd', [binary]);
  } catch {
    return; // "not a dynamic executable": what we want
  }
  throw new GuestBuildError(`${binary} is dynamically linked: install busybox-static (not busybox)`);
}

const COMPRESSIONS: ReadonlyArray<{ config: string; magic: Buffer; tool: string[] }> = [
  { config: 'CONFIG_KERNEL_LZ4', magic: Buffer.from([0x02, 0x21, 0x4c, 0x18]), tool: ['lz4', '-dc'] },
  { config: 'CONFIG_KERNEL_XZ', magic: Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), tool: ['xz', '-dc'] },
  { config: 'CONFIG_KERNEL_ZSTD', magic: Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), tool: ['zstd', '-dc'] },
  { config: 'CONFIG_KERNEL_GZIP', magic: Buffer.from([0x1f, 0x8b, 0x08]), tool: ['gzip', '-dc'] },
];

/**
 * The ELF kernel inside a bzImage: the compressed payload starts at the
 * method's magic (the config names the method). The decompressors complain
 * about the bytes that follow the payload; the ELF header decides success.
 */
async function extractVmlinux(bzImage: string, config: string, out: string): Promise<void> {
  const image = fs.readFileSync(bzImage);
  const method = COMPRESSIONS.find((c) => new RegExp(`^${c.config}=y$`, 'm').test(config));
  if (!method) throw new GuestBuildError(`${bzImage}: unknown kernel compression (no CONFIG_KERNEL_LZ4/XZ/ZSTD/GZIP=y)`);
  const at = image.indexOf(method.magic);
  if (at < 0) throw new GuestBuildError(`${bzImage}: no ${method.tool[0]} payload found`);
  const payload = `${out}.payload`;
  fs.writeFileSync(payload, image.subarray(at));
  await runAsync('sh', ['-c', `${method.tool.join(' ')} '${payload}' > '${out}' 2>/dev/null || true`], 120_000);
  fs.rmSync(payload);
  const head = Buffer.alloc(4);
  const fd = fs.openSync(out, 'r');
  fs.readSync(fd, head, 0, 4, 0);
  fs.closeSync(fd);
  if (!head.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]))) {
    throw new GuestBuildError(`${bzImage}: ${method.tool[0]} did not produce an ELF kernel (is the ${method.tool[0]} tool installed?)`);
  }
}

function writeFile(root: string, rel: string, content: string | Buffer, mode = 0o644): void {
  const file = path.join(root, rel);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, content, { mode });
  fs.chmodSync(file, mode);
}

function copyInto(root: string, hostPath: string, mode?: number): void {
  const dest = path.join(root, hostPath);
  fs.mkdirSync(path.dirname(dest), { recursive: true });
  fs.copyFileSync(fs.realpathSync(hostPath), dest);
  if (mode !== undefined) fs.chmodSync(dest, mode);
}

/** Every entry's mtime fixed, children before parents (a write inside a directory changes its mtime). */
function fixMtimes(dir: string): void {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) fixMtimes(p);
    if (!entry.isSymbolicLink()) fs.utimesSync(p, IMAGE_MTIME, IMAGE_MTIME);
    else fs.lutimesSync(p, IMAGE_MTIME, IMAGE_MTIME);
  }
  fs.utimesSync(dir, IMAGE_MTIME, IMAGE_MTIME);
}

interface Inputs {
  kernelDeb: string;
  busybox: string;
  vsftpd: string;
  vsftpdLibs: string[];
  key: string;
}

async function collectInputs(root: string, options: GuestBuildOptions, log: LogFn): Promise<Inputs> {
  const busybox = '/bin/busybox';
  const vsftpd = '/usr/sbin/vsftpd';
  for (const [bin, pkg] of [[busybox, 'busybox-static'], [vsftpd, 'vsftpd']]) {
    if (!fs.existsSync(bin)) throw new GuestBuildError(`${bin} is missing: install the Debian package ${pkg} (scripts/install-deps.sh)`);
  }
  await assertStatic(busybox);
  const kernelDeb = await findKernelDeb(root, options, log);
  const vsftpdLibs = await libraryPaths(vsftpd);
  const h = createHash('sha256');
  h.update(BUILDER_VERSION);
  for (const file of [kernelDeb, busybox, vsftpd, ...vsftpdLibs]) h.update(`\0${path.basename(file)}\0${sha256File(file)}`);
  h.update(initScript()).update(counterCgi()).update(sessionCgi());
  for (const [name, text] of Object.entries(GUEST_ETC)) h.update(`\0${name}\0${text}`);
  for (const [name, bytes] of guestContent()) h.update(`\0${name}\0`).update(bytes);
  return { kernelDeb, busybox, vsftpd, vsftpdLibs, key: h.digest('hex').slice(0, 16) };
}

interface Manifest {
  key: string;
  kernelRelease: string;
  kernelDeb: string;
}

function imageAt(dir: string, manifest: Manifest, built: boolean): GuestImage {
  return {
    key: manifest.key, dir, kernelRelease: manifest.kernelRelease, built,
    vmlinux: path.join(dir, 'vmlinux'), bzImage: path.join(dir, 'bzImage'), initrd: path.join(dir, 'initrd.gz'),
  };
}

/**
 * The guest image for the current inputs: from the cache, or built into it.
 * Concurrent builders each build in a private directory and rename it into
 * place; the first rename wins and the others use its result.
 */
export async function buildGuest(options: GuestBuildOptions = {}): Promise<GuestImage> {
  const log = options.log ?? noLog;
  const root = guestCacheRoot(options);
  fs.mkdirSync(root, { recursive: true });
  const inputs = await collectInputs(root, options, log);
  const dir = path.join(root, inputs.key);
  const manifestFile = path.join(dir, 'manifest.json');
  if (fs.existsSync(manifestFile)) {
    return imageAt(dir, JSON.parse(fs.readFileSync(manifestFile, 'utf8')) as Manifest, false);
  }
  const started = Date.now();
  const work = fs.mkdtempSync(path.join(root, `.build-${inputs.key}-`));
  try {
    const kernelTree = path.join(work, 'kernel');
    await runAsync('dpkg-deb', ['-x', inputs.kernelDeb, kernelTree], 120_000);
    const boot = path.join(kernelTree, 'boot');
    const vmlinuz = fs.readdirSync(boot).find((n) => n.startsWith('vmlinuz-'));
    if (!vmlinuz) throw new GuestBuildError(`${inputs.kernelDeb} holds no boot/vmlinuz-*`);
    const kernelRelease = vmlinuz.slice('vmlinuz-'.length);
    const config = fs.readFileSync(path.join(boot, `config-${kernelRelease}`), 'utf8');
    const out = path.join(work, 'out');
    fs.mkdirSync(out);
    fs.copyFileSync(path.join(boot, vmlinuz), path.join(out, 'bzImage'));
    await extractVmlinux(path.join(boot, vmlinuz), config, path.join(out, 'vmlinux'));

    const rootfs = path.join(work, 'rootfs');
    for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'proc', 'sys', 'dev', 'tmp', 'run', 'var/lib/svm', 'lib/modules']) {
      fs.mkdirSync(path.join(rootfs, d), { recursive: true });
    }
    fs.copyFileSync(inputs.busybox, path.join(rootfs, 'bin/busybox'));
    fs.chmodSync(path.join(rootfs, 'bin/busybox'), 0o755);
    const applets = (await runAsync(inputs.busybox, ['--list'])).split('\n').filter((a) => /^[a-z0-9_.[-]+$/.test(a) && a !== 'busybox');
    for (const applet of applets) fs.symlinkSync('busybox', path.join(rootfs, 'bin', applet));
    writeFile(rootfs, 'init', initScript(), 0o755);
    for (const mod of GUEST_MODULES) {
      const src = path.join(kernelTree, 'lib/modules', kernelRelease, mod);
      if (!fs.existsSync(src)) throw new GuestBuildError(`${inputs.kernelDeb} has no ${mod}`);
      fs.copyFileSync(src, path.join(rootfs, 'lib/modules', path.basename(mod)));
    }
    copyInto(rootfs, inputs.vsftpd, 0o755);
    for (const lib of inputs.vsftpdLibs) copyInto(rootfs, lib, 0o755);
    for (const [rel, text] of Object.entries(GUEST_ETC)) writeFile(rootfs, rel, text);
    const www = path.join(rootfs, GUEST_WWW.slice(1));
    for (const [rel, bytes] of guestContent()) writeFile(www, rel, bytes);
    writeFile(www, 'cgi-bin/counter', counterCgi(), 0o755);
    writeFile(www, 'cgi-bin/session', sessionCgi(), 0o755);
    fixMtimes(rootfs);

    const cpio = path.join(work, 'initrd.cpio');
    await runAsync('sh', ['-c', `cd '${rootfs}' && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible > '${cpio}'`], 120_000);
    fs.writeFileSync(path.join(out, 'initrd.gz'), await promisify(gzip)(fs.readFileSync(cpio), { level: 6 }));
    const manifest: Manifest = { key: inputs.key, kernelRelease, kernelDeb: path.basename(inputs.kernelDeb) };
    fs.writeFileSync(path.join(out, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
    try {
      fs.renameSync(out, dir);
    } catch (e) {
      if (!fs.existsSync(manifestFile)) throw e; // another builder won the race: use its image
    }
    log('info', 'guest-built', { key: inputs.key, kernel: kernelRelease, ms: Date.now() - started, dir });
    return imageAt(dir, manifest, true);
  } catch (e) {
    if (e instanceof GuestBuildError) throw e;
    throw new GuestBuildError((e as Error).message.split('\n')[0]);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}
