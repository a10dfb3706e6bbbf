// An independent OCPP charger (npm ocpp-rpc, strict schema validation both ways) for
// flexbridge's integration tests. One charger per run:
//
//   node charger.js <ocpp1.6|ocpp2.0.1> <endpoint ws://host:port/ocpp> <identity> <password>
//
// It boots with security profile 1 (HTTP Basic), reports status, runs a transaction with meter
// values, answers the CSMS's smart-charging calls, prints one JSON object per line on stdout
// and, after reading "stop" on stdin, ends the transaction and exits. Exit code 1 if ocpp-rpc
// reported any strict-validation failure or bad message.
'use strict';
const readline = require('readline');
const { RPCClient, createRPCError } = require('ocpp-rpc');

const [proto, endpoint, identity, password] = process.argv.slice(2);
if (!['ocpp1.6', 'ocpp2.0.1'].includes(proto) || !endpoint || !identity) {
  console.error('usage: node charger.js <ocpp1.6|ocpp2.0.1> <endpoint> <identity> <password>');
  process.exit(2);
}
const v16 = proto === 'ocpp1.6';
const say = (obj) => console.log(JSON.stringify(obj));
const now = () => new Date().toISOString();
let problems = 0;

const cli = new RPCClient({
  endpoint, identity, password, protocols: [proto],
  strictMode: true, reconnect: false, callTimeoutMs: 10000,
});
cli.on('badMessage', (e) => { problems++; say({ event: 'BADMESSAGE', error: String(e.error && e.error.message), buffer: String(e.buffer) }); });
cli.on('strictValidationFailure', (e) => { problems++; say({ event: 'STRICT-FAIL', error: String(e.error && e.error.message) }); });
cli.on('close', (e) => say({ event: 'closed', code: e.code }));

// Installed profiles, as a charger keeps them, for GetCompositeSchedule.
const profiles = new Map();
const profileOf = (params) => (v16 ? params.csChargingProfiles : params.chargingProfile);
const scheduleOf = (p) => (v16 ? p.chargingSchedule : p.chargingSchedule[0]);
const idOf = (p) => (v16 ? p.chargingProfileId : p.id);

function currentLimit(unit) {
  const at = Date.now();
  let best = null;
  for (const p of profiles.values()) {
    if (p.validTo && Date.parse(p.validTo) <= at) continue;
    if (!best || p.stackLevel > best.stackLevel) best = p;
  }
  if (!best) return 32;
  const s = scheduleOf(best);
  const offset = (at - Date.parse(s.startSchedule)) / 1000;
  let limit = s.chargingSchedulePeriod[0].limit;
  for (const period of s.chargingSchedulePeriod) if (period.startPeriod <= offset) limit = period.limit;
  if (s.chargingRateUnit === unit) return limit;
  return unit === 'W' ? limit * 230 * 3 : Math.floor(limit / (230 * 3));
}

function record(method, params) { say({ event: 'call', method, params }); }

if (v16) {
  cli.handle('GetConfiguration', ({ params }) => {
    record('GetConfiguration', params);
    const values = {
      ChargeProfileMaxStackLevel: '3', ChargingScheduleAllowedChargingRateUnit: 'Current,Power',
      ChargingScheduleMaxPeriods: '24', MaxChargingProfilesInstalled: '10',
    };
    const keys = params.key || Object.keys(values);
    return {
      configurationKey: keys.filter((k) => k in values).map((k) => ({ key: k, readonly: true, value: values[k] })),
      unknownKey: keys.filter((k) => !(k in values)),
    };
  });
} else {
  cli.handle('GetVariables', ({ params }) => {
    record('GetVariables', params);
    const values = { RateUnit: 'A,W', ProfileStackLevel: '3', PeriodsPerSchedule: '24', Entries: '0' };
    return {
      getVariableResult: params.getVariableData.map((d) => (d.variable.name in values
        ? { attributeStatus: 'Accepted', component: d.component, variable: d.variable, attributeValue: values[d.variable.name] }
        : { attributeStatus: 'UnknownVariable', component: d.component, variable: d.variable })),
    };
  });
}
cli.handle('SetChargingProfile', ({ params }) => {
  record('SetChargingProfile', params);
  const p = profileOf(params);
  profiles.set(idOf(p), p);
  return { status: 'Accepted' };
});
cli.handle('ClearChargingProfile', ({ params }) => {
  record('ClearChargingProfile', params);
  const id = v16 ? params.id : params.chargingProfileId;
  return { status: profiles.delete(id) ? 'Accepted' : 'Unknown' };
});
cli.handle('GetCompositeSchedule', ({ params }) => {
  record('GetCompositeSchedule', params);
  const unit = params.chargingRateUnit || 'A';
  const start = new Date(Math.floor(Date.now() / 1000) * 1000).toISOString();
  const schedule = {
    duration: params.duration, chargingRateUnit: unit,
    chargingSchedulePeriod: [{ startPeriod: 0, limit: currentLimit(unit), numberPhases: 3 }],
  };
  if (v16) return { status: 'Accepted', connectorId: params.connectorId, scheduleStart: start, chargingSchedule: { ...schedule, startSchedule: start } };
  return { status: 'Accepted', schedule: { ...schedule, evseId: params.evseId, scheduleStart: start } };
});
// Operations a CSMS relayed through flexbridge asks for (accepted, nothing else happens).
for (const method of ['Reset', 'RemoteStartTransaction', 'RequestStartTransaction']) {
  cli.handle(method, ({ params }) => {
    record(method, params);
    return { status: 'Accepted' };
  });
}
cli.handle(({ method, params }) => {
  record(method, params);
  throw createRPCError('NotImplemented');
});

function sampled(wh, w) {
  const v = (x) => (v16 ? String(x) : x);
  const unit = (u) => (v16 ? { unit: u } : { unitOfMeasure: { unit: u } });
  return [
    { value: v(wh), measurand: 'Energy.Active.Import.Register', ...unit('Wh') },
    { value: v(w), measurand: 'Power.Active.Import', ...unit('W') },
    { value: v(10.1), measurand: 'Current.Import', phase: 'L1', ...unit('A') },
    { value: v(10.2), measurand: 'Current.Import', phase: 'L2', ...unit('A') },
    { value: v(10.0), measurand: 'Current.Import', phase: 'L3', ...unit('A') },
  ];
}

async function run16() {
  say({ event: 'boot', result: await cli.call('BootNotification', { chargePointVendor: 'Lab', chargePointModel: 'RpcSim16', chargePointSerialNumber: 'S-16' }) });
  await cli.call('StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Available' });
  await cli.call('Heartbeat', {});
  await cli.call('Authorize', { idTag: 'RPC-TAG' });
  await cli.call('StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Preparing' });
  const started = await cli.call('StartTransaction', { connectorId: 1, idTag: 'RPC-TAG', meterStart: 1000, timestamp: now() });
  say({ event: 'started', result: started });
  await cli.call('StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Charging' });
  await cli.call('MeterValues', { connectorId: 1, transactionId: started.transactionId, meterValue: [{ timestamp: now(), sampledValue: sampled(1500, 7000) }] });
  return async () => {
    await cli.call('StopTransaction', { meterStop: 2500, timestamp: now(), transactionId: started.transactionId, reason: 'EVDisconnected', idTag: 'RPC-TAG' });
    await cli.call('StatusNotification', { connectorId: 1, errorCode: 'NoError', status: 'Available' });
  };
}

async function run201() {
  say({ event: 'boot', result: await cli.call('BootNotification', { chargingStation: { model: 'RpcSim201', vendorName: 'Lab', serialNumber: 'S-201' }, reason: 'PowerUp' }) });
  await cli.call('StatusNotification', { timestamp: now(), connectorStatus: 'Available', evseId: 1, connectorId: 1 });
  await cli.call('Heartbeat', {});
  await cli.call('StatusNotification', { timestamp: now(), connectorStatus: 'Occupied', evseId: 1, connectorId: 1 });
  const tx = { transactionId: 'RPC-TX-1' };
  const idToken = { idToken: 'RPC-TAG', type: 'ISO14443' };
  const evse = { id: 1, connectorId: 1 };
  const started = await cli.call('TransactionEvent', {
    eventType: 'Started', timestamp: now(), triggerReason: 'Authorized', seqNo: 0,
    transactionInfo: { ...tx, chargingState: 'EVConnected' }, idToken, evse,
    meterValue: [{ timestamp: now(), sampledValue: [{ value: 1000, measurand: 'Energy.Active.Import.Register', context: 'Transaction.Begin' }] }],
  });
  say({ event: 'started', result: started });
  await cli.call('NotifyEVChargingNeeds', {
    evseId: 1,
    chargingNeeds: {
      requestedEnergyTransfer: 'AC_three_phase', departureTime: '2030-01-01T07:30:00Z',
      acChargingParameters: { energyAmount: 20000, evMinCurrent: 6, evMaxCurrent: 32, evMaxVoltage: 400 },
    },
  });
  await cli.call('TransactionEvent', {
    eventType: 'Updated', timestamp: now(), triggerReason: 'MeterValuePeriodic', seqNo: 1,
    transactionInfo: { ...tx, chargingState: 'Charging' }, evse,
    meterValue: [{ timestamp: now(), sampledValue: sampled(1500, 7000) }],
  });
  await cli.call('MeterValues', { evseId: 1, meterValue: [{ timestamp: now(), sampledValue: sampled(1600, 7100) }] });
  return async () => {
    await cli.call('TransactionEvent', {
      eventType: 'Ended', timestamp: now(), triggerReason: 'EVCommunicationLost', seqNo: 2,
      transactionInfo: { ...tx, stoppedReason: 'EVDisconnected' }, evse,
      meterValue: [{ timestamp: now(), sampledValue: [{ value: 2500, measurand: 'Energy.Active.Import.Register', context: 'Transaction.End' }] }],
    });
    await cli.call('StatusNotification', { timestamp: now(), connectorStatus: 'Available', evseId: 1, connectorId: 1 });
  };
}

(async () => {
  await cli.connect();
  say({ event: 'connected', protocol: cli.protocol });
  const finish = v16 ? await run16() : await run201();
  say({ event: 'ready' });
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (line.trim() === 'stop') break;
  }
  await finish();
  say({ event: 'done', problems });
  await cli.close({ code: 1000 });
  process.exit(problems ? 1 : 0);
})().catch((err) => {
  say({ event: 'error', error: String(err && err.stack || err) });
  process.exit(3);
});
