//! Stream URLs that reconnect: an RTMP server that restarts, or a network blip, must not end a
//! 24/7 restream. A URL that was live and fails is connected again after 1, 2, 4… s (at most
//! 10 s apart) until it is live again or its outage lasts `[server] stream_reconnect_timeout`;
//! meanwhile the other outputs go on and the egress stays up even with no output connected.
//! A URL that never connected fails at once (a wrong URL or key is not an outage).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::media::outputs::{MediaEvent, OutputState, OutputStatus};

const MAX_DELAY: Duration = Duration::from_secs(10);
/// A try that ran this long and sent bytes connected: its failure is a new outage. (srtsink
/// takes bytes before its handshake, so bytes alone do not prove a connection.)
const CONNECTED_RUN: Duration = Duration::from_secs(10);
/// srtsink gives up connecting after about 3 s: an SRT URL failing sooner after its first
/// bytes never connected, unless the failure is an error on a connected socket ("Error on
/// SRT socket": the peer went away; never connecting says "Connection does not exist").
const SRT_CONNECT: f64 = 5.0;
const SRT_CONNECTED_ERROR: &str = "Error on SRT socket";

/// One URL's outage: since when, how many tries, and its bytes and time when the last try
/// was made (more bytes since then, over a long enough run, means that try connected and a
/// new outage begins).
struct Outage {
    since: Instant,
    attempts: u32,
    bytes_at_try: u64,
    tried_at: Instant,
}

pub struct StreamRetries {
    timeout: Duration,
    outages: HashMap<String, Outage>,
    /// URLs waiting for their next try, with their status.
    waiting: HashMap<String, Arc<OutputStatus>>,
}

impl StreamRetries {
    pub fn new(timeout: Duration) -> Self {
        StreamRetries { timeout, outages: HashMap::new(), waiting: HashMap::new() }
    }

    /// A stream URL's connection failed. Returns true when it will be tried again (its status
    /// shows the error and one more retry), false when it fails for good.
    pub fn on_failure(
        &mut self,
        status: &Arc<OutputStatus>,
        error: &str,
        events: &UnboundedSender<MediaEvent>,
    ) -> bool {
        let bytes = status.bytes.load(std::sync::atomic::Ordering::Relaxed);
        let url = status.target.clone();
        let srt = url.to_ascii_lowercase().starts_with("srt://");
        let first_failure = !self.outages.contains_key(&url);
        let ran = status.snapshot().started_at.map_or(0.0, |t| crate::clock::now() - t);
        let never_connected =
            bytes == 0 || (srt && first_failure && ran < SRT_CONNECT && !error.contains(SRT_CONNECTED_ERROR));
        if never_connected || self.timeout.is_zero() {
            return false;
        }
        let fresh = || Outage { since: Instant::now(), attempts: 0, bytes_at_try: 0, tried_at: Instant::now() };
        let outage = self.outages.entry(url.clone()).or_insert_with(fresh);
        if outage.attempts > 0 && bytes > outage.bytes_at_try && outage.tried_at.elapsed() >= CONNECTED_RUN {
            *outage = fresh();
        }
        let elapsed = outage.since.elapsed();
        if elapsed >= self.timeout {
            tracing::warn!(
                url = %crate::media::outputs::stream::redact_stream_url(&url),
                tries = outage.attempts,
                seconds = elapsed.as_secs(),
                "stream still failing after its reconnect timeout; giving up on it"
            );
            self.outages.remove(&url);
            return false;
        }
        // The last try falls on the timeout, not after it.
        let delay = Duration::from_secs(1u64 << outage.attempts.min(4)).min(MAX_DELAY).min(self.timeout - elapsed);
        outage.attempts += 1;
        outage.bytes_at_try = bytes;
        outage.tried_at = Instant::now() + delay;
        status.note_retry(format!("reconnecting (try {}): {error}", outage.attempts));
        tracing::warn!(url = %crate::media::outputs::stream::redact_stream_url(&url), %error, ?delay, "stream failed; reconnecting");
        self.waiting.insert(url.clone(), status.clone());
        let events = events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(MediaEvent::Reconnect(url));
        });
        true
    }

    /// The URL whose wait is over, if it still waits (not removed meanwhile).
    pub fn take_due(&mut self, url: &str) -> Option<Arc<OutputStatus>> {
        self.waiting.remove(url)
    }

    /// UpdateStream removed a URL that was waiting: it is finished.
    pub fn remove(&mut self, url: &str) -> bool {
        self.outages.remove(url);
        match self.waiting.remove(url) {
            Some(status) => {
                status.set_state(OutputState::Complete, None);
                true
            }
            None => false,
        }
    }

    /// URLs between tries: outputs the egress still has.
    /// Whether `url` waits to reconnect.
    pub fn is_waiting(&self, url: &str) -> bool {
        self.waiting.contains_key(url)
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The egress is ending: a URL still reconnecting failed with its last error.
    pub fn give_up(&mut self) {
        for (_, status) in self.waiting.drain() {
            let last = status.snapshot().error.unwrap_or_default();
            status.set_state(OutputState::Failed, Some(format!("ended while {last}")));
        }
        self.outages.clear();
    }
}
