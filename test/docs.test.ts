/**
 * The repository's own documentation resolves: relative links and anchors in docs/*.md and the READMEs,
 * `docs/<page>.md#<anchor>` pointers in source comments, and the `reference` field of every registry
 * entry (scripts/check-docs.mjs does the file scan; `pnpm run docs` runs it before TypeDoc).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createDefaultRegistry } from '@moelab/node';
import { afterAll, describe, expect, it } from 'vitest';
import { anchorsOf, checkDocs, slug } from '../scripts/check-docs.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));

describe('documentation links', () => {
  it('every relative link, anchor and docs pointer in the repository resolves, and nothing cites notes outside it', () => {
    expect(checkDocs(root)).toEqual([]);
  });

  it("every registry entry's reference names an existing docs page and section; routers, experts and MoE layers have one", () => {
    const registry = createDefaultRegistry();
    const needsReference = new Set(['router', 'expert', 'ffn', 'attention']);
    const baselines = new Set(['ffn/dense', 'attention/mha']);
    for (const e of registry.list()) {
      const id = `${e.kind}/${e.name}`;
      if (needsReference.has(e.kind) && !baselines.has(id)) expect(e.reference, id).toMatch(/docs\/[\w-]+\.md/);
      for (const m of (e.reference ?? '').matchAll(/docs\/([\w-]+\.md)(?:#([\w-]+))?/g)) {
        const anchors = anchorsOf(join(root, 'docs', m[1]!));
        if (m[2]) expect(anchors.has(m[2]), `${id}: ${m[0]}`).toBe(true);
      }
    }
  });

  describe('the checker itself', () => {
    const dir = mkdtempSync(join(tmpdir(), 'moelab-docs-'));
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    it('uses TypeDoc heading slugs, numbering repeated headings', () => {
      expect(slug('Aux-loss-free bias balancing')).toBe('aux-loss-free-bias-balancing');
      expect(slug('Capacity and dropping')).toBe('capacity-and-dropping');
      expect(slug('sigma-MoE feed-forward')).toBe('sigma-moe-feed-forward');
      expect(slug('Why? (a note)')).toBe('why-a-note');
      writeFileSync(join(dir, 'twice.md'), '# T\n## Tests\ntext\n## Tests\n```\n## not a heading\n```\n');
      expect([...anchorsOf(join(dir, 'twice.md'))].sort()).toEqual(['t', 'tests', 'tests-1']);
    });

    it('reports a missing file, a missing anchor, a link out of the repository and a citation of the shared notes', () => {
      mkdirSync(join(dir, 'repo', 'docs'), { recursive: true });
      mkdirSync(join(dir, 'repo', 'packages', 'p', 'src'), { recursive: true });
      writeFileSync(join(dir, 'repo', 'README.md'), '# R\nSee [a](docs/a.md#intro), [gone](docs/gone.md) and [out](../elsewhere.md).\n');
      writeFileSync(join(dir, 'repo', 'docs', 'a.md'), '# A\n## Intro\nBack to [the top](#a) and [a typo](#intor). `[not](a-link.md)`\n');
      writeFileSync(
        join(dir, 'repo', 'packages', 'p', 'src', 'x.ts'),
        "// maths: docs/a.md#intro and docs/a.md#outro\nexport const reference = 'specs/routers.md R7';\n",
      );
      const problems = checkDocs(join(dir, 'repo'));
      expect(problems).toEqual([
        'README.md:2: docs/gone.md: docs/gone.md does not exist',
        'README.md:2: ../elsewhere.md points outside the repository',
        'docs/a.md:3: #intor: no heading with anchor #intor in docs/a.md',
        'packages/p/src/x.ts:1: docs/a.md#outro: no heading with anchor #outro in docs/a.md',
        'packages/p/src/x.ts:2: cites specs/routers.md, which is not part of the repository',
      ]);
    });
  });
});
