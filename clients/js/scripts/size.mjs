// Prints what each entry point costs a page: bundled with what it imports, minified, gzipped.
import { build } from 'esbuild';
import { gzipSync } from 'node:zlib';

const entries = {
  '@tidings/client': 'src/index.ts',
  '@tidings/client/react (the hooks alone: React and the client apart)': 'src/react.ts',
  '@tidings/client/publisher': 'src/publisher.ts',
};
for (const [name, entry] of Object.entries(entries)) {
  const out = await build({ entryPoints: [entry], bundle: true, minify: true, format: 'esm', write: false, external: ['react'] });
  const code = out.outputFiles[0].contents;
  const gzipped = gzipSync(code, { level: 9 }).length;
  console.log(`${name}: ${code.length} bytes minified, ${gzipped} bytes gzipped`);
}
