/**
 * The TypeScript examples of the package READMEs run against the real API: each ```ts block under a
 * README's "## Example" heading is written to a temporary module (with the workspace aliases of
 * vitest.config.ts resolving its `@moelab/*` imports) and imported, so a renamed export or a changed
 * signature fails here. `pnpm typecheck` does not see README code; this does.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it, vi } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'moelab-readme-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The ```ts blocks of the "## Example" section of a markdown file. */
function exampleBlocks(markdown: string): string[] {
  const start = markdown.indexOf('\n## Example\n');
  if (start < 0) return [];
  const next = markdown.indexOf('\n## ', start + 1);
  const section = markdown.slice(start, next < 0 ? undefined : next);
  return [...section.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);
}

// Training-length knobs are shortened so the suite stays quick; everything else runs as written.
const shorten = (code: string) =>
  code
    .replace(/steps: (\d+)/g, (_, n) => `steps: ${Math.min(3, Number(n))}`)
    .replace(/i < (\d+)/g, (_, n) => `i < ${Math.min(3, Number(n))}`)
    .replace(/'runs\/example\/checkpoint'/g, JSON.stringify(join(dir, 'checkpoint')));

const packages = ['core', 'routers', 'experts', 'attention', 'upcycle', 'finetune', 'node', 'interop', 'compress', 'kernels-wasm', 'kernels-cuda'];

describe('README examples', () => {
  for (const pkg of packages) {
    it(`packages/${pkg}/README.md: the example runs`, async () => {
      const blocks = exampleBlocks(readFileSync(join(root, 'packages', pkg, 'README.md'), 'utf8'));
      expect(blocks.length, 'an "## Example" section with a ```ts block').toBeGreaterThan(0);
      const log = vi.spyOn(console, 'log').mockImplementation(() => {});
      try {
        for (const [i, code] of blocks.entries()) {
          const file = join(dir, `${pkg}-${i}.ts`);
          writeFileSync(file, `${shorten(code)}\nexport {};\n`);
          await expect(import(/* @vite-ignore */ file), `example ${i + 1}`).resolves.toBeDefined();
        }
      } finally {
        log.mockRestore();
      }
    });
  }
});
