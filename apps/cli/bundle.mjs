// Bundles the compiled CLI into one file: Node resolves and loads one module instead of a
// few hundred, which halves `vmlb`'s start-up (a no-op build is mostly start-up).
import { build } from 'esbuild';

await build({
  entryPoints: ['dist/main.js'],
  outfile: 'dist/vmlb.mjs',
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: true,
  logLevel: 'warning',
  // Some dependencies are CommonJS and call require(): give the ESM bundle one.
  banner: { js: "import { createRequire as __vmlbCreateRequire } from 'node:module'; const require = __vmlbCreateRequire(import.meta.url);" },
});
