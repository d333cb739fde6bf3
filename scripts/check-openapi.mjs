// Validates docs/openapi.yaml with @apidevtools/swagger-parser (OpenAPI 3.1
// schema plus $ref resolution), and checks that every operation documents
// its responses and every $ref resolves.
// Usage: node scripts/check-openapi.mjs docs/openapi.yaml (run by scripts/check-docs.sh).
import { createRequire } from 'node:module';

const require = createRequire(process.env.OPENAPI_MODULES + '/');
const SwaggerParser = require('@apidevtools/swagger-parser');
const file = process.argv[2];
try {
  const api = await SwaggerParser.validate(file);
  let operations = 0;
  for (const [path, item] of Object.entries(api.paths)) {
    for (const [method, op] of Object.entries(item)) {
      operations += 1;
      if (!op.responses || !Object.keys(op.responses).some((s) => s.startsWith('2'))) {
        throw new Error(`${method.toUpperCase()} ${path} documents no success response`);
      }
      if (!op.operationId) throw new Error(`${method.toUpperCase()} ${path} has no operationId`);
    }
  }
  console.log(`${file}: valid OpenAPI ${api.openapi}, ${Object.keys(api.paths).length} paths, ${operations} operations`);
} catch (e) {
  console.error(`${file}: invalid OpenAPI document: ${e.message}`);
  process.exit(1);
}
