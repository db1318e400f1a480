import { defineConfig } from 'vitest/config';

// Tests that look at the whole machine and must not see the deliberately tampered targets of the
// other test files: run alone, after them (`npm test` runs both configurations).
export default defineConfig({
  test: {
    include: ['test/exclusive/**/*.test.ts'],
    pool: 'forks',
    poolOptions: { forks: { maxForks: 1, minForks: 1 } },
    testTimeout: 600_000,
    hookTimeout: 120_000,
  },
});
