// The rtcgate demo call. Open this page in two tabs (or two browsers) with the same room: both
// reach one backend through rtcgate (the room decides), which relays their offers, answers and
// ICE candidates over /signal; the media goes from browser to browser.
//
// ?room=NAME sets the room, ?join=1 joins at once. ?loopback=1 keeps to 127.0.0.1 candidates
// (the tests' browsers run on one machine, and their media stays on loopback).
"use strict";

const params = new URLSearchParams(location.search);
const loopbackOnly = params.get("loopback") === "1";
const peers = new Map(); // participant id -> { pc, video }
let ws = null;
let stream = null;

function status(text) {
  document.getElementById("call-status").textContent = text;
}

function send(msg) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
}

// Whether a candidate may be used: with ?loopback=1, 127.0.0.1 only.
function allowed(candidate) {
  return !loopbackOnly || / 127\.0\.0\.1 /.test(candidate);
}

function sdpOf(desc) {
  if (!loopbackOnly) return { type: desc.type, sdp: desc.sdp };
  const lines = desc.sdp.split("\r\n").filter((l) => !l.startsWith("a=candidate:") || allowed(l));
  return { type: desc.type, sdp: lines.join("\r\n") };
}

function peer(id) {
  if (peers.has(id)) return peers.get(id).pc;
  const pc = new RTCPeerConnection({ iceServers: [] });
  for (const track of stream.getTracks()) pc.addTrack(track, stream);
  const video = document.createElement("video");
  video.autoplay = true;
  video.playsInline = true;
  video.id = "remote-" + id;
  const label = document.createElement("figcaption");
  label.textContent = "participant " + id;
  const figure = document.createElement("figure");
  figure.append(video, label);
  document.getElementById("remotes").append(figure);
  pc.onicecandidate = (e) => {
    if (e.candidate && allowed(e.candidate.candidate)) {
      send({ type: "candidate", to: id, candidate: e.candidate });
    }
  };
  pc.ontrack = (e) => {
    video.srcObject = e.streams[0];
  };
  let reported = false;
  const frame = () => {
    if (!reported && video.videoWidth > 0) {
      reported = true;
      label.textContent = "participant " + id + ": connected";
      status("In the call with " + peers.size + " other(s).");
      send({ type: "report", state: "media", peer: id });
    }
  };
  video.addEventListener("loadeddata", frame);
  video.addEventListener("playing", frame);
  peers.set(id, { pc, video, figure });
  return pc;
}

async function join(room) {
  stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
  document.getElementById("local").srcObject = stream;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(scheme + "://" + location.host + "/signal?room=" + encodeURIComponent(room));
  ws.onclose = () => status("Signalling closed: reload to join again.");
  ws.onmessage = async (event) => {
    const m = JSON.parse(event.data);
    if (m.type === "welcome") {
      document.getElementById("call-backend").textContent = m.backend;
      status("Joined room " + m.room + " as participant " + m.id + " on " + m.backend +
        (m.peers.length ? "; calling " + m.peers.length + " other(s)." : "; waiting for others."));
      for (const id of m.peers) {
        const pc = peer(id);
        await pc.setLocalDescription();
        send({ type: "offer", to: id, sdp: sdpOf(pc.localDescription) });
      }
    } else if (m.type === "offer") {
      const pc = peer(m.from);
      await pc.setRemoteDescription(m.sdp);
      await pc.setLocalDescription();
      send({ type: "answer", to: m.from, sdp: sdpOf(pc.localDescription) });
    } else if (m.type === "answer") {
      await peer(m.from).setRemoteDescription(m.sdp);
    } else if (m.type === "candidate") {
      if (allowed(m.candidate.candidate)) await peer(m.from).addIceCandidate(m.candidate);
    } else if (m.type === "left" && peers.has(m.id)) {
      const { pc, figure } = peers.get(m.id);
      pc.close();
      figure.remove();
      peers.delete(m.id);
    }
  };
}

window.addEventListener("DOMContentLoaded", () => {
  const input = document.getElementById("room");
  input.value = params.get("room") || "demo";
  document.getElementById("join").addEventListener("click", () => {
    document.getElementById("join").disabled = true;
    join(input.value).catch((e) => status("Cannot join: " + e));
  });
  if (params.get("join") === "1") document.getElementById("join").click();
});
