// Validates docs/asyncapi.yaml with the official @asyncapi/parser.
// Usage: node scripts/check-asyncapi.mjs docs/asyncapi.yaml (run by scripts/check-docs.sh).
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(process.env.ASYNCAPI_MODULES + '/');
const { Parser } = require('@asyncapi/parser');
const file = process.argv[2];
const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(file, 'utf8'), { source: file });
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics) {
  const level = ['error', 'warning', 'info', 'hint'][d.severity] ?? d.severity;
  console.log(`${file}:${(d.range?.start?.line ?? 0) + 1}: ${level}: ${d.message} (${d.code})`);
}
if (!document || errors.length > 0) {
  console.error(`${file}: invalid AsyncAPI document (${errors.length} errors)`);
  process.exit(1);
}
console.log(`${file}: valid AsyncAPI ${document.version()}, ${document.channels().length} channels`);
