//! The client's media side without a server: a plain `webrtc` answerer stands in for Stoa, so
//! negotiation, renegotiation, sending, receiving and decoding all run in-process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::watch;
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceGatheringState, RTCSessionDescription,
};
use webrtc::rtp_transceiver::RTCRtpTransceiverDirection;

use super::peer::build_peer_connection;
use super::sdp::{check_offer, media_sections};
use super::*;
use crate::audio::{AudioSource, FRAME_SAMPLES};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn offers_have_exactly_the_slots_stoa_expects() {
    for slots in [1, 3, 5] {
        let listener = MediaPeer::new(MediaConfig::listener("l", slots))
            .await
            .unwrap();
        let offer = listener.link().pc.create_offer(None).await.unwrap();
        check_offer(&offer.sdp, slots, false).unwrap_or_else(|e| panic!("{e}:\n{}", offer.sdp));
        assert!(!offer.sdp.contains("m=video") && !offer.sdp.contains("m=application"));
        for (index, section) in media_sections(&offer.sdp).iter().enumerate() {
            assert!(section.contains(&format!("a=mid:{index}").as_str()));
        }
        listener.close().await;

        let speaker = MediaPeer::new(MediaConfig::speaker(
            "s",
            slots,
            AudioSource::tone(440.0, -20.0),
        ))
        .await
        .unwrap();
        let offer = speaker.link().pc.create_offer(None).await.unwrap();
        check_offer(&offer.sdp, slots, true).unwrap_or_else(|e| panic!("{e}:\n{}", offer.sdp));
        speaker.close().await;
    }
}
// -----------------------------------------------------------------------------------------
// Loopback: a plain `webrtc` answerer stands in for the server, so the whole client
// (negotiation, renegotiation, sending, receiving, decoding) runs without Stoa.
// -----------------------------------------------------------------------------------------

/// The slot on which the answerer echoes the offerer's microphone.
const ECHO_SLOT: usize = 1;

/// Answers offers and sends back whatever the microphone sends, on [`ECHO_SLOT`], as one
/// continuous stream (its own SSRC and numbering), without header extensions.
struct EchoAnswerer {
    pc: Arc<dyn PeerConnection>,
    gathered: watch::Receiver<bool>,
    /// Answer the first m-line `sendonly`, as the server does for a listener.
    refuse_microphone: bool,
}

struct EchoEvents {
    gathered: watch::Sender<bool>,
    echo: Arc<TrackLocalStaticRTP>,
    echo_ssrc: u32,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for EchoEvents {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.send_replace(true);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let (echo, ssrc) = (self.echo.clone(), self.echo_ssrc);
        tokio::spawn(async move {
            let mut seq = 1000u16;
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(mut packet) = event {
                    packet.header.ssrc = ssrc;
                    packet.header.sequence_number = seq;
                    seq = seq.wrapping_add(1);
                    packet.header.extension = false;
                    packet.header.extensions.clear();
                    packet.header.extensions_padding = 0;
                    let _ = echo.write_rtp(packet).await;
                }
            }
        });
    }
}

impl EchoAnswerer {
    async fn new(slots: usize) -> Self {
        let tracks: Vec<_> = (0..slots)
            .map(|slot| {
                Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                    "echo".to_owned(),
                    format!("echo-slot-{slot}"),
                    format!("echo-slot-{slot}"),
                    RtpCodecKind::Audio,
                    vec![RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters {
                            ssrc: Some(0x0E00 + slot as u32),
                            ..Default::default()
                        },
                        codec: opus_codec().rtp_codec,
                        ..Default::default()
                    }],
                )))
            })
            .collect();
        let (gathered_tx, gathered) = watch::channel(false);
        let handler = Arc::new(EchoEvents {
            gathered: gathered_tx,
            echo: tracks[ECHO_SLOT].clone(),
            echo_ssrc: 0x0E00 + ECHO_SLOT as u32,
        });
        let pc = build_peer_connection(handler, std::net::Ipv4Addr::LOCALHOST.into(), false)
            .await
            .unwrap();
        // Before the first offer, as the server does: `rtc` gives a transceiver that an
        // offer creates for a recvonly m-line no receiver, so a later sendrecv re-offer
        // (start_speaking) would never deliver the microphone.
        for track in tracks {
            pc.add_track(track).await.unwrap();
        }
        EchoAnswerer {
            pc,
            gathered,
            refuse_microphone: false,
        }
    }
}

#[async_trait::async_trait]
impl OfferChannel for EchoAnswerer {
    async fn exchange(&mut self, offer_sdp: String) -> Result<String, Error> {
        self.pc
            .set_remote_description(RTCSessionDescription::offer(offer_sdp)?)
            .await?;
        if self.refuse_microphone {
            // After the offer: applying an offer rewrites the transceivers' directions.
            for transceiver in self.pc.get_transceivers().await {
                if transceiver.mid().await?.as_deref() == Some("0") {
                    transceiver
                        .set_direction(RTCRtpTransceiverDirection::Sendonly)
                        .await?;
                }
            }
        }
        let answer = self.pc.create_answer(None).await?;
        self.pc.set_local_description(answer).await?;
        // Our candidate must be in the answer: the offerer gets no trickle.
        tokio::time::timeout(WAIT, self.gathered.wait_for(|done| *done))
            .await
            .expect("answerer gathers its candidate")
            .expect("answerer alive");
        Ok(self
            .pc
            .local_description()
            .await
            .expect("local description set")
            .sdp)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_listen_then_speak_then_stop() {
    let slots = 3;
    let mut answerer = EchoAnswerer::new(slots).await;
    let peer = MediaPeer::new(MediaConfig::listener("loop", slots))
        .await
        .unwrap();
    peer.negotiate(&mut answerer).await.unwrap();
    peer.wait_connected(WAIT).await.unwrap();
    assert!(!peer.report().send.answer_accepts_audio);

    peer.start_speaking(&mut answerer, AudioSource::tone(440.0, -20.0))
        .await
        .unwrap();
    let since = Instant::now();
    peer.wait_until(WAIT, "the microphone sends", |r| r.send.frames_sent >= 10)
        .await
        .unwrap();
    peer.wait_for_tone(ECHO_SLOT, 440.0, WAIT).await.unwrap();
    let report = peer
        .wait_until(WAIT, "50 echoed packets", |r| {
            r.slots[ECHO_SLOT].packets >= 50
        })
        .await
        .unwrap();
    let echoed = &report.slots[ECHO_SLOT];
    assert!(echoed.is_continuous(), "{echoed:#?}");
    assert_eq!(echoed.ssrcs, [0x0E00 + ECHO_SLOT as u32]);
    assert_eq!(echoed.tracks, 1);
    assert_eq!(echoed.decode_errors, 0);
    assert_eq!(echoed.audio_level, None, "the echo strips extensions");
    let log = peer.packets(ECHO_SLOT);
    assert_eq!(log.len() as u64, echoed.packets);
    assert!(log.windows(2).all(|w| w[1].seq == w[0].seq.wrapping_add(1)
        && w[1].timestamp.wrapping_sub(w[0].timestamp) == FRAME_SAMPLES as u32));
    assert!(report.send.answer_accepts_audio && report.send.speaking);
    assert_eq!(report.send.last_level, Some((20, true)));
    assert_eq!(report.send.write_errors, 0, "{:?}", report.send.last_error);
    assert_eq!(report.unmapped_tracks, 0);
    assert_eq!(report.slots[0].packets + report.slots[2].packets, 0);
    let fraction = peer.tone_fraction(ECHO_SLOT, 440.0, since, Instant::now());
    assert!(fraction >= 0.8, "440 Hz in {fraction} of the windows");

    // A new source without renegotiation.
    peer.set_source(AudioSource::tone(880.0, -30.0)).unwrap();
    peer.wait_for_tone(ECHO_SLOT, 880.0, WAIT).await.unwrap();

    peer.stop_speaking(&mut answerer).await.unwrap();
    let sent = peer.report().send.frames_sent;
    let after_stop = peer
        .wait_until(WAIT, "the echo stops", |r| {
            r.slots[ECHO_SLOT]
                .last_arrival
                .is_some_and(|last| last.elapsed() > Duration::from_millis(300))
        })
        .await
        .unwrap();
    assert!(!after_stop.send.speaking);
    assert_eq!(
        after_stop.send.frames_sent, sent,
        "nothing sent after stopping"
    );

    // Speaking again reuses the first m-line (the offer check would panic otherwise).
    peer.start_speaking(&mut answerer, AudioSource::tone(660.0, -20.0))
        .await
        .unwrap();
    peer.wait_for_tone(ECHO_SLOT, 660.0, WAIT).await.unwrap();
    peer.close().await;
    answerer.pc.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_receive_loss_is_concealed() {
    let slots = 2;
    let mut answerer = EchoAnswerer::new(slots).await;
    let config = MediaConfig::speaker("lossy", slots, AudioSource::tone(440.0, -20.0))
        .with_receive_loss(0.10, 3);
    let peer = MediaPeer::new(config).await.unwrap();
    peer.negotiate(&mut answerer).await.unwrap();
    peer.wait_connected(WAIT).await.unwrap();
    let since = Instant::now();
    let report = peer
        .wait_until(WAIT, "100 echoed packets", |r| {
            r.slots[ECHO_SLOT].packets >= 100
        })
        .await
        .unwrap();
    let slot = &report.slots[ECHO_SLOT];
    assert!(
        slot.is_continuous(),
        "loss is injected after the bookkeeping"
    );
    let rate = slot.injected_losses as f64 / slot.packets as f64;
    assert!((0.03..0.2).contains(&rate), "injected loss {rate}");
    assert!(slot.fec + slot.plc > 0, "{slot:#?}");
    let fraction = peer.tone_fraction(ECHO_SLOT, 440.0, since, Instant::now());
    assert!(fraction >= 0.8, "440 Hz in {fraction} of the windows");
    peer.close().await;
    answerer.pc.close().await.unwrap();
}

/// Refuses every offer, like the server for a participant who may not speak.
struct Refuser;

#[async_trait::async_trait]
impl OfferChannel for Refuser {
    async fn exchange(&mut self, _offer_sdp: String) -> Result<String, Error> {
        Err(Error::Rejected {
            code: "not_a_speaker".to_owned(),
            message: "test".to_owned(),
        })
    }
}

/// Answers `media_unavailable` `busy` times, then passes offers on to `answerer`.
struct Busy<'a> {
    busy: u32,
    answerer: &'a mut EchoAnswerer,
}

#[async_trait::async_trait]
impl OfferChannel for Busy<'_> {
    async fn exchange(&mut self, offer_sdp: String) -> Result<String, Error> {
        if self.busy > 0 {
            self.busy -= 1;
            return Err(Error::Rejected {
                code: "media_unavailable".to_owned(),
                message: "the connection was just closed; offer again".to_owned(),
            });
        }
        self.answerer.exchange(offer_sdp).await
    }
}

/// A new connection refused with `media_unavailable` (the server closed the old one just as
/// the offer came) is offered again, and comes up; a server that keeps saying so is given up
/// on with its code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_a_reconnection_offers_again_while_media_is_unavailable() {
    let mut answerer = EchoAnswerer::new(2).await;
    let peer = MediaPeer::new(MediaConfig::listener("patient", 2))
        .await
        .unwrap();
    let mut busy = Busy {
        busy: 2,
        answerer: &mut answerer,
    };
    peer.reconnect(&mut busy, false).await.unwrap();
    assert_eq!(busy.busy, 0, "offered again until it was taken");
    peer.wait_connected(WAIT).await.unwrap();
    let mut hopeless = Busy {
        busy: u32::MAX,
        answerer: &mut answerer,
    };
    let error = peer.reconnect(&mut hopeless, false).await.unwrap_err();
    assert_eq!(error.code(), Some("media_unavailable"), "{error}");
    assert_eq!(u32::MAX - hopeless.busy, 6, "one offer and five more");
    peer.close().await;
    answerer.pc.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_a_refused_offer_leaves_the_peer_usable() {
    let mut answerer = EchoAnswerer::new(2).await;
    let peer = MediaPeer::new(MediaConfig::listener("refused", 2))
        .await
        .unwrap();
    peer.negotiate(&mut answerer).await.unwrap();
    peer.wait_connected(WAIT).await.unwrap();
    let error = peer
        .start_speaking(&mut Refuser, AudioSource::tone(440.0, -20.0))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("not_a_speaker"), "{error}");
    assert!(!peer.speaking() && !peer.report().send.speaking);
    // Rolled back: the next offer is a listener's again, and the answerer takes it.
    peer.negotiate(&mut answerer).await.unwrap();
    peer.start_speaking(&mut answerer, AudioSource::tone(440.0, -20.0))
        .await
        .unwrap();
    peer.wait_for_tone(ECHO_SLOT, 440.0, WAIT).await.unwrap();
    peer.close().await;
    answerer.pc.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_a_refused_speaker_holds_back_and_a_rogue_sends() {
    let source = AudioSource::tone(440.0, -20.0);
    for rogue in [false, true] {
        let mut answerer = EchoAnswerer::new(2).await;
        answerer.refuse_microphone = true;
        let config = if rogue {
            MediaConfig::rogue("rogue", 2, source.clone())
        } else {
            MediaConfig::speaker("polite", 2, source.clone())
        };
        let peer = MediaPeer::new(config).await.unwrap();
        peer.negotiate(&mut answerer).await.unwrap();
        peer.wait_connected(WAIT).await.unwrap();
        let report = peer
            .wait_until(WAIT, "25 frames from the microphone", |r| {
                r.send.frames_sent + r.send.frames_withheld >= 25
            })
            .await
            .unwrap();
        assert!(!report.send.answer_accepts_audio);
        let on_the_wire = peer.rtp_packets_sent().await;
        if rogue {
            assert_eq!(report.send.frames_withheld, 0);
            assert!(on_the_wire >= 20, "rogue sent {on_the_wire} RTP packets");
        } else {
            assert_eq!(report.send.frames_sent, 0);
            assert_eq!(on_the_wire, 0);
        }
        peer.close().await;
        answerer.pc.close().await.unwrap();
    }
}
