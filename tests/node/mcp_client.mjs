// A scripted MCP client on the official TypeScript SDK (@modelcontextprotocol/sdk 1.x): the
// tests' second, non-Python client of `broker guard` and `broker gateway`.
//
//   node tests/node/mcp_client.mjs '<script JSON>'      (or the script on stdin)
//
// Script: {"url": "https://127.0.0.1:PORT/mcp",
//          "headers": {"Authorization": "Bearer ..."},     sent on every request (initialize too)
//          "ca": PATH, "cert": PATH, "key": PATH,           TLS trust and client certificate (mTLS)
//          "servername": NAME,                              TLS SNI / name to verify (optional)
//          "spiffe_id": "spiffe://dev.local/mcp/files",     verify the server's URI SAN instead
//                                                           of its host name (SVIDs have no IP SAN)
//          "timeout_ms": 30000, "trace": false,
//          "steps": [{"op": "list_tools"},
//                    {"op": "call_tool", "name": "echo", "arguments": {...},
//                     "headers": {"Authorization": "Bearer ..."}},   this call's headers only
//                    {"op": "ping"}, {"op": "list_resources"}, {"op": "list_prompts"},
//                    {"op": "read_resource", "uri": URI}, {"op": "close"}]}
//
// Output, one JSON object per line:
//   {"type": "connect", "ok": true, "server": {...}, "protocol_version": ..., "session_id": ...,
//    "capabilities": {...}}
//   {"type": "step", "index": N, "op": ..., "ok": true, "result": {...}}      (a tool result with
//                                                  isError is ok: true, result.isError: true)
//   {"type": "step"|"connect", ..., "ok": false, "error": {"kind": "http", "status": 401,
//    "www_authenticate": ..., "body": ..., "message": ...}}    the server refused the HTTP request
//   ... "error": {"kind": "jsonrpc", "code": -32602, "message": ..., "data": ...}
//   ... "error": {"kind": "other", "name": ..., "message": ..., "cause": {"code", "message"}}
//                                                         (timeouts, TLS, refused connection)
//   with "trace": true also {"type": "http", "method", "request_headers", "request_body",
//   "status", "response_headers"} per HTTP exchange; Authorization values are shown as a digest
//   ("Bearer sha256:<16 hex>"), never the token.
// If the connection (initialize) fails, its line is the last one. Exit code 0 unless the script
// itself is unusable (2).
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import { StreamableHTTPClientTransport, StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpError } from '@modelcontextprotocol/sdk/types.js';
import { Agent, fetch as undiciFetch } from 'undici';

function out(obj) {
    process.stdout.write(JSON.stringify(obj) + '\n');
}

function readScript() {
    const text = process.argv[2] ?? readFileSync(0, 'utf8');
    const script = JSON.parse(text);
    if (typeof script.url !== 'string' || !Array.isArray(script.steps ?? [])) {
        throw new Error('script needs "url" (string) and "steps" (list)');
    }
    return script;
}

function redact(name, value) {
    if (name.toLowerCase() !== 'authorization') return value;
    const [scheme, ...rest] = value.split(' ');
    const digest = createHash('sha256').update(rest.join(' ')).digest('hex').slice(0, 16);
    return `${scheme} sha256:${digest}`;
}

function headerObject(headers, redacting) {
    const obj = {};
    for (const [k, v] of new Headers(headers ?? {}).entries()) obj[k] = redacting ? redact(k, v) : v;
    return obj;
}

// The fetch the transport uses: adds the current step's headers (a broker credential is per call,
// so each call carries its own Authorization), presents the client certificate, and remembers the
// last refused response (status, WWW-Authenticate, body) for the error report.
function makeFetch(script, state) {
    const tls = {};
    if (script.ca) tls.ca = readFileSync(script.ca);
    if (script.cert) tls.cert = readFileSync(script.cert);
    if (script.key) tls.key = readFileSync(script.key);
    if (script.servername) tls.servername = script.servername;
    if (script.spiffe_id) {
        // An X.509-SVID names its workload by a URI SAN only (no DNS/IP SAN): check that instead
        // of the host name (the chain is still verified against "ca").
        tls.checkServerIdentity = (_host, cert) => {
            const sans = (cert.subjectaltname ?? '').split(', ');
            return sans.includes(`URI:${script.spiffe_id}`)
                ? undefined
                : new Error(`server certificate is not ${script.spiffe_id} (${cert.subjectaltname})`);
        };
    }
    const dispatcher = new Agent({ connect: tls });
    state.dispatcher = dispatcher;
    return async (url, init = {}) => {
        const headers = new Headers(init.headers ?? {});
        for (const [k, v] of Object.entries(script.headers ?? {})) headers.set(k, v);
        for (const [k, v] of Object.entries(state.stepHeaders ?? {})) headers.set(k, v);
        const response = await undiciFetch(url, { ...init, headers, dispatcher });
        if (script.trace) {
            out({
                type: 'http',
                method: init.method ?? 'GET',
                request_headers: headerObject(headers, true),
                request_body: typeof init.body === 'string' ? JSON.parse(init.body) : null,
                status: response.status,
                response_headers: headerObject(response.headers, false)
            });
        }
        if (!response.ok) {
            state.lastRefusal = {
                status: response.status,
                www_authenticate: response.headers.get('www-authenticate'),
                body: await response.clone().text().catch(() => null)
            };
        }
        return response;
    };
}

function describeError(err, state) {
    if (err instanceof McpError) {
        return { kind: 'jsonrpc', code: err.code, message: err.message, data: err.data ?? null };
    }
    const refusal = state.lastRefusal;
    // StreamableHTTPError carries the HTTP status in .code; UnauthorizedError has none.
    if (refusal && (err instanceof StreamableHTTPError || err instanceof UnauthorizedError)) {
        let body = refusal.body;
        try {
            body = JSON.parse(refusal.body);
        } catch {
            // not JSON: keep the text
        }
        return { kind: 'http', ...refusal, body, name: err.constructor.name, message: err.message };
    }
    // fetch failures (TLS, refused connection) say why in .cause: "fetch failed" alone helps nobody.
    const cause = err?.cause ? { code: err.cause.code ?? null, message: String(err.cause.message ?? err.cause) } : null;
    return { kind: 'other', name: err?.constructor?.name ?? String(err?.name), message: String(err?.message ?? err), cause };
}

async function runStep(client, step, options) {
    switch (step.op) {
        case 'list_tools':
            return client.listTools({}, options);
        case 'call_tool':
            return client.callTool({ name: step.name, arguments: step.arguments ?? {} }, undefined, options);
        case 'ping':
            return client.ping(options);
        case 'list_resources':
            return client.listResources({}, options);
        case 'read_resource':
            return client.readResource({ uri: step.uri }, options);
        case 'list_prompts':
            return client.listPrompts({}, options);
        case 'close':
            await client.close();
            return {};
        default:
            throw new Error(`unknown op ${JSON.stringify(step.op)}`);
    }
}

async function main() {
    let script;
    try {
        script = readScript();
    } catch (err) {
        process.stderr.write(`mcp_client: bad script: ${err.message}\n`);
        process.exitCode = 2;
        return;
    }
    const state = { stepHeaders: null, lastRefusal: null, dispatcher: null };
    const options = { timeout: script.timeout_ms ?? 30000 };
    const transport = new StreamableHTTPClientTransport(new URL(script.url), { fetch: makeFetch(script, state) });
    const client = new Client({ name: 'broker-tests-ts', version: '1.0.0' });
    try {
        await client.connect(transport, options);
        out({
            type: 'connect',
            ok: true,
            server: client.getServerVersion() ?? null,
            protocol_version: transport.protocolVersion ?? null,
            session_id: transport.sessionId ?? null,
            capabilities: client.getServerCapabilities() ?? null
        });
    } catch (err) {
        out({ type: 'connect', ok: false, error: describeError(err, state) });
        await state.dispatcher?.close();
        return;
    }
    let closed = false;
    for (const [index, step] of (script.steps ?? []).entries()) {
        state.stepHeaders = step.headers ?? null;
        state.lastRefusal = null;
        try {
            const result = await runStep(client, step, options);
            closed ||= step.op === 'close';
            out({ type: 'step', index, op: step.op, ok: true, result });
        } catch (err) {
            out({ type: 'step', index, op: step.op, ok: false, error: describeError(err, state) });
        }
    }
    state.stepHeaders = null;
    if (!closed) await client.close().catch(() => {});
    await state.dispatcher?.close();
}

await main();
