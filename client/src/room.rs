//! [`Room`]: one participant in a live room, as a bot or an integration is one. It redeems the
//! invite, keeps the signaling socket read and alive in a task of its own (answering pings,
//! keeping the [`RoomView`] current, resuming after a dropped connection), opens the media
//! connection, and gives you typed events, decoded audio with the speaker's id, a microphone,
//! and the stage and moderation requests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::Error;
use crate::audio::{AudioSource, mean_power};
use crate::join::{InviteLink, JoinAnswer, redeem};
use crate::media::{FrameOrigin, MediaConfig, MediaPeer, OfferChannel, SlotFrame};
use crate::protocol::{Event, ParticipantId, Welcome};
use crate::signal::{ANSWER_WAIT, Session, media_answer, rejected};
use crate::view::RoomView;

/// Events waiting to be read before the oldest are dropped (see [`Event::Missed`]).
const EVENT_BUFFER: usize = 1024;
/// First pause between resume attempts; it doubles up to [`RESUME_BACKOFF_MAX`].
const RESUME_BACKOFF: Duration = Duration::from_millis(100);
const RESUME_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long the media connection may take to come up when joining.
const MEDIA_CONNECT: Duration = Duration::from_secs(15);
/// A slot with no frame for this long no longer carries anyone.
const SLOT_IDLE: Duration = Duration::from_millis(500);
/// How long a slot's turn runs before it is named. The server reports who speaks every 250 ms
/// when that changed; by this age, the speaker a slot carries is in `active_speakers`.
const SETTLE: Duration = Duration::from_millis(600);
/// Slots whose speakers start together are told apart by loudness only when each is at least
/// this much louder (in power) than the next: 6 dB.
const LOUDER: f64 = 4.0;
/// Weight of a new frame in a slot's smoothed power (about 10 frames: 200 ms).
const POWER_WEIGHT: f64 = 0.1;

/// How to join.
#[derive(Clone, Debug)]
pub struct JoinOptions {
    /// The name others see.
    pub display_name: String,
    /// The identity secret of an earlier join ([`JoinAnswer::identity`]), to come back as the
    /// same person.
    pub identity: Option<String>,
    /// Open a media connection: hear the room, and speak when on stage. Without it the room
    /// is signaling only (events, hands, moderation).
    pub media: bool,
    /// The local address to gather the media candidate on; by default the one that routes to
    /// the server.
    pub local_ip: Option<IpAddr>,
    /// Reach the server's media over ICE-TCP only (a network that blocks UDP).
    pub tcp_only: bool,
    /// How much decoded audio and packet history the media peer keeps for
    /// [`MediaPeer::decoded_audio`] and [`MediaPeer::packets`] (none by default:
    /// [`Room::listen`] hands out every frame as it is decoded).
    pub keep_audio: Duration,
    /// Decoded frames a [`Listener`] holds before newer ones pass it by (50 per second per
    /// slot in use).
    pub listen_buffer: usize,
}

impl JoinOptions {
    /// Joins as `display_name`, with media, on the address that routes to the server.
    pub fn new(display_name: &str) -> Self {
        JoinOptions {
            display_name: display_name.to_owned(),
            identity: None,
            media: true,
            local_ip: None,
            tcp_only: false,
            keep_audio: Duration::ZERO,
            listen_buffer: 500,
        }
    }

    /// Without a media connection.
    pub fn without_media(mut self) -> Self {
        self.media = false;
        self
    }
}

/// One decoded 20 ms frame of what the room sounds like, and who said it.
#[derive(Clone, Debug)]
pub struct AudioFrame {
    /// Who is speaking in it, when the client can tell (see [`Room::listen`]).
    pub speaker: Option<ParticipantId>,
    /// The slot it came on.
    pub slot: usize,
    /// When its packet arrived.
    pub at: Instant,
    /// Decoded, rebuilt from FEC, or concealed.
    pub origin: FrameOrigin,
    /// 960 samples, 48 kHz mono.
    pub pcm: Vec<i16>,
}

/// Decoded audio as it arrives, from [`Room::listen`].
pub struct Listener {
    frames: mpsc::Receiver<SlotFrame>,
    shared: Arc<Shared>,
}

impl Listener {
    /// The next frame; `None` once the media connection is gone.
    pub async fn next(&mut self) -> Option<AudioFrame> {
        let frame = self.frames.recv().await?;
        let speaker = self.shared.speakers().attribute(
            frame.slot,
            frame.turn,
            frame.at,
            mean_power(&frame.pcm),
        );
        Some(AudioFrame {
            speaker,
            slot: frame.slot,
            at: frame.at,
            origin: frame.origin,
            pcm: frame.pcm,
        })
    }
}

/// A participant in a live room.
///
/// Requests (`raise_hand`, `mute`, …) return once the server answered; the events they cause
/// arrive before that answer, so [`Room::view`] already shows their effect. Only moderators
/// may moderate: anyone else gets [`Error::Rejected`] with code `not_permitted`.
///
/// When the signaling connection drops, the room resumes it by itself within the server's
/// grace period ([`Event::Reconnecting`], then [`Event::Resumed`]); requests made meanwhile
/// wait for it. The media connection is kept; when the place had to be taken again (the room
/// moved to another node), a new one is made ([`Event::MediaReconnected`]). If the place
/// cannot be taken back, the room ends with [`Event::Closed`] (`resume_expired`).
pub struct Room {
    commands: mpsc::UnboundedSender<Command>,
    events: broadcast::Receiver<Event>,
    shared: Arc<Shared>,
    media: Option<Arc<MediaPeer>>,
    driver: Option<JoinHandle<()>>,
    joined: JoinAnswer,
}

impl Room {
    /// Redeems `link` and joins the room it is for: the signaling handshake, then (with
    /// [`JoinOptions::media`]) the media connection, connected.
    pub async fn join(link: &InviteLink, options: JoinOptions) -> Result<Room, Error> {
        let joined = redeem(link, &options.display_name, options.identity.as_deref()).await?;
        Room::enter(joined, options).await
    }

    /// Joins with an invite already redeemed.
    pub async fn enter(joined: JoinAnswer, options: JoinOptions) -> Result<Room, Error> {
        let session = Session::join(&joined).await?;
        let welcome = session.welcome().clone();
        let media = if options.media {
            let local_ip = match options.local_ip {
                Some(ip) => ip,
                None => route_to(&joined.signal_url).await?,
            };
            let mut config = MediaConfig::listener(&options.display_name, welcome.slots);
            config.local_ip = local_ip;
            config.tcp_only = options.tcp_only;
            config.keep_audio = options.keep_audio;
            Some(Arc::new(MediaPeer::new(config).await?))
        } else {
            None
        };
        let (events_tx, events) = broadcast::channel(EVENT_BUFFER);
        let shared = Arc::new(Shared {
            me: welcome.snapshot.you.id.clone(),
            view: Mutex::new(RoomView::new(&welcome.room_title, welcome.snapshot.clone())),
            speakers: Mutex::new(SpeakerMap::new(welcome.snapshot.you.id.clone())),
            events: Mutex::new(Some(events_tx)),
            listen_buffer: options.listen_buffer,
        });
        shared
            .speakers()
            .set_active(&welcome.snapshot.active_speakers, Instant::now());
        let (commands, command_rx) = mpsc::unbounded_channel();
        let driver = Driver {
            welcome,
            shared: shared.clone(),
            media: media.clone(),
            commands: command_rx,
            commands_tx: commands.downgrade(),
            pending: HashMap::new(),
            joined: joined.clone(),
        };
        let room = Room {
            commands,
            events,
            shared,
            media,
            driver: Some(tokio::spawn(driver.run(session))),
            joined,
        };
        // Negotiated through the driver, which keeps the socket read meanwhile.
        if let Some(media) = room.media.clone() {
            let connected = match media.negotiate_patiently(&mut room.channel()).await {
                Ok(()) => media.wait_connected(MEDIA_CONNECT).await,
                Err(error) => Err(error),
            };
            if let Err(error) = connected {
                // Out again, rather than leaving a place held for the grace period.
                let _ = room.leave().await;
                return Err(error);
            }
        }
        Ok(room)
    }

    /// This participant's id.
    pub fn me(&self) -> &ParticipantId {
        &self.shared.me
    }

    /// What the server answered when the invite was redeemed (the `identity` to come back
    /// with is in it).
    pub fn joined(&self) -> &JoinAnswer {
        &self.joined
    }

    /// The room as this client sees it now.
    pub fn view(&self) -> RoomView {
        self.shared.view().clone()
    }

    /// The next event. `None` once the room is over for this client and every event was
    /// read (the last one is [`Event::Closed`]).
    pub async fn next_event(&mut self) -> Option<Event> {
        match self.events.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Event::Missed(missed)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The media connection, if the room has one: its reports and history.
    pub fn media(&self) -> Option<&MediaPeer> {
        self.media.as_deref()
    }

    /// Hears the room: every decoded frame of every slot, as it arrives, with the speaker's
    /// id.
    ///
    /// The server does not say which participant each slot carries; the client infers it
    /// from `active_speakers` and the marks the server puts on a slot's first packet after
    /// its speaker changed. A frame's `speaker` is set once the slot's current turn matches
    /// exactly one active speaker no other slot carries, and `None` until then (usually for
    /// the first fraction of a second of a turn).
    pub fn listen(&self) -> Result<Listener, Error> {
        let media = self.media_peer()?;
        Ok(Listener {
            frames: media.subscribe(self.shared.listen_buffer),
            shared: self.shared.clone(),
        })
    }

    /// Starts the microphone, playing `source` (PCM in, Opus out). Only on stage: as a
    /// speaker, a moderator on stage, or after [`Room::accept_invitation`]. Leaving the stage
    /// (or being moved off it) stops it.
    pub async fn speak(&self, source: AudioSource) -> Result<(), Error> {
        let media = self.media_peer()?;
        if !self.shared.view().me().on_stage {
            return Err(Error::Usage(
                "only someone on stage can speak: accept an invitation first".to_owned(),
            ));
        }
        media.start_speaking(&mut self.channel(), source).await
    }

    /// Switches what the microphone plays, without renegotiating.
    pub fn set_source(&self, source: AudioSource) -> Result<(), Error> {
        self.media_peer()?.set_source(source)
    }

    /// Stops the microphone.
    pub async fn stop_speaking(&self) -> Result<(), Error> {
        self.media_peer()?.stop_speaking(&mut self.channel()).await
    }

    /// Sends any client message (see the protocol) and returns its answer; an `error` answer
    /// is an [`Error::Rejected`].
    pub async fn request(&self, message: Value) -> Result<Value, Error> {
        request(&self.commands, message).await
    }

    /// A listener raises a hand.
    pub async fn raise_hand(&self) -> Result<(), Error> {
        self.simple("raise_hand").await
    }

    /// A listener lowers their hand.
    pub async fn lower_hand(&self) -> Result<(), Error> {
        self.simple("lower_hand").await
    }

    /// An invited listener comes on stage as a speaker. Then [`Room::speak`].
    pub async fn accept_invitation(&self) -> Result<(), Error> {
        self.simple("accept_invitation").await
    }

    /// An invited listener says no.
    pub async fn decline_invitation(&self) -> Result<(), Error> {
        self.simple("decline_invitation").await
    }

    /// Someone on stage steps down (a speaker becomes a listener).
    pub async fn leave_stage(&self) -> Result<(), Error> {
        self.simple("leave_stage").await
    }

    /// A moderator in the audience steps onto the stage.
    pub async fn join_stage(&self) -> Result<(), Error> {
        self.simple("join_stage").await
    }

    /// Mutes oneself (on stage).
    pub async fn mute_self(&self) -> Result<(), Error> {
        self.simple("mute_self").await
    }

    /// Unmutes oneself (on stage).
    pub async fn unmute(&self) -> Result<(), Error> {
        self.simple("unmute").await
    }

    /// Moderators: invites a listener to the stage (they must accept).
    pub async fn invite_to_stage(&self, who: &ParticipantId) -> Result<(), Error> {
        self.about("invite_to_stage", who).await
    }

    /// Moderators: withdraws an invitation.
    pub async fn cancel_invitation(&self, who: &ParticipantId) -> Result<(), Error> {
        self.about("cancel_invitation", who).await
    }

    /// Moderators: lowers someone's raised hand.
    pub async fn lower_hand_of(&self, who: &ParticipantId) -> Result<(), Error> {
        self.about("lower_hand", who).await
    }

    /// Moderators: mutes someone on stage (they may unmute themselves).
    pub async fn mute(&self, who: &ParticipantId) -> Result<(), Error> {
        self.about("mute", who).await
    }

    /// Moderators: moves someone off the stage into the audience.
    pub async fn move_to_audience(&self, who: &ParticipantId) -> Result<(), Error> {
        self.about("move_to_audience", who).await
    }

    /// Moderators: removes someone from the room (they may come back through an invite).
    pub async fn remove(&self, who: &ParticipantId) -> Result<(), Error> {
        self.about("remove", who).await
    }

    /// Moderators: removes someone and bans their identity from the room; with
    /// `revoke_invite`, the invite they came through stops working too.
    pub async fn ban(&self, who: &ParticipantId, revoke_invite: bool) -> Result<(), Error> {
        self.request(json!({ "type": "ban", "participant": who, "revoke_invite": revoke_invite }))
            .await
            .map(|_| ())
    }

    /// Moderators: makes someone a moderator.
    pub async fn promote(&self, who: &ParticipantId) -> Result<(), Error> {
        self.about("promote", who).await
    }

    /// Moderators: takes the moderator role from someone (or from oneself).
    pub async fn demote(&self, who: &ParticipantId) -> Result<(), Error> {
        self.about("demote", who).await
    }

    /// Moderators: ends the room for everyone.
    pub async fn end_room(&self) -> Result<(), Error> {
        self.simple("end_room").await
    }

    /// Drops the signaling connection without a goodbye, as a lost network would; the room
    /// then resumes by itself. For testing a bot's (and the server's) handling of that.
    pub fn interrupt(&self) {
        let _ = self.commands.send(Command::Interrupt);
    }

    /// Leaves the room for good: the server is told, the media connection closes.
    pub async fn leave(mut self) -> Result<(), Error> {
        let answer = self.simple("leave").await;
        // The server closes the socket after its `ok`; the driver sees `left` and stops.
        if let Some(mut driver) = self.driver.take()
            && tokio::time::timeout(ANSWER_WAIT, &mut driver)
                .await
                .is_err()
        {
            driver.abort();
        }
        answer
    }

    fn media_peer(&self) -> Result<&MediaPeer, Error> {
        self.media
            .as_deref()
            .ok_or_else(|| Error::Usage("this room was joined without media".to_owned()))
    }

    fn channel(&self) -> RoomChannel {
        RoomChannel {
            commands: self.commands.clone(),
        }
    }

    async fn simple(&self, kind: &str) -> Result<(), Error> {
        self.request(json!({ "type": kind })).await.map(|_| ())
    }

    async fn about(&self, kind: &str, who: &ParticipantId) -> Result<(), Error> {
        self.request(json!({ "type": kind, "participant": who }))
            .await
            .map(|_| ())
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        // Without `leave`, the server sees a dropped connection and holds the place for the
        // grace period; the driver ends when its command channel closes.
        let _ = self.commands.send(Command::Stop);
    }
}

/// Sends a request through the driver and waits for its answer.
async fn request(
    commands: &mpsc::UnboundedSender<Command>,
    message: Value,
) -> Result<Value, Error> {
    let (reply, answer) = oneshot::channel();
    commands
        .send(Command::Request(message, reply))
        .map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?
}

fn gone() -> Error {
    Error::Closed {
        code: 1000,
        reason: "the room is closed".to_owned(),
    }
}

/// Media offers through the room's driver.
struct RoomChannel {
    commands: mpsc::UnboundedSender<Command>,
}

#[async_trait::async_trait]
impl OfferChannel for RoomChannel {
    async fn exchange(&mut self, offer_sdp: String) -> Result<String, Error> {
        let reply = request(
            &self.commands,
            json!({ "type": "media_offer", "sdp": offer_sdp }),
        )
        .await?;
        media_answer(&reply)
    }
}

enum Command {
    Request(Value, oneshot::Sender<Result<Value, Error>>),
    Interrupt,
    Stop,
}

/// What the room's handle and its driver share.
struct Shared {
    me: ParticipantId,
    view: Mutex<RoomView>,
    speakers: Mutex<SpeakerMap>,
    /// Where events go; taken when the room is over, so that readers see the end.
    events: Mutex<Option<broadcast::Sender<Event>>>,
    listen_buffer: usize,
}

impl Shared {
    fn view(&self) -> MutexGuard<'_, RoomView> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn speakers(&self) -> MutexGuard<'_, SpeakerMap> {
        self.speakers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies an event to the view and the speaker map, then hands it out.
    fn publish(&self, event: Event) {
        self.view().apply(&event);
        match &event {
            Event::ActiveSpeakers(speakers) => {
                self.speakers().set_active(speakers, Instant::now());
            }
            Event::Snapshot(snapshot) | Event::Resumed(snapshot) => {
                self.speakers()
                    .set_active(&snapshot.active_speakers, Instant::now());
            }
            _ => {}
        }
        // Nobody listening is fine: the view is current either way.
        if let Some(events) = &*self.events.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = events.send(event);
        }
    }

    /// The last event: after it, readers get `None`.
    fn end(&self, event: Event) {
        self.publish(event);
        self.events.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// The task that owns the signaling session.
struct Driver {
    /// The latest `welcome` (its resume token is the one to use).
    welcome: Welcome,
    shared: Arc<Shared>,
    media: Option<Arc<MediaPeer>>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// For stopping the microphone when the room moves us off stage (weak: the channel must
    /// close when the `Room` goes).
    commands_tx: mpsc::WeakUnboundedSender<Command>,
    pending: HashMap<u64, oneshot::Sender<Result<Value, Error>>>,
    /// The session token and the fallback address, for getting back in when the place is
    /// gone (its node died, the room moved).
    joined: JoinAnswer,
}

/// Why the driver's loop paused.
enum Interruption {
    /// The connection dropped: resume.
    Lost,
    /// The room moved to the node at this signaling address (its node is stopping): resume
    /// there, at once.
    Moved(String),
    /// The room is over for this client.
    Closed { code: u16, reason: String },
    /// The `Room` was dropped.
    Stopped,
}

impl Driver {
    async fn run(mut self, mut session: Session) {
        let (code, reason) = loop {
            let interruption = self.serve(&mut session).await;
            let url = match &interruption {
                Interruption::Moved(to) => to.clone(),
                _ => session.url().to_owned(),
            };
            // Dropped without a goodbye (the TCP connection closes).
            drop(session);
            match interruption {
                Interruption::Lost | Interruption::Moved(_) => {
                    self.fail_pending();
                    self.shared.publish(Event::Reconnecting);
                    match self.resume(&url).await {
                        Ok((resumed, fresh)) => {
                            session = resumed;
                            if fresh {
                                self.reconnect_media();
                            }
                        }
                        Err(error) => {
                            break (4403, error.code().unwrap_or("resume_failed").to_owned());
                        }
                    }
                }
                Interruption::Closed { code, reason } => break (code, reason),
                Interruption::Stopped => break (1000, "dropped".to_owned()),
            }
        };
        self.fail_pending();
        if let Some(media) = &self.media {
            media.close().await;
        }
        self.shared.end(Event::Closed { code, reason });
    }

    /// Reads the socket and takes requests until the connection drops or ends.
    async fn serve(&mut self, session: &mut Session) -> Interruption {
        // The reason a `closed` message gave, for the close that follows it.
        let mut closing: Option<String> = None;
        // Where a `moved` message sends us, for the close (4307 `room_elsewhere`) that follows.
        let mut moved: Option<String> = None;
        loop {
            tokio::select! {
                message = session.recv() => match message {
                    Ok(message) => {
                        if message["type"] == "closed" {
                            closing = message["reason"].as_str().map(str::to_owned);
                        }
                        if message["type"] == "moved" {
                            moved = message["signal_url"].as_str().map(str::to_owned);
                            continue;
                        }
                        self.handle(message);
                    }
                    Err(Error::Closed { code, reason }) => {
                        let reason = closing.take().unwrap_or(reason);
                        // Told where the room went, and then the close, or a connection that
                        // broke before it came: go there either way.
                        if (reason == "room_elsewhere" || resumable(code, &reason))
                            && let Some(to) = moved.take()
                        {
                            return Interruption::Moved(to);
                        }
                        if resumable(code, &reason) {
                            return Interruption::Lost;
                        }
                        return Interruption::Closed { code, reason };
                    }
                    // A frame that is not JSON: nothing to act on.
                    Err(_) => {}
                },
                command = self.commands.recv() => match command {
                    Some(Command::Request(message, reply)) => {
                        match session.send_request(message).await {
                            Ok(id) => {
                                self.pending.insert(id, reply);
                            }
                            Err(error) => {
                                let _ = reply.send(Err(error));
                            }
                        }
                    }
                    Some(Command::Interrupt) => return Interruption::Lost,
                    Some(Command::Stop) | None => return Interruption::Stopped,
                },
            }
        }
    }

    /// An answer goes to its request; an event to the view and the room's reader.
    fn handle(&mut self, message: Value) {
        if let Some(id) = message["id"].as_u64()
            && let Some(reply) = self.pending.remove(&id)
        {
            let answer = if message["type"] == "error" {
                Err(rejected(&message))
            } else {
                Ok(message)
            };
            let _ = reply.send(answer);
            return;
        }
        let Some(event) = crate::protocol::Event::parse(&message) else {
            return;
        };
        if let Event::LeftStage { participant, .. } | Event::RoleChanged { participant, .. } =
            &event
            && participant.id == self.shared.me
            && !participant.on_stage
        {
            self.stop_microphone();
        }
        self.shared.publish(event);
    }

    /// Off the stage the server no longer hears us: stop sending (a renegotiation, so not in
    /// this loop, which must go on reading for its answer).
    fn stop_microphone(&self) {
        let (Some(media), Some(commands)) = (self.media.clone(), self.commands_tx.upgrade()) else {
            return;
        };
        if !media.speaking() {
            return;
        }
        tokio::spawn(async move {
            let _ = media.stop_speaking(&mut RoomChannel { commands }).await;
        });
    }

    /// A place taken again is a new participant session, which has no media connection on
    /// the server: make a new one (negotiated through this loop, so not in it), keeping the
    /// microphone if still on stage.
    fn reconnect_media(&self) {
        let (Some(media), Some(commands)) = (self.media.clone(), self.commands_tx.upgrade()) else {
            return;
        };
        let on_stage = self.welcome.snapshot.you.on_stage;
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let mut channel = RoomChannel { commands };
            let connected = match media.reconnect(&mut channel, on_stage).await {
                Ok(()) => media.wait_connected(MEDIA_CONNECT).await,
                Err(error) => Err(error),
            };
            shared.publish(match connected {
                Ok(()) => Event::MediaReconnected,
                Err(error) => Event::MediaLost(error.to_string()),
            });
        });
    }

    /// Takes the place back with the latest resume token, retrying within the grace period;
    /// every other attempt goes to the fallback address (in a cluster any node answers it and
    /// sends us where the room lives). A place no longer held (the grace period passed, or the
    /// room's node died and the room lives elsewhere now) is taken again with the session
    /// token while it is valid: the role comes back with it, and the answer says `fresh`.
    async fn resume(&mut self, url: &str) -> Result<(Session, bool), Error> {
        let deadline = Instant::now() + Duration::from_secs(self.welcome.resume_grace_secs);
        let mut urls = vec![url.to_owned()];
        if let Some(fallback) = &self.joined.fallback_signal_url
            && fallback != url
        {
            urls.push(fallback.clone());
        }
        let mut pause = RESUME_BACKOFF;
        for attempt in 0.. {
            let target = &urls[attempt % urls.len()];
            let outcome = match Session::resume(target, &self.welcome.resume_token).await {
                Err(Error::Rejected { code, .. }) if code == "resume_expired" => {
                    Session::join_at(target, &self.joined.token)
                        .await
                        .map(|session| (session, true))
                }
                other => other.map(|session| (session, false)),
            };
            match outcome {
                Ok((session, fresh)) => {
                    self.welcome = session.welcome().clone();
                    // Resumed on a node the room moved to, which kept our place but has no
                    // media connection of ours.
                    let fresh = fresh || self.welcome.reconnect_media;
                    self.shared
                        .publish(Event::Resumed(Box::new(self.welcome.snapshot.clone())));
                    return Ok((session, fresh));
                }
                // The server will not take us back: give up. Unless it only cannot say yet
                // where the room lives: an edge whose room's node died a moment ago, or a node
                // cut off from Redis; that passes, and the next attempt finds the room.
                Err(error @ Error::Rejected { .. }) if !passing(&error) => return Err(error),
                Err(error) if Instant::now() + pause > deadline => return Err(error),
                // The other address is tried at once; the pause grows once both failed.
                Err(_) if attempt % urls.len() + 1 < urls.len() => {}
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RESUME_BACKOFF_MAX);
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// Requests sent on a connection that dropped get no answer; tell their callers.
    fn fail_pending(&mut self) {
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(Error::Transport(
                "the connection dropped before the answer; the request may or may not have \
                 been carried out"
                    .to_owned(),
            )));
        }
    }
}

/// Whether a refused handshake is worth trying again: the server could not find out where the
/// room lives just now (`node_unreachable`, `cluster_unavailable`; see the protocol's close
/// codes 1012 and 1013), which says nothing about the place being held.
fn passing(error: &Error) -> bool {
    matches!(
        error.code(),
        Some("node_unreachable" | "cluster_unavailable")
    )
}

/// Whether a closed connection is worth resuming: it broke, or the server closed it for a
/// reason that leaves the place held (a ping timeout, a slow reader, a restart).
fn resumable(code: u16, reason: &str) -> bool {
    code == 1006
        || code == 1001
        || matches!(reason, "ping_timeout" | "too_slow" | "server_restarting")
}

/// The local address that routes to the host of `url`.
async fn route_to(url: &str) -> Result<IpAddr, Error> {
    let parsed = reqwest::Url::parse(url).map_err(|e| Error::Protocol(format!("{url}: {e}")))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| Error::Protocol(format!("{url} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let server = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| Error::Transport(format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| Error::Transport(format!("{host} has no address")))?
        .ip();
    if server.is_loopback() {
        return Ok(server);
    }
    let any: std::net::SocketAddr = match server {
        IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    // Connecting a UDP socket sends nothing; it only asks the kernel for the route.
    let socket = std::net::UdpSocket::bind(any)?;
    socket.connect((server, 9))?;
    Ok(socket.local_addr()?.ip())
}

/// Which participant each slot carries, as far as the server's events tell (see
/// [`Room::listen`]).
struct SpeakerMap {
    me: ParticipantId,
    /// Speaking now by the latest `active_speakers`, without us, and when that came.
    active: Vec<ParticipantId>,
    active_at: Option<Instant>,
    slots: Vec<SlotTurn>,
}

#[derive(Clone, Debug, Default)]
struct SlotTurn {
    turn: u64,
    /// When the turn's first frame came.
    since: Option<Instant>,
    /// The latest frame.
    last: Option<Instant>,
    speaker: Option<ParticipantId>,
    /// Who the slot carried in the turn before.
    previous: Option<ParticipantId>,
    /// Smoothed power of the turn's frames.
    power: f64,
}

impl SpeakerMap {
    fn new(me: ParticipantId) -> Self {
        SpeakerMap {
            me,
            active: Vec::new(),
            active_at: None,
            slots: Vec::new(),
        }
    }

    fn set_active(&mut self, speakers: &[ParticipantId], at: Instant) {
        self.active = speakers
            .iter()
            .filter(|s| **s != self.me)
            .cloned()
            .collect();
        self.active_at = Some(at);
        // A slot whose speaker stopped speaking may carry someone else by now (not every
        // change of speaker is marked in the stream): name it anew.
        for slot in &mut self.slots {
            if slot
                .speaker
                .as_ref()
                .is_some_and(|s| !self.active.contains(s))
            {
                slot.previous = slot.speaker.take();
                slot.since = None;
            }
        }
    }

    /// The speaker of a frame of `slot`'s turn `turn` that arrived `at` with mean power
    /// `power`, if it can be told.
    ///
    /// A turn that has run for [`SETTLE`] is matched to the one active speaker that no other
    /// live slot carries. Turns that run together (several unknown slots, as many candidates)
    /// are matched by loudness: `active_speakers` comes loudest first, so when the slots'
    /// levels are clearly apart, the loudest slot is the first candidate, and so on.
    fn attribute(
        &mut self,
        slot: usize,
        turn: u64,
        at: Instant,
        power: f64,
    ) -> Option<ParticipantId> {
        if self.slots.len() <= slot {
            self.slots.resize(slot + 1, SlotTurn::default());
        }
        let entry = &mut self.slots[slot];
        let idle = entry
            .last
            .is_none_or(|last| at.duration_since(last) > SLOT_IDLE);
        if entry.turn != turn || entry.since.is_none() || idle {
            entry.previous = entry.speaker.take().or(entry.previous.take());
            entry.turn = turn;
            entry.since = Some(at);
            entry.power = power;
        }
        entry.power += POWER_WEIGHT * (power - entry.power);
        entry.last = Some(at);
        if entry.speaker.is_some() {
            return entry.speaker.clone();
        }
        let since = entry.since.unwrap_or(at);
        if at.duration_since(since) < SETTLE {
            return None;
        }
        // An `active_speakers` older than the turn may still name the slot's previous
        // speaker, whose place this turn took.
        let stale = self.active_at.is_none_or(|t| t < since);
        let previous = entry.previous.clone();
        let live = |t: &SlotTurn| {
            t.last
                .is_some_and(|last| at.duration_since(last) <= SLOT_IDLE)
        };
        // The live slots nobody is named for yet, this one included.
        let mut unknown = vec![(slot, self.slots[slot].power)];
        let mut taken = Vec::new();
        for (i, other) in self.slots.iter().enumerate() {
            if i == slot || !live(other) {
                continue;
            }
            match &other.speaker {
                Some(who) => taken.push(who.clone()),
                None => unknown.push((i, other.power)),
            }
        }
        let candidates: Vec<&ParticipantId> = self
            .active
            .iter()
            .filter(|p| !taken.contains(p))
            .filter(|p| !(stale && previous.as_ref() == Some(*p)))
            .collect();
        let speaker = match (candidates.as_slice(), unknown.len()) {
            ([only], 1) => (*only).clone(),
            // Only a list that came after these turns began, or turns that follow nobody (the
            // first this client hears), can be matched by order.
            (_, n)
                if n > 1
                    && candidates.len() == n
                    && (!stale
                        || unknown
                            .iter()
                            .all(|&(i, _)| self.slots[i].previous.is_none())) =>
            {
                unknown.sort_by(|a, b| b.1.total_cmp(&a.1));
                if !unknown.windows(2).all(|w| w[0].1 >= LOUDER * w[1].1) {
                    return None;
                }
                let rank = unknown.iter().position(|&(i, _)| i == slot)?;
                candidates[rank].clone()
            }
            _ => return None,
        };
        self.slots[slot].speaker = Some(speaker.clone());
        Some(speaker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ParticipantId {
        ParticipantId::new(s)
    }

    /// Frames of `slot`'s turn `turn` every 20 ms over `from..=to` ms, on one or two slots
    /// at once; the names the last frames got.
    fn frames(
        map: &mut SpeakerMap,
        t0: Instant,
        slots: &[(usize, u64, f64)],
        from: u64,
        to: u64,
    ) -> Vec<Option<ParticipantId>> {
        let mut last = vec![None; slots.len()];
        for t in (from..=to).step_by(20) {
            for (i, &(slot, turn, power)) in slots.iter().enumerate() {
                last[i] = map.attribute(slot, turn, t0 + Duration::from_millis(t), power);
            }
        }
        last
    }

    #[test]
    fn a_slot_is_attributed_only_when_one_active_speaker_fits() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut map = SpeakerMap::new(id("me"));
        // Audio before anyone is known to speak: unknown.
        assert_eq!(frames(&mut map, t0, &[(0, 1, 1.0)], 0, 100), [None]);
        // We never hear ourselves: our own id does not count. A young turn is not named yet.
        map.set_active(&[id("me"), id("ann")], ms(110));
        assert_eq!(frames(&mut map, t0, &[(0, 1, 1.0)], 120, 580), [None]);
        assert_eq!(
            frames(&mut map, t0, &[(0, 1, 1.0)], 600, 600),
            [Some(id("ann"))]
        );
        // A second slot starts while the list still says only Ann: unknown, not Ann.
        let both = [(0, 1, 1.0), (1, 1, 1.0)];
        assert_eq!(
            frames(&mut map, t0, &both, 620, 1400),
            [Some(id("ann")), None]
        );
        map.set_active(&[id("bob"), id("ann")], ms(1410));
        assert_eq!(
            frames(&mut map, t0, &both, 1420, 1420),
            [Some(id("ann")), Some(id("bob"))]
        );

        // Slot 0 switches to Cid (a new turn) before the list changes: the stale list still
        // names Ann, who was this slot's speaker, so nobody is named until the list catches up.
        let switched = [(0, 2, 1.0), (1, 1, 1.0)];
        assert_eq!(
            frames(&mut map, t0, &switched, 1440, 2200),
            [None, Some(id("bob"))]
        );
        map.set_active(&[id("cid"), id("bob")], ms(2210));
        assert_eq!(
            frames(&mut map, t0, &switched, 2220, 2220),
            [Some(id("cid")), Some(id("bob"))]
        );

        // Cid stops and Dan takes the slot without a mark: the list names Dan, not Cid, and
        // the slot is named anew once Dan's turn has run.
        map.set_active(&[id("dan"), id("bob")], ms(2230));
        assert_eq!(
            frames(&mut map, t0, &switched, 2240, 2800),
            [None, Some(id("bob"))]
        );
        assert_eq!(
            frames(&mut map, t0, &switched, 2820, 2860),
            [Some(id("dan")), Some(id("bob"))]
        );

        // Two turns start at once with two new speakers, as loud as each other: ambiguous.
        let mut map = SpeakerMap::new(id("me"));
        map.set_active(&[id("ann"), id("bob")], ms(0));
        assert_eq!(frames(&mut map, t0, &both, 10, 1500), [None, None]);
        // An idle slot no longer holds anyone back.
        map.set_active(&[id("ann")], ms(2000));
        assert_eq!(
            frames(&mut map, t0, &[(0, 1, 1.0)], 2100, 2800),
            [Some(id("ann"))]
        );

        // The same, but one is clearly louder: told apart by the order of `active_speakers`.
        let mut map = SpeakerMap::new(id("me"));
        map.set_active(&[id("loud"), id("soft")], ms(0));
        assert_eq!(
            frames(&mut map, t0, &[(0, 1, 1.0), (1, 1, 100.0)], 10, 640),
            [Some(id("soft")), Some(id("loud"))]
        );
    }
}
