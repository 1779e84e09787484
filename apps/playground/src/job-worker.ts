/**
 * The worker of the Fine-tune and Compress sections (one per section): a fine-tuning run
 * (finetune.ts) trained step by step with progress, or one compression job (compress.ts), on the
 * backend the page chose, off the page's thread.
 */
import { resolveBackend, tf } from '@moelab/core';
import { registerBrowserBackends, setAllowSoftwareWebGL } from './backends.js';
import { compressInPage } from './compress.js';
import { PageFinetune } from './finetune.js';
import type { FromJob, JobFile, ToJob } from './job-protocol.js';
import { createPlaygroundRegistry } from './registry.js';

const scope = self as unknown as { postMessage(m: unknown, transfer?: Transferable[]): void; onmessage: ((e: MessageEvent<ToJob>) => void) | null };
const post = (m: FromJob, transfer?: Transferable[]) => scope.postMessage(m, transfer);

const registry = createPlaygroundRegistry();
let backendChosen = '';
let stopRequested = false;

async function useBackend(request: string): Promise<void> {
  registerBrowserBackends();
  setAllowSoftwareWebGL(request === 'webgl');
  if (backendChosen && (request === 'auto' || request === backendChosen)) return;
  const choice = await resolveBackend(request);
  backendChosen = choice.name;
  post({ type: 'backend', backend: tf.getBackend(), reason: choice.reason });
}

const uploaded = (files: JobFile[]) => files.map((f) => ({ name: f.name, bytes: new Uint8Array(f.bytes) }));

/** Copies into fresh buffers (transferable without detaching anything the job still holds). */
function transferable(files: { name: string; bytes: Uint8Array }[]): JobFile[] {
  return files.map((f) => ({ name: f.name, bytes: f.bytes.slice().buffer as ArrayBuffer }));
}

async function finetune(msg: Extract<ToJob, { type: 'finetune' }>): Promise<void> {
  await useBackend(msg.backend);
  stopRequested = false;
  post({ type: 'progress', phase: 'loading the base and measuring both domains' });
  const job = new PageFinetune(registry, {
    files: uploaded(msg.files),
    source: msg.source,
    method: msg.method,
    options: msg.options,
    target: msg.target,
    general: msg.general,
    train: msg.train,
  });
  try {
    post({ type: 'ft-ready', method: job.method, adapters: job.adapters, counts: job.counts, domains: job.domains, steps: job.steps });
    while (!job.done && !stopRequested) {
      const s = job.step();
      post({ type: 'ft-step', step: s.step, steps: job.steps, loss: s.loss });
      // Yield so that a stop message is handled between steps.
      await new Promise((r) => setTimeout(r, 0));
    }
    post({ type: 'progress', phase: 'measuring both domains after fine-tuning' });
    const domains = job.finish();
    const files = transferable(job.resultFiles());
    // The fine-tuned model for a run: adapters folded into the base where they can be (else why not).
    let runFiles: JobFile[] = [];
    let mergeBlocked: string | undefined;
    try {
      runFiles = transferable(job.mergedFiles());
    } catch (e) {
      mergeBlocked = (e as Error).message;
    }
    post(
      { type: 'ft-done', domains, steps: job.trainer.step, files, runFiles, mergeBlocked },
      [...files, ...runFiles].map((f) => f.bytes),
    );
  } finally {
    job.dispose();
  }
}

async function compress(msg: Extract<ToJob, { type: 'compress' }>): Promise<void> {
  await useBackend(msg.backend);
  const { files, runFiles, ...result } = compressInPage(registry, { files: uploaded(msg.files), method: msg.method, data: msg.data }, (phase) =>
    post({ type: 'progress', phase }),
  );
  const out = transferable(files);
  const run = transferable(runFiles);
  post(
    { type: 'compressed', result, files: out, runFiles: run },
    [...out, ...run].map((f) => f.bytes),
  );
}

let queue: Promise<void> = Promise.resolve();
scope.onmessage = (e) => {
  // A stop must not wait behind the run it stops.
  if (e.data.type === 'stop') {
    stopRequested = true;
    return;
  }
  const msg = e.data;
  queue = queue.then(() =>
    (msg.type === 'finetune' ? finetune(msg) : compress(msg)).catch((err) => {
      post({ type: 'error', message: (err as Error).message });
    }),
  );
};
