/**
 * @moelab/node — moelab for Node: corpora, checkpoints on disk, native/GPU backend detection, the CLI.
 * @packageDocumentation
 */
export * from './corpus.js';
export * from './domains.js';
export * from './checkpoint.js';
export * from './hf-files.js';
export { type ExportFlags, type ExportFormat, exportFormats } from './export-formats/index.js';
export * from './fsutil.js';
export * from './backends.js';
export * from './registry.js';
export * from './presets.js';
export * from './run.js';
export * from './finetune-run.js';
export * from './adapter-checkpoint.js';
export * from './compare.js';
export * from './verify.js';
export * from './progress.js';
export * from './table.js';
export * from './sweep.js';
export * from './specialise.js';
export * from './calibration.js';
export { formatResults } from './recipe/results.js';
export {
  loadRecipeCorpus,
  prepareRecipe,
  readRecipeFile,
  type PreparedRecipe,
  type RecipeRunOptions,
  type RecipeRunResult,
  runRecipe,
  unitFingerprint,
} from './recipe/runner.js';
export { parseRecipe, type Phase, type Recipe, recipeSchema } from './recipe/schema.js';
export { lineage, planRecipe, type Unit } from './recipe/plan.js';
export type { RecipeRow } from './recipe/unit.js';
