// The slice of vitest's API that kernels-cuda's tests use (describe / it / skipIf / expect and the
// matchers they call), so that scripts/device-check.sh can run the same test files, bundled, on a
// GPU machine that has Node but no node_modules. runAll() runs the collected tests in order and
// returns a summary; a failed expectation throws with the matcher and the values.
const tests = [];
let prefix = [];
let skipping = false;

export function describe(title, fn) {
  const saved = [prefix, skipping];
  prefix = [...prefix, title];
  try {
    fn();
  } finally {
    [prefix, skipping] = saved;
  }
}
describe.skipIf = (cond) => (title, fn) => {
  const saved = skipping;
  skipping = skipping || !!cond;
  try {
    describe(title, fn);
  } finally {
    skipping = saved;
  }
};
export function it(title, fn) {
  tests.push({ name: [...prefix, title].join(' > '), fn, skip: skipping });
}
it.skipIf = (cond) => (title, fn) => tests.push({ name: [...prefix, title].join(' > '), fn, skip: skipping || !!cond });
export const test = it;

const show = (v) => {
  try {
    return JSON.stringify(v);
  } catch {
    return String(v);
  }
};
function deepEqual(a, b) {
  if (Object.is(a, b)) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  return ka.length === kb.length && ka.every((k) => deepEqual(a[k], b[k]));
}

export function expect(actual, message = '') {
  const fail = (what) => {
    throw new Error(`${message ? `${message}: ` : ''}expected ${show(actual)} ${what}`);
  };
  const m = {
    toBe: (v) => Object.is(actual, v) || fail(`to be ${show(v)}`),
    toEqual: (v) => deepEqual(actual, v) || fail(`to equal ${show(v)}`),
    toBeDefined: () => actual !== undefined || fail('to be defined'),
    toBeNull: () => actual === null || fail('to be null'),
    toBeGreaterThan: (v) => actual > v || fail(`to be greater than ${v}`),
    toBeCloseTo: (v, digits = 2) => Math.abs(actual - v) < 10 ** -digits / 2 || fail(`to be close to ${v} (${digits} digits)`),
    toMatch: (re) => (typeof re === 'string' ? actual.includes(re) : re.test(actual)) || fail(`to match ${re}`),
    toContain: (v) => actual.includes(v) || fail(`to contain ${show(v)}`),
    toThrow: (re) => {
      try {
        actual();
      } catch (e) {
        if (re === undefined || (typeof re === 'string' ? e.message.includes(re) : re.test(e.message))) return true;
        throw new Error(`expected the error to match ${re}, got: ${e.message}`);
      }
      throw new Error(`expected a throw${re ? ` matching ${re}` : ''}`);
    },
  };
  m.resolves = {
    toBeDefined: async () => {
      const v = await actual;
      return v !== undefined || fail('to resolve to a value');
    },
  };
  return m;
}
export const vi = { spyOn: () => ({ mockImplementation: () => ({ mockRestore() {} }) }) };

/** Runs every collected test in order; returns { passed, failed, skipped, results }. */
export async function runAll(log = (l) => console.log(l)) {
  const results = [];
  for (const t of tests) {
    if (t.skip) {
      results.push({ name: t.name, status: 'skipped' });
      log(`- skipped ${t.name}`);
      continue;
    }
    const start = performance.now();
    try {
      await t.fn();
      results.push({ name: t.name, status: 'passed', ms: Math.round(performance.now() - start) });
      log(`ok ${t.name} (${Math.round(performance.now() - start)} ms)`);
    } catch (e) {
      results.push({ name: t.name, status: 'failed', ms: Math.round(performance.now() - start), error: String(e?.message ?? e).split('\n')[0] });
      log(`FAIL ${t.name}: ${String(e?.message ?? e).split('\n')[0]}`);
    }
  }
  const count = (s) => results.filter((r) => r.status === s).length;
  return { passed: count('passed'), failed: count('failed'), skipped: count('skipped'), results };
}
