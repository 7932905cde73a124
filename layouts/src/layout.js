// egret's room composite page. LiveKit's template contract: `?url=&token=&layout=`; logs
// START_RECORDING once connected and showing the first picture, END_RECORDING when the room
// closes (the server closes an empty room after its departure timeout). The layout follows
// the recorder's metadata `{"layout": "..."}`, which is how UpdateLayout reaches the page.
import { ParticipantEvent, Room, RoomEvent, Track } from 'livekit-client';
import { LAYOUTS, arrange } from './arrange.js';

const FIRST_FRAME_TIMEOUT_MS = 5000;

const params = new URLSearchParams(location.search);
const stage = document.getElementById('stage');
const tiles = new Map(); // key -> { key, participant, screen, el, video }
let layout = 'grid';
let activeSpeaker = null; // identity; stays until someone else speaks
let recording = false;

function setLayout(requested) {
  const name = String(requested || 'grid');
  const theme = name.match(/-(light|dark)$/);
  const base = theme ? name.slice(0, -theme[0].length) : name;
  if (!LAYOUTS.includes(base)) {
    console.warn(`egret layout: unknown layout "${name}", using grid`);
  }
  layout = LAYOUTS.includes(base) ? base : 'grid';
  document.body.classList.toggle('light', theme?.[1] === 'light');
  render();
}

function tileKey(participant, screen) {
  return `${participant.identity}/${screen ? 'screen' : 'camera'}`;
}

function ensureTile(participant, screen) {
  const key = tileKey(participant, screen);
  let tile = tiles.get(key);
  if (!tile) {
    const el = document.createElement('div');
    el.className = screen ? 'tile screen' : 'tile';
    const name = document.createElement('div');
    name.className = 'name';
    name.textContent = participant.name || participant.identity;
    el.appendChild(name);
    stage.appendChild(el);
    tile = { key, participant, screen, el, video: null };
    tiles.set(key, tile);
  }
  return tile;
}

function removeTile(key) {
  const tile = tiles.get(key);
  if (tile) {
    tile.el.remove();
    tiles.delete(key);
  }
}

// Every participant has a camera tile (a name card while it has no video); a screen share
// adds a tile of its own, which the speaker layouts show large.
function orderedTiles() {
  const all = [...tiles.values()];
  // Arrival order, to the millisecond (`joinedAt` alone is in whole seconds).
  const joined = (t) => Number(t.participant.participantInfo?.joinedAtMs ?? 0) || (t.participant.joinedAt?.getTime?.() ?? 0);
  all.sort((a, b) => joined(a) - joined(b) || a.participant.identity.localeCompare(b.participant.identity) ||
    Number(a.screen) - Number(b.screen));
  return all;
}

function mainKey(ordered) {
  const screen = ordered.find((t) => t.screen && t.video);
  if (screen) return screen.key;
  const speaking = ordered.find((t) => !t.screen && t.participant.identity === activeSpeaker);
  return speaking ? speaking.key : ordered[0]?.key;
}

function render() {
  const ordered = orderedTiles();
  const boxes = arrange(layout, ordered, mainKey(ordered), window.innerWidth, window.innerHeight);
  for (const tile of ordered) {
    const box = boxes.get(tile.key);
    tile.el.classList.toggle('hidden', !box);
    tile.el.classList.toggle('has-video', Boolean(tile.video) && !tile.muted);
    if (box) {
      Object.assign(tile.el.style, { left: `${box.x}px`, top: `${box.y}px`, width: `${box.w}px`, height: `${box.h}px` });
    }
  }
}

function onTrackSubscribed(track, publication, participant) {
  console.log(`egret layout: subscribed ${track.kind} ${publication.trackSid} of ${participant.identity}`);
  if (track.kind === Track.Kind.Audio) {
    const el = track.attach();
    el.classList.add('hidden');
    document.body.appendChild(el);
    return;
  }
  const screen = publication.source === Track.Source.ScreenShare;
  const tile = ensureTile(participant, screen);
  if (tile.video) track.detach(tile.video);
  tile.video = track.attach();
  tile.video.muted = true; // the element's sound (audio plays from its own element)
  tile.muted = publication.isMuted;
  tile.el.appendChild(tile.video);
  render();
}

function onTrackUnsubscribed(track, publication, participant) {
  const elements = track.detach();
  elements.forEach((e) => e.remove());
  if (track.kind !== Track.Kind.Video) return;
  const screen = publication.source === Track.Source.ScreenShare;
  const tile = tiles.get(tileKey(participant, screen));
  if (!tile) return;
  tile.video = null;
  if (screen) removeTile(tile.key);
  render();
}

// A muted camera shows its name card (as egret's native layouts do), not a frozen picture.
function onMuteChanged(publication, participant, muted) {
  if (publication.kind !== Track.Kind.Video || participant === room.localParticipant) return;
  const tile = tiles.get(tileKey(participant, publication.source === Track.Source.ScreenShare));
  if (tile) {
    tile.muted = muted;
    render();
  }
}

function onParticipantDisconnected(participant) {
  removeTile(tileKey(participant, false));
  removeTile(tileKey(participant, true));
  if (activeSpeaker === participant.identity) activeSpeaker = null;
  render();
}

function onActiveSpeakers(speakers) {
  const remote = speakers.find((p) => p.identity !== room.localParticipant.identity);
  if (remote && remote.identity !== activeSpeaker) {
    activeSpeaker = remote.identity;
    render();
  }
}

function onRecorderMetadata(metadata) {
  try {
    const requested = JSON.parse(metadata || '{}').layout;
    if (requested) setLayout(requested);
  } catch (e) {
    console.warn(`egret layout: metadata is not JSON: ${e}`);
  }
}

// Resolves when every published video shows a frame (at once if there is none yet), or
// after FIRST_FRAME_TIMEOUT_MS: a recording should not open on name cards.
function firstFrames() {
  const expected = () =>
    [...room.remoteParticipants.values()].reduce((n, p) => n + p.videoTrackPublications.size, 0);
  const showing = () =>
    [...tiles.values()].filter((t) => t.video && t.video.readyState >= 2 && t.video.videoWidth > 0).length;
  return new Promise((resolve) => {
    const started = performance.now();
    const watch = () => {
      if (showing() >= expected()) resolve();
      else if (performance.now() - started > FIRST_FRAME_TIMEOUT_MS) {
        const states = [...tiles.values()].map((t) => `${t.key}:${t.video ? `${t.video.readyState}/${t.video.videoWidth}` : 'none'}`);
        console.warn(`egret layout: ${showing()} of ${expected()} videos show a frame after ${FIRST_FRAME_TIMEOUT_MS} ms (${states.join(' ')})`);
        resolve();
      } else requestAnimationFrame(watch);
    };
    watch();
  });
}

const room = new Room({ adaptiveStream: false, dynacast: false });
room
  .on(RoomEvent.TrackSubscribed, onTrackSubscribed)
  .on(RoomEvent.TrackUnsubscribed, onTrackUnsubscribed)
  .on(RoomEvent.TrackSubscriptionFailed, (sid, p, reason) => console.warn(`egret layout: cannot subscribe ${sid} of ${p?.identity}: ${reason}`))
  .on(RoomEvent.ParticipantConnected, (p) => { ensureTile(p, false); render(); })
  .on(RoomEvent.ParticipantDisconnected, onParticipantDisconnected)
  .on(RoomEvent.TrackMuted, (pub, p) => onMuteChanged(pub, p, true))
  .on(RoomEvent.TrackUnmuted, (pub, p) => onMuteChanged(pub, p, false))
  .on(RoomEvent.ActiveSpeakersChanged, onActiveSpeakers)
  .on(RoomEvent.Disconnected, (reason) => {
    console.log(`egret layout: disconnected (${reason})`);
    if (recording) console.log('END_RECORDING');
  });
room.localParticipant.on(ParticipantEvent.ParticipantMetadataChanged, () => onRecorderMetadata(room.localParticipant.metadata));
window.addEventListener('resize', render);

async function main() {
  setLayout(params.get('layout'));
  const url = params.get('url');
  const token = params.get('token');
  if (!url || !token) {
    console.error('egret layout: the page needs ?url= and ?token=');
    return;
  }
  await room.connect(url, token, { autoSubscribe: true });
  onRecorderMetadata(room.localParticipant.metadata);
  for (const p of room.remoteParticipants.values()) ensureTile(p, false);
  render();
  await firstFrames();
  recording = true;
  console.log('START_RECORDING');
}

main().catch((e) => console.error(`egret layout: ${e?.stack || e}`));
