//! Pieces shared by the tools that drive many `rtc` sans-IO WebRTC clients from one thread
//! (`stoa-loadgen`, `stoa-media-bench`): an epoll set over their UDP sockets and the media
//! engine a browser-like client offers.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use rtc::interceptor::{ReceiverReportBuilder, Registry, SenderReportBuilder, Slot};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use stoa::media::engine::media_engine;

/// An epoll set of UDP sockets, each registered with a token (the client's index).
pub struct Poller {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
}

impl Poller {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain system call.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Poller {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 512],
        })
    }

    pub fn add(&self, fd: RawFd, token: usize) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token as u64,
        };
        // SAFETY: valid descriptors and event pointer.
        if unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn wait(&mut self, timeout: Duration, ready: &mut Vec<usize>) {
        ready.clear();
        let ms = timeout.as_micros().div_ceil(1000).min(1000) as i32;
        // SAFETY: the buffer holds `events.len()` entries.
        let n = unsafe {
            libc::epoll_wait(
                self.fd,
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                ms,
            )
        };
        ready.extend(
            self.events
                .iter()
                .take(n.max(0) as usize)
                .map(|e| e.u64 as usize),
        );
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.fd) };
    }
}

/// What a browser offers for Stoa, minus the extras: Opus 111 and the audio-level extension,
/// with receiver and sender reports.
pub fn client_engine() -> Result<(MediaEngine, Registry), rtc::shared::error::Error> {
    // The server's own engine is exactly that: Opus 111 and the audio-level extension.
    let registry = Registry::new()
        .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
        .with(Slot::SenderReport, SenderReportBuilder::new().build());
    Ok((media_engine()?, registry))
}
