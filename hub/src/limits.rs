//! The bounds on what one client can make the hub hold, each with its default, and the pure pieces
//! that apply them ([`TokenBucket`], the echo helpers). Each bound is a config field of the same name
//! (`docs/hub.md`); `docs/security.md` states what each protects.

use std::time::{Duration, Instant};

/// Every bound the hub enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest webhook body accepted (413 above it).
    pub max_body_bytes: usize,
    /// Webhook body bytes held at once, over every request being read or verified (503 when full).
    pub max_body_bytes_in_flight: usize,
    /// Largest request head (request line and headers; 431 above it), which is also the most hyper
    /// buffers per connection.
    pub max_header_bytes: usize,
    /// Connections served at once (agents, and separately HTTP connections).
    pub max_connections: usize,
    /// Websocket connections one agent (one token) may hold at once.
    pub max_connections_per_agent: usize,
    /// Largest websocket message (and frame) an agent may send.
    pub max_agent_message_bytes: usize,
    /// Largest watch set accepted from one agent.
    pub max_watched_repos: usize,
    /// Watch updates one agent may send at once before they are rate limited.
    pub watch_update_burst: u32,
    /// After the burst, one watch update per this interval; a faster one waits, and a newer one
    /// replaces it while it waits (latest wins).
    pub watch_update_interval: Duration,
    /// At most about this many bytes of client input (repository names, parse errors) are echoed
    /// back in an answer or a log line; the rest is counted, not repeated.
    pub max_echo_bytes: usize,
    /// Time from a request's first byte (or, on a kept-alive connection, from the previous answer) to
    /// the end of its head; also bounds the TLS handshake.
    pub header_read_timeout: Duration,
    /// Time to receive a webhook body once its head arrived (408 after it).
    pub body_read_timeout: Duration,
    /// An HTTP connection on which no byte moves either way for this long is closed (a stalled
    /// reader, a stuck request). Agent websockets have their own keepalive instead.
    pub idle_timeout: Duration,
    /// CI requests relayed through one agent's tunnels at once (429 above it). At most
    /// [`MAX_TUNNEL_STREAMS_PER_AGENT`].
    pub max_tunnel_streams_per_agent: usize,
    /// How long a CI request waits for its agent's tunnel to (re)connect before it gets 503.
    pub tunnel_wait: Duration,
    /// `GitRepository` records the fleet view keeps per agent; more are refused, said back to it.
    pub max_fleet_records_per_agent: usize,
}

/// The highest `max_tunnel_streams_per_agent`: below the tunnel's own stream limit, which the
/// operator's end enforces by closing the whole tunnel.
pub const MAX_TUNNEL_STREAMS_PER_AGENT: usize = tether_protocol::tunnel::MAX_STREAMS - 48;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // GitHub's own maximum is 25 MiB, but push payloads are small.
            max_body_bytes: 1024 * 1024,
            max_body_bytes_in_flight: 64 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            max_connections: 20_000,
            // One leader per cluster connects; a few more cover reconnects that race the hub
            // noticing the old connection is dead.
            max_connections_per_agent: 8,
            max_agent_message_bytes: 1024 * 1024,
            max_watched_repos: 10_000,
            watch_update_burst: 10,
            watch_update_interval: Duration::from_secs(1),
            max_echo_bytes: 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            // 1,000 concurrent watches through one cluster, with room for the requests beside them.
            max_tunnel_streams_per_agent: 1024,
            tunnel_wait: Duration::from_secs(5),
            max_fleet_records_per_agent: 10_000,
        }
    }
}

/// The smallest `max_header_bytes`: hyper refuses a smaller read buffer.
pub const MIN_HEADER_BYTES: usize = 8192;

/// A duration written as a whole number and a unit: `500ms`, `10s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u32 = number.parse().ok()?;
    let unit = match unit {
        "ms" => Duration::from_millis(1),
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return None,
    };
    unit.checked_mul(n)
}

/// A token bucket: `burst` tokens, one more every `interval`. Time is passed in, so it is exact to
/// test.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    burst: u32,
    interval: Duration,
    tokens: u32,
    /// When the next token started to accrue.
    since: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(burst: u32, interval: Duration, now: Instant) -> Self {
        let burst = burst.max(1);
        Self {
            burst,
            interval,
            tokens: burst,
            since: now,
        }
    }

    /// Take a token at `now`, or say when the next one is due.
    pub fn take(&mut self, now: Instant) -> Result<(), Instant> {
        if self.tokens < self.burst && !self.interval.is_zero() {
            let elapsed = now.saturating_duration_since(self.since);
            let earned = elapsed.as_nanos() / self.interval.as_nanos();
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(self.burst);
            self.since += self.interval * earned.min(self.burst);
        }
        if self.interval.is_zero() {
            self.tokens = self.burst;
        }
        if self.tokens == self.burst {
            // A full bucket earns nothing: the clock starts with the first token taken.
            self.since = now;
        }
        if self.tokens == 0 {
            return Err(self.since + self.interval);
        }
        self.tokens -= 1;
        Ok(())
    }
}

/// As many of `names` as fit in `max_bytes` (counting a separator of two bytes between them), and
/// how many were left out. A first name longer than the budget is cut to it.
pub fn echo_names<'a>(
    names: impl IntoIterator<Item = &'a str>,
    max_bytes: usize,
) -> (Vec<&'a str>, usize) {
    let mut shown = Vec::new();
    let mut used = 0;
    let mut left_out = 0;
    for name in names {
        let cost = name.len() + if shown.is_empty() { 0 } else { 2 };
        if left_out == 0 && used + cost <= max_bytes {
            shown.push(name);
            used += cost;
        } else if shown.is_empty() {
            shown.push(truncate(name, max_bytes));
            used = max_bytes;
        } else {
            left_out += 1;
        }
    }
    (shown, left_out)
}

/// [`echo_names`] as text: `a, b and 3 more`.
pub fn echo_list<'a>(names: impl IntoIterator<Item = &'a str>, max_bytes: usize) -> String {
    let (shown, left_out) = echo_names(names, max_bytes);
    let mut text = shown.join(", ");
    if left_out > 0 {
        text.push_str(&format!(" and {left_out} more"));
    }
    text
}

/// `text` cut to `max_bytes`, saying how long it was, for messages that quote client input.
pub fn echo_text(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        text.to_string()
    } else {
        format!("{}... ({} bytes)", truncate(text, max_bytes), text.len())
    }
}

fn truncate(text: &str, max_bytes: usize) -> &str {
    let mut end = max_bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_whole_number_and_a_unit() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration(" 5m "), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in ["", "10", "s", "1.5s", "-1s", "10 s", "1d", "99999999999h"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_bucket_gives_its_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut b = TokenBucket::new(2, second, t0);
        assert_eq!(b.take(t0), Ok(()));
        assert_eq!(b.take(t0), Ok(()));
        assert_eq!(b.take(t0), Err(t0 + second));
        assert_eq!(b.take(t0 + second / 2), Err(t0 + second));
        assert_eq!(b.take(t0 + second), Ok(()));
        assert_eq!(b.take(t0 + second), Err(t0 + 2 * second));
        assert_eq!(b.take(t0 + 3 * second), Ok(()));
        assert_eq!(b.take(t0 + 3 * second), Ok(()));
        assert_eq!(b.take(t0 + 3 * second), Err(t0 + 4 * second));
        // A long pause refills to the burst, no more.
        let later = t0 + 100 * second;
        assert_eq!(b.take(later), Ok(()));
        assert_eq!(b.take(later), Ok(()));
        assert_eq!(b.take(later), Err(later + second));
    }

    #[test]
    fn echoes_list_what_fits_and_count_the_rest() {
        let names = ["aaaa", "bbbb", "cccc", "dddd"];
        assert_eq!(echo_list(names, 100), "aaaa, bbbb, cccc, dddd");
        assert_eq!(echo_list(names, 10), "aaaa, bbbb and 2 more");
        assert_eq!(echo_names(names, 10), (vec!["aaaa", "bbbb"], 2));
        assert_eq!(echo_list(["a-very-long-name", "b"], 6), "a-very and 1 more");
        assert_eq!(echo_text("short", 10), "short");
        assert_eq!(echo_text("héllo", 2), "h... (6 bytes)");
    }
}
