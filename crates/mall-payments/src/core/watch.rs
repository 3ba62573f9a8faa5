//! Tries given up whose provider may still charge. For `watch_ms` after a
//! try is voided, a sweep asks its provider now and then whether it
//! charged after all (a callback may never come); a charge is handed back.
//! The sweep also re-sends provider refunds that did not go through
//! (refund ids are idempotent at the provider).

use super::decide::{ProviderRefund, Why};
use super::{Core, IoReply, Op, ProviderCall, ProviderStatus};
use super::{STATUS_IN_FLIGHT_MAX, SWEEP_QUERIES_MAX, WATCH_MAX};

impl Core {
    /// Watches a try given up at `channel`.
    pub(super) fn watch_try(&mut self, id: u64, channel: usize) {
        let until = self.now.wall.0 + self.config.watch_ms;
        if self.watch.len() >= WATCH_MAX {
            self.watch.pop_front();
            tracing::warn!("too many tries given up at once; the oldest is no longer watched");
        }
        self.watch.push_back((id, channel, until));
    }

    /// Asks providers about watched tries (a bounded number at a time),
    /// then re-sends provider refunds.
    pub(super) fn sweep(&mut self) {
        let room = STATUS_IN_FLIGHT_MAX.saturating_sub(self.statuses_in_flight);
        let n = self.watch.len().min(SWEEP_QUERIES_MAX).min(room);
        let due: Vec<(u64, usize, i64)> = self.watch.drain(..n).collect();
        for (id, channel, until) in due {
            if self.now.wall.0 > until || channel >= self.config.channels.len() {
                continue;
            }
            self.statuses_in_flight += 1;
            self.provider(
                Op::Status(id, channel, until),
                channel,
                ProviderCall::Status { payment: id },
            );
        }
        let n = self.provider_refunds.len().min(SWEEP_QUERIES_MAX);
        let refunds: Vec<ProviderRefund> = self.provider_refunds.drain(..n).collect();
        for r in refunds {
            self.send_refund(r);
        }
    }

    /// A watched try's status: a charge is handed back, a failure or an
    /// unknown payment ends the watch, a pending one is asked again.
    pub(super) fn status_reply(&mut self, id: u64, channel: usize, until: i64, reply: IoReply) {
        self.statuses_in_flight = self.statuses_in_flight.saturating_sub(1);
        match reply {
            IoReply::Provider(Ok(ProviderStatus::Succeeded)) => {
                self.decide_start(id, Some(channel), Why::LateSuccess { until }, Vec::new())
            }
            IoReply::Provider(Ok(ProviderStatus::Failed | ProviderStatus::Unknown)) => {}
            _ => self.watch.push_back((id, channel, until)),
        }
    }

    /// Sends a refund to its provider.
    pub(super) fn send_refund(&mut self, r: ProviderRefund) {
        if r.channel >= self.config.channels.len() {
            tracing::error!(
                channel = r.channel,
                "a refund names a channel no longer configured"
            );
            return;
        }
        let call = ProviderCall::Refund {
            refund: r.refund,
            payment: r.payment,
            amount: r.amount,
        };
        self.provider(Op::ProviderRefund(r), r.channel, call);
    }

    pub(super) fn provider_refunded(&mut self, r: ProviderRefund, reply: IoReply) {
        if !matches!(reply, IoReply::Provider(Ok(_))) {
            tracing::warn!(?reply, "provider refund failed; it will be re-sent");
            self.refund_later(r);
        }
    }
}
