/** Types of scripts/check-docs.mjs (the documentation link checker), for the tests that import it. */
export function slug(text: string): string;
export function anchorsOf(file: string): Set<string>;
export function markdownFiles(root: string): string[];
export function sourceFiles(root: string): string[];
export function checkDocs(root: string): string[];
