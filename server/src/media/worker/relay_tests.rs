//! One room across nodes, in memory: a `Pair` per node (a real core and its clients), the
//! relayed datagrams carried between them by hand. The wire itself is tested in
//! `media::relay`; these check what the cores do with it.

use std::net::SocketAddr;
use std::time::Duration;

use super::Peer;
use super::pair::Pair;
use crate::media::relay::{InLink, OutLink, derive_key, node_tag};

const SECRET: [u8; 32] = [3; 32];
const STEP: Duration = Duration::from_millis(20);

/// A node: its core and clients, its name, and the address the others reach it at.
struct Node {
    pair: Pair,
    name: &'static str,
    addr: SocketAddr,
}

impl Node {
    fn new(name: &'static str, last_octet: u8, lean: bool) -> Self {
        Node {
            pair: if lean {
                Pair::lean_default()
            } else {
                Pair::default()
            },
            name,
            addr: SocketAddr::from(([10, 0, 1, last_octet], 40000)),
        }
    }

    fn relayed_out(&self) -> u64 {
        self.pair.core.counters.relay_out.get()
    }

    fn refused(&self) -> u64 {
        self.pair.core.counters.drops.relay_refused.get()
    }

    fn received(&self, client: usize) -> u64 {
        self.pair.clients[client].rtp_received
    }
}

/// `from` sends the room's audio to `to` on link `number`, as a grant from `to` sets it up.
fn link(from: &mut Node, to: &mut Node, number: u32) {
    let nonce = [number as u8; 16];
    let room = from.pair.room().id.to_string();
    let key = derive_key(&SECRET, &room, from.name, to.name, number, &nonce);
    assert!(
        from.pair
            .room()
            .relay
            .add(OutLink::new(number, to.addr, node_tag(to.name), &key))
    );
    to.pair
        .open_relay_in(InLink::new(number, node_tag(from.name), &[from.addr], &key));
}

/// Carries what `from` relayed to `to`; how many datagrams.
fn carry(from: &mut Node, to: &mut Node) -> usize {
    let (mine, rest) = std::mem::take(&mut from.pair.relayed)
        .into_iter()
        .partition::<Vec<_>, _>(|(addr, _)| *addr == to.addr);
    from.pair.relayed = rest;
    for (_, datagram) in &mine {
        to.pair.datagram(from.addr, datagram);
    }
    to.pair.shuttle();
    mine.len()
}

fn advance(nodes: &mut [&mut Node]) {
    for node in nodes.iter_mut() {
        node.pair.advance(STEP);
    }
}

#[test]
fn a_speaker_on_one_node_is_heard_on_another_with_one_copy_per_node() {
    let mut a = Node::new("node-a", 1, false);
    let mut b = Node::new("node-b", 2, true);
    let speaker = a.pair.join(true, true);
    let near = a.pair.join(false, false);
    let far: Vec<usize> = (0..5).map(|_| b.pair.join(false, false)).collect();
    a.pair.connect_all();
    b.pair.connect_all();
    link(&mut a, &mut b, 7);

    let mut carried = 0;
    for _ in 0..50 {
        a.pair.speak(speaker);
        carried += carry(&mut a, &mut b);
        advance(&mut [&mut a, &mut b]);
        carried += carry(&mut a, &mut b);
    }
    // One datagram per packet for the node, however many listen there.
    assert_eq!(carried, 50);
    assert_eq!(a.relayed_out(), 50);
    assert_eq!(b.pair.core.counters.relay_in.get(), 50);
    assert_eq!(b.refused(), 0);
    // Every listener on B hears the speaker, like the one on A, from the first selection on.
    let heard_near = a.received(near);
    assert!(heard_near >= 45, "the listener on A heard {heard_near}");
    for &listener in &far {
        let heard = b.received(listener);
        assert!(
            heard + 2 >= heard_near,
            "listener {listener} on B heard {heard} of {heard_near}"
        );
    }
    // B sends nothing back: the packets came from A.
    assert_eq!(b.relayed_out(), 0);
}

#[test]
fn relayed_datagrams_from_anyone_else_forged_or_replayed_are_refused() {
    let mut a = Node::new("node-a", 1, false);
    let mut b = Node::new("node-b", 2, false);
    let speaker = a.pair.join(true, true);
    let listener = b.pair.join(false, false);
    a.pair.connect_all();
    b.pair.connect_all();
    link(&mut a, &mut b, 9);
    for _ in 0..5 {
        a.pair.speak(speaker);
        carry(&mut a, &mut b);
        advance(&mut [&mut a, &mut b]);
    }
    assert!(b.received(listener) > 0, "heard before the forgeries");

    a.pair.speak(speaker);
    let (_, genuine) = a.pair.relayed.pop().expect("a relayed datagram");
    assert!(a.pair.relayed.is_empty());
    let heard = b.received(listener);
    let stranger = SocketAddr::from(([10, 0, 1, 66], 40000));
    let mut flipped = genuine.clone();
    let last = flipped.len() - 20;
    flipped[last] ^= 1;
    let mut other_link = genuine.clone();
    other_link[5] ^= 1;
    let forged_key = {
        // Sealed by someone who knows the link but not the cluster's secret.
        let key = derive_key(
            &[4; 32],
            "rm_testroom________",
            "node-a",
            "node-b",
            9,
            &[9; 16],
        );
        let mut out = [0u8; 1500];
        let forger = OutLink::new(9, b.addr, 0, &key);
        let len = forger.seal_forget(0, 1, &mut out).expect("sealed");
        out[..len].to_vec()
    };
    let before_unroutable = b.pair.core.counters.drops.unroutable.get();
    b.pair.datagram(stranger, &genuine);
    b.pair.datagram(a.addr, &flipped);
    b.pair.datagram(a.addr, &forged_key);
    b.pair
        .core
        .handle_datagram(b.pair.now, Peer::tcp(a.addr), &genuine);
    b.pair.shuttle();
    assert_eq!(
        b.refused(),
        4,
        "from a stranger, flipped, another key, over TCP"
    );
    assert_eq!(
        b.received(listener),
        heard,
        "nothing of them reached the listener"
    );
    b.pair.datagram(stranger, &other_link);
    assert_eq!(
        b.pair.core.counters.drops.unroutable.get(),
        before_unroutable + 1,
        "a link nobody granted"
    );
    // The genuine one, then the same again: heard once.
    b.pair.datagram(a.addr, &genuine);
    b.pair.shuttle();
    assert_eq!(b.received(listener), heard + 1);
    b.pair.datagram(a.addr, &genuine);
    b.pair.shuttle();
    assert_eq!(b.received(listener), heard + 1);
    assert_eq!(b.refused(), 5, "the replay");
}

#[test]
fn a_speaker_on_an_edge_is_heard_on_every_node_and_nothing_goes_back() {
    // A is the room's home; B and C are edges linked to it both ways.
    let mut a = Node::new("node-a", 1, false);
    let mut b = Node::new("node-b", 2, true);
    let mut c = Node::new("node-c", 3, true);
    let on_a = a.pair.join(false, false);
    let speaker = b.pair.join(true, true);
    let on_b = b.pair.join(false, false);
    let on_c = c.pair.join(false, false);
    for node in [&mut a, &mut b, &mut c] {
        node.pair.connect_all();
    }
    link(&mut a, &mut b, 1);
    link(&mut a, &mut c, 2);
    link(&mut b, &mut a, 3);
    link(&mut c, &mut a, 4);

    let mut to_a = 0;
    let mut a_to_b = 0;
    let mut a_to_c = 0;
    for _ in 0..40 {
        b.pair.speak(speaker);
        to_a += carry(&mut b, &mut a);
        a_to_b += carry(&mut a, &mut b);
        a_to_c += carry(&mut a, &mut c);
        advance(&mut [&mut a, &mut b, &mut c]);
        to_a += carry(&mut b, &mut a);
        a_to_c += carry(&mut a, &mut c);
    }
    assert_eq!(to_a, 40, "B sends each packet to the home once");
    assert_eq!(a_to_c, 40, "the home passes each on to C once");
    assert_eq!(a_to_b, 0, "and nothing back to B, where it came from");
    assert_eq!(c.relayed_out(), 0);
    let heard_b = b.received(on_b);
    assert!(
        heard_b >= 35,
        "the listener next to the speaker heard {heard_b}"
    );
    for (node, heard) in [("A", a.received(on_a)), ("C", c.received(on_c))] {
        assert!(
            heard + 2 >= heard_b,
            "the listener on {node} heard {heard} of {heard_b}"
        );
    }
}

#[test]
fn a_speaker_who_leaves_or_a_link_that_ends_frees_the_slots_on_other_nodes() {
    let mut a = Node::new("node-a", 1, false);
    let mut b = Node::new("node-b", 2, false);
    let speakers = [a.pair.join(true, true), a.pair.join(true, true)];
    b.pair.join(false, false);
    a.pair.connect_all();
    b.pair.connect_all();
    link(&mut a, &mut b, 5);
    for _ in 0..10 {
        for &s in &speakers {
            a.pair.speak(s);
        }
        carry(&mut a, &mut b);
        advance(&mut [&mut a, &mut b]);
    }
    let on_slots = |node: &Node| {
        let room = node.pair.room().key;
        node.pair.core.rooms[&room]
            .selector
            .slots()
            .iter()
            .flatten()
            .count()
    };
    assert_eq!(on_slots(&b), 2, "both speakers are on B's slots");

    // A listener who leaves A is nothing to B: no datagram.
    let near = a.pair.join(false, false);
    a.pair.connect_all();
    carry(&mut a, &mut b);
    let near_key = a.pair.clients[near].key;
    a.pair.close(near_key);
    a.pair.shuttle();
    assert_eq!(
        carry(&mut a, &mut b),
        0,
        "a listener's leaving does not cross"
    );

    let gone = a.pair.clients[speakers[0]].key;
    a.pair.close(gone);
    a.pair.shuttle();
    assert_eq!(carry(&mut a, &mut b), 1, "the end of the source crosses");
    assert_eq!(on_slots(&b), 1, "and frees its slot on B");

    b.pair.close_relay_in(5);
    assert_eq!(
        on_slots(&b),
        0,
        "a link that ends takes its sources with it"
    );
    // What still comes on it is not taken.
    a.pair.speak(speakers[1]);
    let before = b.pair.core.counters.drops.unroutable.get();
    carry(&mut a, &mut b);
    assert_eq!(b.pair.core.counters.drops.unroutable.get(), before + 1);
}

/// A microphone packet number `seq` at RFC 6464 `level` (-dBov; voice activity set).
fn loud(seq: u16, level: u8) -> rtc::rtp::Packet {
    let mut packet = crate::media::testkit::mic_packet(seq);
    packet
        .header
        .set_extension(1, bytes::Bytes::from(vec![0x80 | level]))
        .expect("a one-byte extension");
    packet
}

#[test]
fn every_node_puts_the_same_loudest_speakers_on_its_slots() {
    let mut a = Node::new("node-a", 1, false);
    let mut b = Node::new("node-b", 2, true);
    // Four speakers for three slots: the quietest must be left out, on both nodes.
    let speakers: Vec<usize> = (0..4).map(|_| a.pair.join(true, true)).collect();
    a.pair.join(false, false);
    b.pair.join(false, false);
    a.pair.connect_all();
    b.pair.connect_all();
    link(&mut a, &mut b, 11);
    let levels = [25u8, 10, 90, 40];
    for seq in 1..60u16 {
        for (&speaker, &level) in speakers.iter().zip(&levels) {
            assert!(a.pair.send_rtp(speaker, loud(seq, level)));
        }
        carry(&mut a, &mut b);
        advance(&mut [&mut a, &mut b]);
    }
    let room = a.pair.room().key;
    let on_slots = |node: &Node| -> Vec<u32> {
        let mut sources: Vec<u32> = node.pair.core.rooms[&room]
            .selector
            .slots()
            .iter()
            .flatten()
            .map(|s| s.0)
            .collect();
        sources.sort_unstable();
        sources
    };
    let source_of = |i: usize| a.pair.core.conns[&a.pair.clients[speakers[i]].key].source.0;
    let mut loudest = vec![source_of(1), source_of(0), source_of(3)];
    loudest.sort_unstable();
    assert_eq!(on_slots(&a), loudest, "A's slots: the three loudest");
    // B knows them by its own numbers: translate back through the link.
    let mapped = &b.pair.core.relay_in[&11].sources;
    let mut on_b: Vec<u32> = on_slots(&b)
        .into_iter()
        .map(|local| {
            *mapped
                .iter()
                .find(|(_, l)| l.0 == local)
                .expect("a relayed source")
                .0
        })
        .collect();
    on_b.sort_unstable();
    assert_eq!(on_b, loudest, "B's slots: the same three");
    assert!(!on_b.contains(&source_of(2)), "the quiet one is left out");
}
