// An independent CSMS (npm ocpp-rpc RPCServer, strict schema validation both ways) for
// flexbridge's local-controller tests: flexbridge relays chargers to it.
//
//   node csms.js <port>
//
// It accepts OCPP 1.6 and 2.0.1 on ws://127.0.0.1:<port>/<identity> (any password), answers
// every charger CALL, and prints one JSON object per line on stdout:
//   {"event":"listening","port":N}
//   {"event":"connected","identity":..,"protocol":..,"password":..}
//   {"event":"frame","identity":..,"message":[...]}        every frame it RECEIVED
//   {"event":"result","ref":..,"result":{..}} / {"event":"call-error","ref":..,"error":..}
//   {"event":"disconnected","identity":..,"code":N}
//   {"event":"STRICT-FAIL"|"BADMESSAGE",...}                schema or framing problems
// Commands on stdin, one JSON object a line:
//   {"cmd":"call","ref":..,"identity":..,"method":..,"params":{..}}   a CSMS CALL to the station
//   {"cmd":"stop"}                                                    close and exit
'use strict';
const readline = require('readline');
const { RPCServer } = require('ocpp-rpc');

const port = Number(process.argv[2] || 0);
const say = (obj) => console.log(JSON.stringify(obj));
const now = () => new Date().toISOString();
const clients = new Map();
let nextTx = 100;
let problems = 0;

const server = new RPCServer({
  protocols: ['ocpp2.0.1', 'ocpp1.6'],
  strictMode: true,
  callTimeoutMs: 10000,
});

server.auth((accept, reject, handshake) => {
  accept({ password: handshake.password ? handshake.password.toString() : null });
});

const answers = {
  BootNotification: () => ({ status: 'Accepted', currentTime: now(), interval: 300 }),
  Heartbeat: () => ({ currentTime: now() }),
  Authorize: (v16) => (v16 ? { idTagInfo: { status: 'Accepted' } } : { idTokenInfo: { status: 'Accepted' } }),
  StartTransaction: () => ({ transactionId: nextTx++, idTagInfo: { status: 'Accepted' } }),
  StopTransaction: () => ({ idTagInfo: { status: 'Accepted' } }),
  DataTransfer: () => ({ status: 'Accepted' }),
  NotifyEVChargingNeeds: () => ({ status: 'Accepted' }),
};

server.on('client', (client) => {
  const v16 = client.protocol === 'ocpp1.6';
  clients.set(client.identity, client);
  say({ event: 'connected', identity: client.identity, protocol: client.protocol, password: client.session.password });
  client.on('message', ({ message, outbound }) => {
    if (outbound) return;
    let parsed;
    try { parsed = JSON.parse(String(message)); } catch (e) { parsed = String(message); }
    say({ event: 'frame', identity: client.identity, message: parsed });
  });
  client.on('badMessage', (e) => { problems++; say({ event: 'BADMESSAGE', error: String(e.error && e.error.message) }); });
  client.on('strictValidationFailure', (e) => { problems++; say({ event: 'STRICT-FAIL', error: String(e.error && e.error.message) }); });
  client.on('close', (e) => {
    if (clients.get(client.identity) === client) clients.delete(client.identity);
    say({ event: 'disconnected', identity: client.identity, code: e.code });
  });
  client.handle(({ method }) => {
    const answer = answers[method];
    return answer ? answer(v16) : {};
  });
});

(async () => {
  const listener = await server.listen(port, '127.0.0.1');
  say({ event: 'listening', port: listener.address().port });
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    let cmd;
    try { cmd = JSON.parse(line); } catch (e) { continue; }
    if (cmd.cmd === 'stop') break;
    if (cmd.cmd === 'call') {
      const client = clients.get(cmd.identity);
      if (!client) { say({ event: 'call-error', ref: cmd.ref, error: 'not connected' }); continue; }
      client.call(cmd.method, cmd.params).then(
        (result) => say({ event: 'result', ref: cmd.ref, result }),
        (err) => say({ event: 'call-error', ref: cmd.ref, error: String(err && err.rpcErrorCode || err) }),
      );
    }
  }
  await server.close({ code: 1001, awaitPending: false });
  say({ event: 'done', problems });
  process.exit(problems ? 1 : 0);
})().catch((err) => {
  say({ event: 'error', error: String(err && err.stack || err) });
  process.exit(3);
});
