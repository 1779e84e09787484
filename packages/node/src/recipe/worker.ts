/**
 * A recipe worker process (`runRecipe` with `workers > 1` forks one per run): it receives one unit id,
 * selects the backend, re-reads the recipe and corpus, trains the unit (its dependencies' rows are on
 * disk), and sends its row back.
 */
import { chooseBackend } from '../backends.js';
import { prepareRecipe } from './runner.js';
import { executeUnit, type RecipeRow, readRow } from './unit.js';

interface Request {
  recipe: unknown;
  baseDir: string;
  outDir: string;
  unit: string;
  fingerprint: string;
  backend: string;
  quiet: boolean;
}

process.once('message', async (req: Request) => {
  try {
    await chooseBackend(req.backend);
    const prepared = prepareRecipe(req.recipe, req.baseDir);
    const unit = prepared.units.find((u) => u.id === req.unit);
    if (!unit) throw new Error(`unknown unit ${req.unit}`);
    const rows = new Map<string, RecipeRow>();
    for (const d of unit.deps) {
      const row = readRow(req.outDir, d);
      if (!row) throw new Error(`run "${d}" has no row.json`);
      rows.set(d, row);
    }
    // Matched baselines read the rows of the whole reference pipeline, not only the direct dependencies.
    for (const u of prepared.units)
      if (!rows.has(u.id)) {
        const r = readRow(req.outDir, u.id);
        if (r) rows.set(u.id, r);
      }
    const row = executeUnit(unit, { ...prepared, outDir: req.outDir, rows, quiet: req.quiet, lineProgress: true }, req.fingerprint);
    process.send!({ ok: true, row }, () => process.exit(0));
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    process.send!({ ok: false, message }, () => process.exit(1));
  }
});
