//! Round-trip estimation on a successor link, and the failure timeout it
//! implies.
//!
//! Every ping is answered by a pong; the time between them is one sample
//! of the link's round trip as the two processes see it (network, kernel
//! queues, both runtimes). The estimator is TCP's (RFC 6298 §2, Jacobson
//! and Karels): `srtt` and `rttvar` are smoothed with gains 1/8 and 1/4,
//! and `rto = srtt + 4 × rttvar` bounds how long a round trip takes on
//! this link, jitter included.
//!
//! # The failure timeout of a link
//!
//! A healthy link falls silent only while TCP recovers a lost segment:
//! the heartbeats sent after it make the receiver's SACKs reveal the loss
//! (RACK), and the segment is resent after about one round trip plus the
//! heartbeat interval; if the resend is lost too, once more. So a member
//! is declared dead after `max(configured, 3 × rto + heartbeat)`: three
//! round trips of slack covers a segment lost twice in a row on the
//! slowest link seen, and on links with round trips well under 100 ms
//! (a LAN, a datacentre, most WANs) the configured timeout
//! (`--failure-timeout-ms`, default 500 ms) is the larger and applies
//! unchanged. Measured on shaped links (`cargo bench --bench fleet --
//! calm`): no false failure in 10 minutes at 5 % loss with the default;
//! see the README, "A real fleet".

use std::time::Duration;

/// RFC 6298 smoothed round trip and variation of one link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl RttEstimator {
    /// Takes one round-trip sample.
    pub fn sample(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + err) / 4;
                self.srtt = Some((srtt * 7 + r) / 8);
            }
        }
    }

    /// The smoothed round trip, once a sample came in.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// `srtt + 4 × rttvar`, once a sample came in.
    pub fn rto(&self) -> Option<Duration> {
        self.srtt.map(|s| s + self.rttvar * 4)
    }

    /// The failure timeout of the link: `max(configured, 3 × rto +
    /// heartbeat)` (module docs); `configured` until a sample came in.
    pub fn failure_timeout(&self, configured: Duration, heartbeat: Duration) -> Duration {
        self.rto()
            .map_or(configured, |rto| configured.max(rto * 3 + heartbeat))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_first_sample_sets_srtt_and_half_of_it_as_variation() {
        let mut e = RttEstimator::default();
        assert_eq!(e.rto(), None);
        e.sample(MS * 40);
        assert_eq!(e.srtt(), Some(MS * 40));
        assert_eq!(e.rto(), Some(MS * 120));
    }

    #[test]
    fn steady_samples_shrink_the_variation_and_jitter_grows_it() {
        let mut e = RttEstimator::default();
        for _ in 0..50 {
            e.sample(MS * 40);
        }
        let steady = e.rto().expect("sampled");
        assert!(steady < MS * 41, "{steady:?}");
        for i in 0..50 {
            e.sample(MS * if i % 2 == 0 { 20 } else { 60 });
        }
        let jittery = e.rto().expect("sampled");
        assert!(jittery > MS * 100, "{jittery:?}");
    }

    #[test]
    fn short_round_trips_keep_the_configured_timeout_and_long_ones_raise_it() {
        let (configured, heartbeat) = (MS * 500, MS * 100);
        let mut lan = RttEstimator::default();
        assert_eq!(lan.failure_timeout(configured, heartbeat), configured);
        for _ in 0..20 {
            lan.sample(MS * 2);
        }
        assert_eq!(lan.failure_timeout(configured, heartbeat), configured);
        // An intercontinental link: 300 ms round trips.
        let mut far = RttEstimator::default();
        for _ in 0..20 {
            far.sample(MS * 300);
        }
        let t = far.failure_timeout(configured, heartbeat);
        assert!(t >= MS * 1000, "{t:?}");
    }
}
