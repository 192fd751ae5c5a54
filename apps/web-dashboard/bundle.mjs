/**
 * Bundles the browser app (src/ui) into dist/public: assets/app-HASH.js and app-HASH.css
 * (content-hashed, so the server may cache them for a year) and index.html (never cached)
 * naming them. `node bundle.mjs` (the package's build runs it after tsc); `--dev` skips
 * minification.
 */
import { build } from 'esbuild';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.join(here, 'dist/public');

export async function bundle({ minify = true } = {}) {
  await rm(out, { recursive: true, force: true });
  await mkdir(path.join(out, 'assets'), { recursive: true });
  const result = await build({
    absWorkingDir: here,
    entryPoints: { app: 'src/ui/main.tsx' },
    bundle: true,
    format: 'esm',
    target: ['chrome111', 'firefox115', 'safari16.4'],
    jsx: 'automatic',
    jsxImportSource: 'preact',
    outdir: path.join(out, 'assets'),
    entryNames: '[name]-[hash]',
    assetNames: '[name]-[hash]',
    minify,
    sourcemap: 'linked',
    legalComments: 'none',
    metafile: true,
    logLevel: 'warning',
  });
  const outputs = Object.keys(result.metafile.outputs).map((f) => path.relative(out, path.resolve(here, f)).split(path.sep).join('/'));
  const js = outputs.find((f) => /^assets\/app-[^/]+\.js$/.test(f));
  const css = outputs.find((f) => /^assets\/app-[^/]+\.css$/.test(f));
  if (!js || !css) throw new Error(`bundle.mjs: esbuild wrote no app js/css (${outputs.join(', ')})`);
  const html = await readFile(path.join(here, 'src/ui/index.html'), 'utf8');
  const tags = `<link rel="stylesheet" href="/${css}" />\n    <script type="module" src="/${js}"></script>`;
  const marker = /<!-- bundle\.mjs[^>]*-->/;
  if (!marker.test(html)) throw new Error('bundle.mjs: src/ui/index.html has no <!-- bundle.mjs … --> marker for the tags');
  await writeFile(path.join(out, 'index.html'), html.replace(marker, tags));
  return { js, css, bytes: Object.values(result.metafile.outputs).reduce((n, o) => n + o.bytes, 0) };
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const r = await bundle({ minify: !process.argv.includes('--dev') });
  process.stdout.write(`dashboard bundled into ${path.relative(process.cwd(), out) || '.'}: ${r.js}, ${r.css} (${(r.bytes / 1024).toFixed(0)} KiB with source maps)\n`);
}
