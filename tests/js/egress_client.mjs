// LiveKit's JS server SDK, unchanged, against egret: start a web egress with a file and an
// RTMP stream, list it, swap the stream URL, stop it. Prints a JSON summary for the test.
// usage: node egress_client.mjs <egret url> <key> <secret> <page url> <rtmp a> <rtmp b>
import { EgressClient, EgressStatus, EncodedFileOutput, StreamOutput, StreamProtocol } from "livekit-server-sdk";

const [, , host, key, secret, page, rtmpA, rtmpB] = process.argv;
const client = new EgressClient(host, key, secret);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(egressId, predicate) {
  for (let i = 0; i < 300; i++) {
    const [info] = await client.listEgress({ egressId });
    if (info && predicate(info)) return info;
    await sleep(100);
  }
  throw new Error(`egress ${egressId} did not reach the expected state`);
}

const started = await client.startWebEgress(page, {
  file: new EncodedFileOutput({ filepath: "js/web.mp4" }),
  stream: new StreamOutput({ protocol: StreamProtocol.RTMP, urls: [rtmpA] }),
});
const egressId = started.egressId;
await waitFor(egressId, (i) => i.status === EgressStatus.EGRESS_ACTIVE);
const active = await client.listEgress({ active: true });
const updated = await client.updateStream(egressId, [rtmpB], [rtmpA]);
await sleep(1500);
const stopped = await client.stopEgress(egressId);
const final = await waitFor(egressId, (i) => i.status === EgressStatus.EGRESS_COMPLETE);
console.log(JSON.stringify({
  egressId,
  startedStatus: EgressStatus[started.status],
  requestCase: started.request.case,
  listedActive: active.map((i) => i.egressId).includes(egressId),
  streamsAfterUpdate: updated.streamResults.map((s) => ({ url: s.url, status: s.status })),
  stoppedStatus: EgressStatus[stopped.status],
  finalStatus: EgressStatus[final.status],
  file: final.fileResults.map((f) => ({ filename: f.filename, size: Number(f.size), location: f.location })),
}));
