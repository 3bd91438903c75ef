"""Negotiates WebRTC with Janus's echotest over the Janus WebSocket API and counts the video
frames echoed back. Prints one JSON line: frames, and the ICE pair media used.

usage: janus_echo.py URL [--ca FILE] [--server-name NAME] [--frames N] [--timeout SECONDS]

Run by tests/it/janus.rs with aiortc and websockets from PyPI (.ci/run installs them).
"""
import argparse
import asyncio
import json
import ssl
import sys

import aioice.ice
import websockets
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack

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
    args = p.parse_args()
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

        pc = RTCPeerConnection()
        got = asyncio.get_running_loop().create_future()
        frames = 0

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
        await pc.setLocalDescription(await pc.createOffer())
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
        transceiver = pc.getTransceivers()[0]
        ice = transceiver.receiver.transport.transport.iceGatherer._connection
        for p_ in getattr(ice, "_nominated", {}).values():
            pair = {"local": f"{p_.local_candidate.host}:{p_.local_candidate.port}",
                    "remote": f"{p_.remote_candidate.host}:{p_.remote_candidate.port}",
                    "protocol": p_.remote_candidate.transport}
        print(json.dumps({"frames": frames, "server": info.get("server-name"), "pair": pair}))
        await pc.close()


asyncio.run(main())
