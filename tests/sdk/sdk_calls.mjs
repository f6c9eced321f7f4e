// Drives the official @oystehr/sdk against the emulator; tests/test_sdk.py runs it.
//
//   node sdk_calls.mjs SDK_DIR API_URL AUTH_URL PROJECT_ID DEVELOPER_TOKEN
//
// SDK_DIR is the folder whose node_modules holds @oystehr/sdk. Prints one JSON
// object: every call's answer by step name, or {"failed": step, "error": ...}.
import { pathToFileURL } from 'node:url';
import path from 'node:path';

const [sdkDir, apiUrl, authUrl, projectId, developerToken] = process.argv.slice(2);
const entry = path.join(sdkDir, 'node_modules', '@oystehr', 'sdk', 'dist', 'esm', 'index.js');
const { default: Oystehr } = await import(pathToFileURL(entry).href);

const results = {};
let step = 'start';
// No retries: a retried call would hide a wrong status from the test.
const retry = { retries: 0 };

async function call(name, work) {
  step = name;
  results[name] = (await work()) ?? null;
  return results[name];
}

async function refused(name, work) {
  step = name;
  try {
    await work();
    results[name] = { refused: false };
  } catch (err) {
    results[name] = { refused: true, code: err.code, message: err.message };
  }
}

async function token(clientId, clientSecret) {
  const response = await fetch(authUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      grant_type: 'client_credentials',
      client_id: clientId,
      client_secret: clientSecret,
      audience: 'https://api.zapehr.com',
    }),
  });
  return { status: response.status, body: await response.json() };
}

try {
  const dev = new Oystehr({ accessToken: developerToken, projectId, projectApiUrl: apiUrl, retry });

  // What the client made below may do: list roles, and read itself (m2m.me needs that).
  const policy = {
    rule: [
      { resource: ['IAM:Role'], action: 'IAM:ListAllRoles', effect: 'Allow' },
      { resource: 'IAM:M2MClient', action: ['App:GetM2MClient'], effect: 'Allow' },
    ],
  };
  const role = await call('role.create', () =>
    dev.role.create({ name: 'SDK Role', description: 'made by the SDK', accessPolicy: policy }),
  );
  await call('role.get', () => dev.role.get({ roleId: role.id }));
  await call('role.update', () => dev.role.update({ roleId: role.id, description: 'updated' }));
  await call('role.list', () => dev.role.list());

  const app = await call('application.create', () =>
    dev.application.create({
      name: 'SDK App',
      allowedCallbackUrls: ['https://app.example.com/callback'],
      loginWithEmailEnabled: true,
    }),
  );
  await call('application.get', () => dev.application.get({ id: app.id }));
  await call('application.update', () => dev.application.update({ id: app.id, mfaEnabled: true }));
  await call('application.list', () => dev.application.list());
  await call('application.rotateSecret', () => dev.application.rotateSecret({ id: app.id }));

  const client = await call('m2m.create', () =>
    dev.m2m.create({ name: 'sdk-client', description: 'made by the SDK', roles: [role.id] }),
  );
  await call('m2m.get', () => dev.m2m.get({ id: client.id }));
  await call('m2m.update', () => dev.m2m.update({ id: client.id, jwksUrl: 'https://x/jwks' }));
  // Every page, two at a time: the cursor is followed until it is null.
  const pages = [];
  let cursor;
  do {
    const page = await dev.m2m.listV2(cursor ? { limit: 2, cursor } : { limit: 2 });
    pages.push(page);
    cursor = page.metadata.nextCursor;
  } while (cursor);
  results['m2m.listV2'] = pages;
  await refused('role.delete while held', () => dev.role.delete({ roleId: role.id }));

  const first = await call('m2m.rotateSecret', () => dev.m2m.rotateSecret({ id: client.id }));
  const firstToken = await call('token with the first secret', () =>
    token(client.clientId, first.secret),
  );
  // An M2M token needs no projectId: the API knows the client's Project.
  const asClient = new Oystehr({
    accessToken: firstToken.body.access_token,
    projectApiUrl: apiUrl,
    retry,
  });
  await call('m2m.me', () => asClient.m2m.me());
  await call('role.list as the client', () => asClient.role.list());
  await refused('application.list as the client', () => asClient.application.list());
  const second = await call('m2m.rotateSecret again', () =>
    dev.m2m.rotateSecret({ id: client.id }),
  );
  await call('token with the old secret', () => token(client.clientId, first.secret));
  await call('token with the new secret', () => token(client.clientId, second.secret));

  // Secrets, Z3 buckets and Zambda Functions (what Zambdas need, and Zambdas themselves).
  await call('secret.set', () => dev.secret.set({ name: 'SDK_SECRET', value: 'first value' }));
  await call('secret.set again', () => dev.secret.set({ name: 'SDK_SECRET', value: 'second value' }));
  await call('secret.get', () => dev.secret.get({ name: 'SDK_SECRET' }));
  await call('secret.list', () => dev.secret.list());
  await call('secret.delete', () => dev.secret.delete({ name: 'SDK_SECRET' }));
  await refused('secret.get after delete', () => dev.secret.get({ name: 'SDK_SECRET' }));

  await call('z3.createBucket', () => dev.z3.createBucket({ bucketName: 'sdk-visit-notes' }));
  await call('z3.listBuckets', () => dev.z3.listBuckets());
  await call('z3.deleteBucket', () => dev.z3.deleteBucket({ bucketName: 'sdk-visit-notes' }));
  await call('z3.listBuckets after delete', () => dev.z3.listBuckets());

  const fn = await call('zambda.create', () =>
    dev.zambda.create({
      name: 'sdk-function',
      runtime: 'nodejs22.x',
      triggerMethod: 'cron',
      schedule: { expression: 'cron(*/5 * * * ? *)', retryPolicy: { maximumRetry: 2 } },
      timeoutInSeconds: 300,
      executionRoleId: role.id,
    }),
  );
  await call('zambda.get', () => dev.zambda.get({ id: fn.id }));
  await call('zambda.get by name', () => dev.zambda.get({ id: 'sdk-function' }));
  await call('zambda.update', () => dev.zambda.update({ id: fn.id, memorySize: 512 }));
  await call('zambda.list', () => dev.zambda.list());
  // The zip as the SDK's docs show it: a Blob, with and without a type and a filename.
  const zip = new Blob([new Uint8Array([0x50, 0x4b, 0x05, 0x06, ...new Array(18).fill(0)])], {
    type: 'application/zip',
  });
  await call('zambda.uploadFile', () =>
    dev.zambda.uploadFile({ id: fn.id, file: zip, filename: 'sdk-code.zip' }),
  );
  await call('zambda.get after upload', () => dev.zambda.get({ id: fn.id }));
  await call('zambda.uploadFile without a filename', () =>
    dev.zambda.uploadFile({ id: 'sdk-function', file: new Blob([new Uint8Array([1, 2, 3])]) }),
  );
  await call('zambda.get after the second upload', () => dev.zambda.get({ id: fn.id }));
  await refused('zambda.create with a taken name', () =>
    dev.zambda.create({ name: 'sdk-function', runtime: 'python3.13' }),
  );
  await call('zambda.delete', () => dev.zambda.delete({ id: fn.id }));
  await refused('zambda.get after delete', () => dev.zambda.get({ id: fn.id }));

  await call('m2m.delete', () => dev.m2m.delete({ id: client.id }));
  await call('application.delete', () => dev.application.delete({ id: app.id }));
  await call('role.delete', () => dev.role.delete({ roleId: role.id }));
  await refused('role.get after delete', () => dev.role.get({ roleId: role.id }));
  console.log(JSON.stringify(results));
} catch (err) {
  console.log(JSON.stringify({ failed: step, error: { message: err.message, code: err.code }, results }));
  process.exitCode = 1;
}
