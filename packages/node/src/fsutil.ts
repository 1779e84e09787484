/** Atomic file and directory writes: a crash never leaves a half-written checkpoint behind. */
import { closeSync, existsSync, mkdirSync, openSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

/** Write a file via a temporary sibling and rename (atomic on POSIX file systems). */
export function writeFileAtomic(path: string, data: string | Uint8Array): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}`);
  try {
    writeFileSync(tmp, data);
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/**
 * Replace a whole directory atomically: `fill` writes into a fresh temporary directory, which is then
 * renamed into place; the old directory is moved aside first and removed last.
 */
export function writeDirAtomic(dir: string, fill: (tmpDir: string) => void): void {
  const parent = dirname(dir);
  mkdirSync(parent, { recursive: true });
  const tmp = join(parent, `.${basename(dir)}.tmp-${process.pid}-${Date.now()}`);
  mkdirSync(tmp);
  try {
    fill(tmp);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  const old = join(parent, `.${basename(dir)}.old-${process.pid}-${Date.now()}`);
  if (existsSync(dir)) renameSync(dir, old);
  renameSync(tmp, dir);
  rmSync(old, { recursive: true, force: true });
}

/**
 * Write several files into `dir` that belong together (e.g. an ONNX model and its external data): each
 * is written in full into a temporary sibling directory, then they are renamed into place in the order
 * given, so the last one (the file that points at the others) appears only once the others are whole.
 * A file's content is a list of chunks, written one after the other (no concatenated copy).
 */
export function writeFilesAtomic(dir: string, files: { name: string; chunks: Uint8Array[] }[]): void {
  mkdirSync(dir, { recursive: true });
  const tmp = join(dir, `.tmp-${process.pid}-${Date.now()}`);
  mkdirSync(tmp);
  try {
    for (const f of files) {
      const fd = openSync(join(tmp, f.name), 'w');
      try {
        for (const c of f.chunks) {
          let done = 0;
          while (done < c.byteLength) done += writeSync(fd, c, done, c.byteLength - done);
        }
      } finally {
        closeSync(fd);
      }
    }
    for (const f of files) renameSync(join(tmp, f.name), join(dir, f.name));
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}
