import { defineConfig } from 'vitest/config';

// Integration tests ptrace real processes: run each test file in its own child process
// (ptrace requests must come from the thread that attached) and give them time.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    exclude: ['test/exclusive/**', 'node_modules/**'],
    pool: 'forks',
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    testTimeout: 120_000,
    hookTimeout: 120_000,
    teardownTimeout: 30_000,
  },
});
