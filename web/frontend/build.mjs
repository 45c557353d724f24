// Bundles the dashboard into web/dist (`npm run bundle`), which the crate embeds and the
// repository keeps. Arguments: the front-end's source directory and the output directory; the
// dependencies are those `npm ci` installed next to this file.
import * as esbuild from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const [source, out] = process.argv.slice(2);
if (!source || !out) {
  console.error('usage: node build.mjs SOURCE_DIR OUT_DIR');
  process.exit(2);
}
mkdirSync(out, { recursive: true });
await esbuild.build({
  entryPoints: [join(source, 'src', 'main.js')],
  bundle: true,
  minify: true,
  sourcemap: false,
  target: ['es2020'],
  format: 'iife',
  outfile: join(out, 'app.js'),
  // The sources live outside the directory that holds node_modules.
  nodePaths: [join(dirname(fileURLToPath(import.meta.url)), 'node_modules')],
  logLevel: 'warning',
});
copyFileSync(join(source, 'src', 'index.html'), join(out, 'index.html'));
