"""Negotiates WebRTC with Janus's echotest over the Janus WebSocket API and counts the video
frames echoed back. Prints one JSON line, last, whether media flowed or not:

    {"frames": 20, "server": "janus-1", "state": "connected", "gathered": ["relay"],
     "pair": {"protocol": "udp", "local": "127.0.0.1:40001", "local_type": "relay",
              "remote": "127.0.0.1:50001", "remote_type": "host"}}

`gathered` lists the types of the local candidates offered (host, srflx or relay); `pair`, the
ICE pair media used (`*_type`: host, srflx, prflx or relay), is null when ICE nominated none;
`state` is the peer connection's state at the end. The exit status is 0 when all the frames
came back, 1 when not: ICE failed, there was no local candidate to try (then the script gives
up at once), or the timeout passed.

usage: janus_echo.py URL [--ca FILE] [--server-name NAME] [--frames N] [--timeout SECONDS]
                         [--ice-servers JSON] [--relay-only]

--ice-servers takes RTCPeerConnection iceServers as a browser gets them, a JSON list of
{"urls": [...], "username": ..., "credential": ...}; --relay-only sets iceTransportPolicy
"relay", so that media may only go through a TURN relay.

Run by `echo_media` in tests/it/support/janus.rs, with aiortc and websockets from PyPI (.ci/run installs them).
"""
import argparse
import asyncio
import json
import ssl
import sys

import aioice.ice
import websockets
from aiortc import (RTCConfiguration, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnection,
                    RTCSessionDescription, VideoStreamTrack)

# aioice leaves 127.0.0.1 out of its host candidates; on a loopback-only test bed it is the
# only address there is.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


async def call(ws, request, seq=[0]):
    """Sends `request` with a transaction of its own; returns Janus's answer to it."""
    seq[0] += 1
    request["transaction"] = f"t{seq[0]}"
    await ws.send(json.dumps(request))
    while True:
        answer = json.loads(await ws.recv())
        if answer.get("transaction") == request["transaction"] and answer["janus"] != "ack":
            return answer


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--ca")
    p.add_argument("--server-name", help="the TLS name to check when the URL has an address")
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--ice-servers", type=json.loads, default=None,
                   help="a JSON list of iceServers: {urls, username, credential}")
    p.add_argument("--relay-only", action="store_true", help="iceTransportPolicy relay")
    args = p.parse_args()
    config = RTCConfiguration(
        iceServers=None if args.ice_servers is None else [
            RTCIceServer(urls=s["urls"], username=s.get("username"),
                         credential=s.get("credential"))
            for s in args.ice_servers],
        iceTransportPolicy=(RTCIceTransportPolicy.RELAY if args.relay_only
                            else RTCIceTransportPolicy.ALL))
    tls = {}
    if args.url.startswith("wss:"):
        tls["ssl"] = ssl.create_default_context(cafile=args.ca)
        if args.server_name:
            tls["server_hostname"] = args.server_name
    async with websockets.connect(args.url, subprotocols=["janus-protocol"], **tls) as ws:
        created = await call(ws, {"janus": "create"})
        session = created["data"]["id"]
        attached = await call(ws, {"janus": "attach", "session_id": session,
                                   "plugin": "janus.plugin.echotest"})
        handle = attached["data"]["id"]
        info = await call(ws, {"janus": "info"})

        pc = RTCPeerConnection(config)
        # Done when the frames are in, or when the connection failed (no pair: no media).
        got = asyncio.get_running_loop().create_future()
        frames = 0

        @pc.on("connectionstatechange")
        def on_state():
            if pc.connectionState == "failed" and not got.done():
                got.set_result(False)

        @pc.on("track")
        def on_track(track):
            async def read():
                nonlocal frames
                while frames < args.frames:
                    await track.recv()
                    frames += 1
                if not got.done():
                    got.set_result(True)
            asyncio.ensure_future(read())

        pc.addTrack(VideoStreamTrack())
        # Gathers all the local candidates (aiortc does not trickle).
        await pc.setLocalDescription(await pc.createOffer())
        transceiver = pc.getTransceivers()[0]
        gatherer = transceiver.receiver.transport.transport.iceGatherer
        gathered = [c.type for c in gatherer.getLocalCandidates()]
        if not gathered and not got.done():
            # Nothing to pair (with --relay-only: no TURN allocation). A browser's connection
            # fails here; aiortc's stays "new" and never starts ICE, so do not wait for it.
            got.set_result(False)
        request = {"janus": "message", "session_id": session, "handle_id": handle,
                   "body": {"audio": False, "video": True},
                   "jsep": {"type": "offer", "sdp": pc.localDescription.sdp}}
        request["transaction"] = "offer"
        await ws.send(json.dumps(request))
        answer = None
        while answer is None:
            msg = json.loads(await asyncio.wait_for(ws.recv(), args.timeout))
            if "jsep" in msg:
                answer = msg["jsep"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        try:
            await asyncio.wait_for(got, args.timeout)
        except asyncio.TimeoutError:
            pass
        # The pair ICE chose: where the media went.
        pair = None
        for p_ in getattr(gatherer._connection, "_nominated", {}).values():
            pair = {"protocol": p_.remote_candidate.transport,
                    "local": f"{p_.local_candidate.host}:{p_.local_candidate.port}",
                    "local_type": p_.local_candidate.type,
                    "remote": f"{p_.remote_candidate.host}:{p_.remote_candidate.port}",
                    "remote_type": p_.remote_candidate.type}
        print(json.dumps({"frames": frames, "server": info.get("server-name"),
                          "state": pc.connectionState, "gathered": gathered, "pair": pair}),
              flush=True)
        await pc.close()
        return frames >= args.frames


sys.exit(0 if asyncio.run(main()) else 1)
