//! A provider's callback, taken once: its event id is remembered (a bounded
//! number of them), and the try it names is decided under its claim.

use super::decide::Why;
use super::{Answer, Core, ReqId, EVENTS_REMEMBERED};
use crate::errors::PayError;

impl Core {
    pub(super) fn callback(
        &mut self,
        req: ReqId,
        channel: usize,
        event: String,
        payment: u64,
        succeeded: bool,
        amount: u64,
    ) {
        if channel >= self.config.channels.len() {
            return self.answer(req, Answer::Callback(Err(PayError::UnknownPayment)));
        }
        if self.events_seen.contains(&event) {
            return self.answer(req, Answer::Callback(Err(PayError::CallbackReplayed)));
        }
        let why = Why::Callback {
            req,
            event,
            succeeded,
            amount,
        };
        self.decide_start(payment, Some(channel), why, Vec::new());
    }

    /// A callback's event was acted on: a replay of it is refused.
    pub(super) fn remember_event(&mut self, event: String) {
        if self.events_seen.insert(event.clone()) {
            self.events_order.push_back(event);
            while self.events_order.len() > EVENTS_REMEMBERED {
                if let Some(old) = self.events_order.pop_front() {
                    self.events_seen.remove(&old);
                }
            }
        }
    }
}
