#!/usr/bin/env python3
"""An independent WebRTC client for Stoa, built on aiortc (not on Stoa's Rust code).

It redeems an invite (POST /api/v1/join), joins the room over the signaling WebSocket,
negotiates media with `media_offer`/`media_answer` and then speaks a sine tone or listens.
The SDP is never edited: aiortc's offer is sent as aiortc wrote it, and the server's answer
is applied as the server wrote it.

Modes:
  speak-addtrack   pc.addTrack(tone), then recvonly transceivers for the other slots
  speak-sendonly   pc.addTransceiver(tone, direction="sendonly"), then recvonly ones
  speak-bot        one sendonly transceiver with the tone, nothing else
  listen           `slots` recvonly transceivers; decodes each slot and estimates its tone

Output: diagnostics on stderr; one JSON line on stdout at the end (also on failure, with an
"error" field). Exit status 0 when the session ran (connection reached "connected"), 1 when
it did not, 2 on a usage or environment problem.

Needs: pip install aiortc websockets   (numpy is not needed)
"""

import argparse
import array
import asyncio
import fractions
import json
import signal as signal_module
import math
import sys
import time
import urllib.error
import urllib.request
import wave

try:
    import av
    from aiortc import (
        RTCConfiguration,
        RTCPeerConnection,
        RTCSessionDescription,
    )
    from aiortc.mediastreams import AudioStreamTrack, MediaStreamError
except ImportError as e:  # pragma: no cover - environment check
    print(json.dumps({"error": "missing_module", "detail": f"{e}; pip install aiortc websockets"}))
    sys.exit(2)

try:
    from websockets.asyncio.client import connect as ws_connect
except ImportError:
    try:
        from websockets import connect as ws_connect  # websockets < 13
    except ImportError as e:  # pragma: no cover - environment check
        print(json.dumps({"error": "missing_module", "detail": f"{e}; pip install aiortc websockets"}))
        sys.exit(2)

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms
START = time.monotonic()


def log(*parts):
    print(f"[{time.monotonic() - START:6.2f}s {ARGS.name if ARGS else '?'}]", *parts, file=sys.stderr, flush=True)


ARGS = None


class SessionError(Exception):
    """A refusal or failure worth reporting as the result's `error`."""

    def __init__(self, code, detail=""):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


# ---------------------------------------------------------------------------------------
# The tone
# ---------------------------------------------------------------------------------------


class ToneTrack(AudioStreamTrack):
    """A sine wave: 48 kHz mono s16, 20 ms frames, paced in real time."""

    def __init__(self, hz, amplitude=0.5):
        super().__init__()
        self.hz = hz
        self.amplitude = amplitude
        self.frames = 0
        self._phase = 0.0

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        if hasattr(self, "_timestamp"):
            self._timestamp += FRAME_SAMPLES
            wait = self._start + self._timestamp / SAMPLE_RATE - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        else:
            self._start = time.time()
            self._timestamp = 0
        step = 2 * math.pi * self.hz / SAMPLE_RATE
        peak = 32767 * self.amplitude
        samples = array.array("h", (int(peak * math.sin(self._phase + i * step)) for i in range(FRAME_SAMPLES)))
        self._phase = (self._phase + FRAME_SAMPLES * step) % (2 * math.pi)
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(samples.tobytes())
        frame.pts = self._timestamp
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self.frames += 1
        return frame


# ---------------------------------------------------------------------------------------
# Listening: decode a slot and estimate its dominant frequency
# ---------------------------------------------------------------------------------------


def first_channel(frame):
    """The first channel of a decoded frame as a list of floats in [-1, 1]."""
    fmt = frame.format.name
    channels = len(frame.layout.channels)
    data = bytes(frame.planes[0])
    if fmt in ("s16", "s16p"):
        raw, scale = array.array("h", data), 1 / 32768
    elif fmt in ("flt", "fltp"):
        raw, scale = array.array("f", data), 1.0
    elif fmt in ("s32", "s32p"):
        raw, scale = array.array("i", data), 1 / 2147483648
    else:
        raise SessionError("unexpected_sample_format", fmt)
    stride = 1 if fmt.endswith("p") or channels == 1 else channels
    return [x * scale for x in raw[0 : frame.samples * stride : stride]]


def goertzel_fraction(samples, hz):
    """Share of the block's energy at `hz` (1.0 for a pure tone, ~0 for other sounds)."""
    n = len(samples)
    if n == 0:
        return 0.0
    k = 2 * math.cos(2 * math.pi * hz / SAMPLE_RATE)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + k * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - k * s1 * s2
    energy = sum(x * x for x in samples)
    return 0.0 if energy == 0 else min(1.0, 2 * power / (n * energy))


class SlotMeter:
    """What one slot delivered: frames, level, and the tone of its loud stretches."""

    LOUD_RMS = 0.01  # -40 dBFS: above Opus comfort noise and silence

    def __init__(self, index):
        self.index = index
        self.frames = 0
        self.loud_frames = 0
        self.first_frame_at = None
        self.sum_sq = 0.0
        self.samples = 0
        self.run = []  # the current stretch of contiguous loud samples
        self.run_next_pts = None
        self.cycles = 0.0  # over all finished stretches: cycles counted and
        self.cycle_secs = 0.0  # the time they took
        self.purity = []  # tone purity (Goertzel share at `hz`) of each stretch of 0.5 s or more
        self.track = None
        self.wav = None

    def add(self, frame):
        x = first_channel(frame)
        if self.wav is not None:
            self.wav.writeframes(array.array("h", (max(-32768, min(32767, int(v * 32768))) for v in x)).tobytes())
        self.frames += 1
        if self.first_frame_at is None:
            self.first_frame_at = time.monotonic() - START
            log(f"slot {self.index}: first frame ({frame.format.name}, {len(frame.layout.channels)} ch, {frame.sample_rate} Hz, {frame.samples} samples)")
        energy = sum(v * v for v in x)
        self.sum_sq += energy
        self.samples += len(x)
        loud = len(x) > 0 and math.sqrt(energy / len(x)) >= self.LOUD_RMS
        contiguous = frame.pts is not None and frame.pts == self.run_next_pts
        if not loud or not contiguous:
            self.close_run()
        if loud:
            self.loud_frames += 1
            self.run.extend(x)
            self.run_next_pts = None if frame.pts is None else frame.pts + frame.samples
            if len(self.run) >= SAMPLE_RATE:  # measure each full second on its own
                self.close_run()
                self.run_next_pts = None if frame.pts is None else frame.pts + frame.samples

    def close_run(self):
        run, self.run, self.run_next_pts = self.run, [], None
        crossings = []  # rising zero crossings, interpolated between samples
        for i in range(1, len(run)):
            a, b = run[i - 1], run[i]
            if a < 0 <= b:
                crossings.append(i - 1 + (-a / (b - a)))
        if len(crossings) >= 3:
            self.cycles += len(crossings) - 1
            self.cycle_secs += (crossings[-1] - crossings[0]) / SAMPLE_RATE
            if len(run) >= SAMPLE_RATE // 2:
                hz = (len(crossings) - 1) / ((crossings[-1] - crossings[0]) / SAMPLE_RATE)
                self.purity.append(goertzel_fraction(run, hz))

    def result(self):
        self.close_run()
        hz = self.cycles / self.cycle_secs if self.cycle_secs > 0 else None
        rms = math.sqrt(self.sum_sq / self.samples) if self.samples else 0.0
        return {
            "frames": self.frames,
            "loud_frames": self.loud_frames,
            "hz": None if hz is None else round(hz, 2),
            "tone_secs": round(self.cycle_secs, 2),
            "purity": None if not self.purity else round(sorted(self.purity)[len(self.purity) // 2], 3),
            "rms": round(rms, 5),
            "dbfs": None if rms <= 0 else round(20 * math.log10(rms), 1),
            "first_frame_at": None if self.first_frame_at is None else round(self.first_frame_at, 2),
        }


async def consume(meter):
    while True:
        try:
            frame = await meter.track.recv()
        except MediaStreamError:
            log(f"slot {meter.index}: track ended")
            return
        meter.add(frame)


# ---------------------------------------------------------------------------------------
# Signaling
# ---------------------------------------------------------------------------------------


def rest_join(server, invite, name):
    body = json.dumps({"invite": invite, "display_name": name}).encode()
    req = urllib.request.Request(
        server.rstrip("/") + "/api/v1/join",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(req, timeout=10) as res:
            return json.loads(res.read())
    except urllib.error.HTTPError as e:
        problem = e.read().decode(errors="replace")
        try:
            code = json.loads(problem).get("code", f"http_{e.code}")
        except ValueError:
            code = f"http_{e.code}"
        raise SessionError(code, f"POST /api/v1/join: {e.code} {problem}") from None


class Signal:
    """The signaling socket: requests with ids, a reader that routes answers and logs events."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 1
        self.waiting = {}
        self.events = []
        self.closed = None
        self.reader = asyncio.create_task(self.read())

    async def read(self):
        try:
            async for text in self.ws:
                msg = json.loads(text)
                kind = msg.get("type")
                if kind in ("welcome", "media_answer", "ok", "error", "pong") and msg.get("id") in self.waiting:
                    fut = self.waiting.pop(msg["id"])
                    if not fut.done():
                        fut.set_result(msg)
                    continue
                if kind == "closed":
                    self.closed = msg.get("reason")
                    log(f"signal: closed by the server: {self.closed}")
                elif kind == "error":
                    log(f"signal: error {msg}")
                elif kind in ("active_speakers", "joined_stage", "left_stage", "muted", "unmuted"):
                    log(f"signal: {json.dumps(msg)[:300]}")
                self.events.append(msg)
        except Exception as e:  # the socket went away
            log(f"signal: reader stopped: {e!r}")
        finally:
            for fut in self.waiting.values():
                if not fut.done():
                    fut.set_exception(SessionError("signal_closed", f"socket closed ({self.closed})"))

    async def request(self, msg, timeout=10):
        rid = self.next_id
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.waiting[rid] = fut
        await self.ws.send(json.dumps({**msg, "id": rid}))
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise SessionError("signal_timeout", f"no answer to {msg['type']} within {timeout} s") from None

    async def close(self):
        try:
            await self.ws.send(json.dumps({"type": "leave"}))
            await asyncio.wait_for(self.ws.close(), 2)
        except Exception:
            pass
        self.reader.cancel()


def directions(sdp):
    """(mid, direction) per m-section of an SDP, in order."""
    out = []
    for section in sdp.split("\nm=")[1:]:
        mid = direction = None
        for line in section.splitlines():
            line = line.strip()
            if line.startswith("a=mid:"):
                mid = line[6:]
            elif line in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
                direction = line[2:]
        out.append((mid, direction))
    return out


def count_candidates(sdp):
    """a=candidate lines per m-section."""
    return [sum(1 for l in s.splitlines() if l.startswith("a=candidate:")) for s in sdp.split("\nm=")[1:]]


# ---------------------------------------------------------------------------------------
# The session
# ---------------------------------------------------------------------------------------


async def session(args, result):
    joined = await asyncio.get_running_loop().run_in_executor(None, rest_join, args.server, args.invite, args.name)
    result["participant_id"] = joined.get("participant_id")
    result["role"] = joined.get("role")
    log(f"joined via REST as {joined.get('role')} {joined.get('participant_id')}; signal_url {joined['signal_url']}")

    try:
        ws = await ws_connect(joined["signal_url"], max_size=2**22, proxy=None)  # never via a proxy
    except TypeError:  # websockets < 15 has no proxy support (and so uses none)
        ws = await ws_connect(joined["signal_url"], max_size=2**22)
    signal = Signal(ws)
    pc = None
    try:
        welcome = await signal.request({"type": "join", "token": joined["token"]})
        if welcome.get("type") != "welcome":
            raise SessionError(welcome.get("code", "join_refused"), json.dumps(welcome))
        slots = (welcome.get("media") or {}).get("slots", 3)
        you = welcome["snapshot"]["you"]
        result["slots_offered"] = slots
        log(f"welcome: slots={slots} role={you['role']} on_stage={you['on_stage']}")

        speaking = args.mode != "listen"
        if speaking and not you["on_stage"]:
            # A speaker enters on the stage; a moderator only if the stage has room, else it
            # steps up with join_stage. A listener cannot speak without a moderator's invitation.
            if you["role"] != "moderator":
                raise SessionError("not_on_stage", f"joined as {you['role']} in the audience; use a speaker or moderator invite")
            answer = await signal.request({"type": "join_stage"})
            if answer.get("type") != "ok":
                raise SessionError(answer.get("code", "join_stage_refused"), json.dumps(answer))
            log("join_stage: ok")

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: loopback/LAN only
        connected = asyncio.Event()
        failed = asyncio.Event()
        states = []

        @pc.on("connectionstatechange")
        async def on_state():
            states.append(pc.connectionState)
            log(f"connectionState -> {pc.connectionState} (ice {pc.iceConnectionState})")
            if pc.connectionState == "connected":
                connected.set()
            elif pc.connectionState in ("failed", "closed"):
                failed.set()

        meters = []
        tasks = []
        tone = ToneTrack(args.tone) if speaking else None
        if args.mode == "speak-addtrack":
            pc.addTrack(tone)
            for _ in range(slots - 1):
                pc.addTransceiver("audio", direction="recvonly")
        elif args.mode == "speak-sendonly":
            pc.addTransceiver(tone, direction="sendonly")
            for _ in range(slots - 1):
                pc.addTransceiver("audio", direction="recvonly")
        elif args.mode == "speak-bot":
            pc.addTransceiver(tone, direction="sendonly")
        else:
            for _ in range(slots):
                pc.addTransceiver("audio", direction="recvonly")
        transceivers = pc.getTransceivers()

        @pc.on("track")
        def on_track(track):
            index = next((i for i, t in enumerate(transceivers) if t.receiver.track is track), len(meters))
            log(f"track: {track.kind} on transceiver {index}")
            if args.mode == "listen" and track.kind == "audio":
                meter = SlotMeter(index)
                meter.track = track
                if args.wav:
                    meter.wav = wave.open(f"{args.wav}-slot{index}.wav", "wb")
                    meter.wav.setnchannels(1)
                    meter.wav.setsampwidth(2)
                    meter.wav.setframerate(SAMPLE_RATE)
                meters.append(meter)
                tasks.append(asyncio.ensure_future(consume(meter)))

        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)
        sdp = pc.localDescription.sdp
        log(f"offer: {len(sdp)} bytes, sections {directions(sdp)}, candidates per section {count_candidates(sdp)}")
        first_section = sdp.split("\nm=")[1].splitlines()
        for line in ["m=" + first_section[0]] + first_section[1:]:
            if line.startswith(("m=", "a=rtpmap:", "a=extmap:")):
                log(f"  offer (first section) {line}")
        if args.dump_sdp:
            log("offer SDP:\n" + sdp)

        answer = await signal.request({"type": "media_offer", "sdp": sdp})
        if answer.get("type") != "media_answer":
            raise SessionError(answer.get("code", "media_offer_refused"), answer.get("message", json.dumps(answer)))
        answer_sdp = answer["sdp"]
        result["answer_directions"] = [d for _, d in directions(answer_sdp)]
        log(f"answer: sections {directions(answer_sdp)}, candidates per section {count_candidates(answer_sdp)}")
        for line in answer_sdp.splitlines():
            if line.startswith(("a=rtpmap:", "a=extmap:", "a=candidate:", "a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive", "m=")):
                log(f"  answer {line}")
        if args.dump_sdp:
            log("answer SDP:\n" + answer_sdp)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        except Exception as e:
            raise SessionError("set_remote_description_failed", f"{type(e).__name__}: {e}") from None
        log("answer applied; transceivers: " + ", ".join(f"{t.mid}:{t.currentDirection}" for t in pc.getTransceivers()))
        result["current_directions"] = [t.currentDirection for t in pc.getTransceivers()]

        waits = [asyncio.ensure_future(e.wait()) for e in (connected, failed, STOP)]
        began = time.monotonic()
        await asyncio.wait(waits, timeout=args.connect_timeout, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        result["connection"] = pc.connectionState
        result["connection_states"] = states
        if pc.connectionState != "connected":
            why = "stopped (SIGTERM)" if STOP.is_set() else "gave up"
            raise SessionError(
                "not_connected",
                f"connectionState {pc.connectionState} (ice {pc.iceConnectionState}) after {time.monotonic() - began:.1f} s: {why}",
            )

        # Run for the session's length, or until the server closes the signaling socket, or
        # SIGTERM, or (listen --min-tone) some slot has carried that many seconds of tone.
        until = time.monotonic() + args.seconds
        while time.monotonic() < until and signal.closed is None and pc.connectionState == "connected":
            if STOP.is_set():
                log("stopping (SIGTERM)")
                break
            if args.min_tone and any(m.cycle_secs >= args.min_tone for m in meters):
                log(f"heard {args.min_tone} s of tone: done")
                break
            await asyncio.sleep(0.05)
        result["connection"] = pc.connectionState
        if signal.closed is not None:
            result["signal_closed"] = signal.closed
        if tone is not None:
            result["frames_sent"] = tone.frames
            result["tone_hz"] = args.tone
        if args.mode == "listen":
            meters.sort(key=lambda m: m.index)
            result["slots"] = [m.result() for m in meters]
            for m in meters:
                if m.wav is not None:
                    m.wav.close()
        result["active_speakers"] = [e.get("speakers") for e in signal.events if e.get("type") == "active_speakers"]
        for task in tasks:
            task.cancel()
    finally:
        if pc is not None:
            await pc.close()
        await signal.close()


STOP = None


async def main():
    global STOP
    STOP = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal_module.SIGTERM, STOP.set)
    result = {"mode": ARGS.mode, "name": ARGS.name}
    try:
        await asyncio.wait_for(session(ARGS, result), ARGS.seconds + ARGS.connect_timeout + 30)
        status = 0
    except SessionError as e:
        log(f"FAILED: {e.code}: {e.detail}")
        result["error"] = e.code
        result["detail"] = e.detail
        status = 1
    except Exception as e:  # report aiortc's own exceptions as they are
        log(f"FAILED: {type(e).__name__}: {e}")
        result["error"] = "exception"
        result["detail"] = f"{type(e).__name__}: {e}"
        status = 1
    result.setdefault("connection", "new")
    print(json.dumps(result), flush=True)
    return status


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True, help="base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--invite", required=True, help="invite code or link")
    p.add_argument("--name", default="aiortc", help="display name")
    p.add_argument("--mode", required=True, choices=["speak-addtrack", "speak-sendonly", "speak-bot", "listen"])
    p.add_argument("--tone", type=float, default=440.0, help="tone frequency in Hz (speak modes)")
    p.add_argument("--seconds", type=float, default=5.0, help="how long to stay connected")
    p.add_argument("--min-tone", type=float, default=0.0, help="listen: stop once a slot carried this many seconds of tone")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to reach connectionState connected")
    p.add_argument("--wav", metavar="PREFIX", help="listen: write each slot's first channel to PREFIX-slotN.wav")
    p.add_argument("--dump-sdp", action="store_true", help="print the whole offer and answer to stderr")
    return p.parse_args()


if __name__ == "__main__":
    ARGS = parse_args()
    sys.exit(asyncio.run(main()))
