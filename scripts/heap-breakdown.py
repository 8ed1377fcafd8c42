#!/usr/bin/env python3
"""Where a media worker's heap goes per connection, from a heaptrack run of stoa-media-bench.

    heaptrack -o /tmp/hb ./target/release/stoa-media-bench --listeners 300 --seconds 2
    heaptrack_print -f /tmp/hb.zst --print-flamegraph /tmp/hb.flame --flamegraph-cost-type peak
    scripts/heap-breakdown.py /tmp/hb.flame 300

Takes the stacks of the worker thread (the thread whose entry is the shell's `run`; the bench's
clients run on the main thread), at heaptrack's peak of the whole process, and sorts them into
what `rtc` keeps them for, by the first rule whose functions appear in the stack. Prints KiB per
listener (the second argument). heaptrack names inlined frames without their path, so the rules
match bare function names; they were written against rtc 0.21.
"""
import collections
import sys

RULES = [
    ("the worker's connection table", lambda d: "open<>" in d and "offer<>" in d
     and "answer" not in d and "poll_events" not in d and any(x.startswith("insert") for x in d)),
    ("SDP: descriptions kept (current/pending, local/remote), answer generation",
     lambda d: any(x in d for x in ("set_description", "create_answer", "generate_matched_sdp"))),
    ("transceivers (a Vec of 3 grown to 4, ~3 KiB each)", lambda d: "add_rtp_transceiver" in d),
    ("queues inside rtc (VecDeques grown by events and packets)",
     lambda d: any(x.startswith("push_back") for x in d)),
    ("ICE candidates and pairs", lambda d: any(x in d for x in (
        "add_candidate", "add_local_candidate", "get_or_create_candidate_pair", "handle_inbound",
        "add_remote_candidate"))),
    ("DTLS handshake state and stats", lambda d: any(x in d for x in (
        "handshake", "update_dtls_stats_from_profile", "prepare_transport", "start_transports",
        "read_into"))),
    ("SRTP/SRTCP contexts and per-SSRC state", lambda d: any(x in d for x in (
        "update_srtp_contexts", "learn", "decrypt_rtcp", "encrypt_rtcp", "get_srtcp_ssrc_state",
        "encrypt_rtp"))),
    ("RTP streams, codecs, media engine, interceptors", lambda d: any(x in d for x in (
        "start_rtp_senders", "set_codec_preferences_from_remote_description",
        "update_from_remote_description", "media_engine_with", "registry", "add_track",
        "bind_local_stream", "get_or_create_inbound_rtp_streams"))),
    ("the worker's Transport (boxed since this change) and its routes", lambda d: "open<>" in d and "offer<>" in d
     and "answer" not in d and "poll_events" not in d),
]


def main():
    path, listeners = sys.argv[1], int(sys.argv[2])
    totals = collections.Counter()
    worker = 0
    for line in open(path):
        stack, _, cost = line.rstrip("\n").rpartition(" ")
        frames = [f.split(" (")[0] for f in stack.split(";")]
        if "__rust_begin_short_backtrace<>" not in frames:
            continue
        start = frames.index("__rust_begin_short_backtrace<>") + 1
        if frames[start] != "run":
            continue
        frames = frames[start:]
        worker += int(cost)
        name = next((name for name, rule in RULES if rule(frames)), "other")
        totals[name] += int(cost)
    kib = lambda b: b / listeners / 1024
    print(f"worker thread at the heap peak: {kib(worker):.1f} KiB per listener")
    for name, cost in totals.most_common():
        print(f"{kib(cost):6.1f} KiB  {name}")


if __name__ == "__main__":
    main()
