// LiveKit's JS server SDK, unchanged, against egret with a real room: a track composite
// egress, then a room composite whose layout is switched with updateLayout. Prints a JSON summary.
// usage: node room_egress_client.mjs <egret url> <key> <secret> <room> <audio track> <video track>
import { EgressClient, EgressStatus, EncodedFileOutput } from "livekit-server-sdk";

const [, , host, key, secret, room, audioTrackId, videoTrackId] = process.argv;
const client = new EgressClient(host, key, secret);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(egressId, status) {
  for (let i = 0; i < 450; i++) {
    const [info] = await client.listEgress({ egressId });
    if (info && info.status === status) return info;
    await sleep(100);
  }
  throw new Error(`egress ${egressId} did not reach ${EgressStatus[status]}`);
}

async function record(start, whileActive = async () => undefined) {
  const started = await start();
  await waitFor(started.egressId, EgressStatus.EGRESS_ACTIVE);
  await sleep(1500);
  const during = await whileActive(started.egressId);
  await sleep(1500);
  await client.stopEgress(started.egressId);
  const final = await waitFor(started.egressId, EgressStatus.EGRESS_COMPLETE);
  return {
    requestCase: started.request.case,
    roomName: final.roomName,
    during,
    file: final.fileResults.map((f) => ({ filename: f.filename, location: f.location, duration: Number(f.duration) })),
  };
}

const trackComposite = await record(() =>
  client.startTrackCompositeEgress(room, new EncodedFileOutput({ filepath: "js/tc.mp4" }), { audioTrackId, videoTrackId }));
const roomComposite = await record(
  () => client.startRoomCompositeEgress(room, new EncodedFileOutput({ filepath: "js/rc.mp4" }), { layout: "grid" }),
  async (egressId) => EgressStatus[(await client.updateLayout(egressId, "single-speaker")).status],
);
console.log(JSON.stringify({ trackComposite, roomComposite }));
