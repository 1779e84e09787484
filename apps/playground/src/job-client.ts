/**
 * A section's connection to its job worker (job-worker.ts): the worker starts on the first message, its
 * replies go to `onMessage`, and a worker that fails to load or throws reaches `onFailure` as one line.
 * The caller constructs the Worker (`create`) because Vite bundles a worker only from a literal
 * `new Worker(new URL(...), { ...static options })` at the call site.
 */
import type { FromJob, ToJob } from './job-protocol.js';

export class JobClient {
  private worker?: Worker;

  constructor(
    private readonly create: () => Worker,
    private readonly onMessage: (m: FromJob) => void,
    private readonly onFailure: (message: string) => void,
  ) {}

  /** Sends to the worker, starting it first if needed; `transfer` buffers are detached here. */
  send(msg: ToJob, transfer: Transferable[] = []): void {
    if (!this.worker) {
      this.worker = this.create();
      this.worker.onmessage = (e: MessageEvent<FromJob>) => this.onMessage(e.data);
      this.worker.onerror = (e) => this.onFailure(`worker failed: ${e.message}`);
    }
    this.worker.postMessage(msg, transfer);
  }

  /** Sends only to a worker already started (a stop request means nothing to a worker not yet running). */
  notify(msg: ToJob): void {
    this.worker?.postMessage(msg);
  }
}
