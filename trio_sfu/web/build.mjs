// Bundle the demo page and the client module with esbuild into dist/ (not committed).
// Run through scripts/build_web, which installs node_modules first when needed.
import { build } from 'esbuild';

const common = {
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: ['chrome111', 'firefox115', 'safari16'],
  sourcemap: 'linked',
  minify: true,
  legalComments: 'linked',
  logLevel: 'warning',
  // mediasoup-client's logging goes through the 'debug' package; keep it quiet by default.
  define: { 'process.env.NODE_ENV': '"production"' },
};

await Promise.all([
  build({ ...common, entryPoints: { demo: 'src/demo.mjs' }, outdir: 'dist' }),
  build({ ...common, entryPoints: { 'sfu-client': 'src/sfu-client.mjs' }, outdir: 'dist' }),
  build({ ...common, entryPoints: { demo: 'demo.css' }, outdir: 'dist', bundle: false }),
]);
