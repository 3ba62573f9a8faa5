//! Coupons on the shard: a limited number of claims, decided like stock.
//! A claim rush is a flash sale of its own, with the same guarantees: never
//! more claims than the coupon's quantity, never more per shopper than its
//! limit, a retry under the same key answered with the first claim, and a
//! claim acknowledged only once committed (the shard's group commit).
//!
//! A claim is used on an order at most once (`Claimed → Used`), and comes
//! back (`Used → Claimed`) if that order is cancelled before it is paid.
//!
//! Conservation: for every coupon, `claims == claimed + used <= quantity`,
//! asserted after every batch that touched it.

use crate::{Effect, Inventory, Reply};
use mall_core::{
    Claim, ClaimId, ClaimStatus, Coupon, CouponId, OrderId, Refusal, Timestamp, UserId,
};
use std::sync::Arc;

/// A coupon's counters on its shard.
#[derive(Debug)]
pub(crate) struct CouponState {
    pub(crate) coupon: Coupon,
    /// Claims made: `Claimed` and `Used` together.
    pub(crate) claims: u32,
    /// Of them, on an order now.
    pub(crate) used: u32,
}

/// A coupon and its counters, as a read answers them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CouponCounts {
    pub coupon: Coupon,
    /// Claims made, and of them on an order now.
    pub claims: u32,
    pub used: u32,
}

/// A shopper asks for a coupon.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClaimCoupon {
    pub user: UserId,
    pub coupon: CouponId,
    pub idempotency_key: Option<Arc<str>>,
    pub fingerprint: u64,
}

impl ClaimCoupon {
    /// A claim as a shopper asks it, its fingerprint from the request's
    /// fields (the one way every caller makes it).
    pub fn new(user: UserId, coupon: CouponId, idempotency_key: Option<Arc<str>>) -> ClaimCoupon {
        ClaimCoupon {
            user,
            coupon,
            idempotency_key,
            fingerprint: mall_core::fingerprint(&[b"claim", &coupon.0.to_le_bytes()]),
        }
    }
}

impl Inventory {
    pub fn coupon(&self, id: CouponId) -> Option<&Coupon> {
        self.coupons.get(&id).map(|c| &c.coupon)
    }

    /// `(claims, used)` of a coupon.
    pub fn coupon_counters(&self, id: CouponId) -> Option<(u32, u32)> {
        self.coupons.get(&id).map(|c| (c.claims, c.used))
    }

    pub fn claims(&self) -> impl Iterator<Item = &Claim> {
        self.claims.values()
    }

    /// A user's claims, by id, and their coupons.
    pub(crate) fn claims_of(&self, user: UserId) -> Reply {
        let mut claims: Vec<Claim> = self
            .claims_by_user
            .get(&user)
            .into_iter()
            .flatten()
            .map(|id| self.claims[id].clone())
            .collect();
        claims.sort_by_key(|c| c.id);
        let mut ids: Vec<CouponId> = claims.iter().map(|c| c.coupon).collect();
        ids.dedup();
        ids.sort_unstable();
        ids.dedup();
        let coupons = ids
            .iter()
            .filter_map(|id| self.coupons.get(id).map(|s| s.coupon.clone()))
            .collect();
        Reply::Claims { claims, coupons }
    }

    /// The shard's coupons and their counters, by id.
    pub(crate) fn coupon_counts(&self) -> Vec<CouponCounts> {
        let mut all: Vec<CouponCounts> = self
            .coupons
            .values()
            .map(|s| CouponCounts {
                coupon: s.coupon.clone(),
                claims: s.claims,
                used: s.used,
            })
            .collect();
        all.sort_by_key(|c| c.coupon.id);
        all
    }

    pub(crate) fn put_coupon(
        &mut self,
        coupon: Coupon,
        expected: Option<Coupon>,
        effects: &mut Vec<Effect>,
    ) -> Reply {
        let current = self.coupons.get(&coupon.id);
        if current.map(|c| &c.coupon) != expected.as_ref() {
            return Reply::Refused(Refusal::ItemChanged);
        }
        let claims = current.map_or(0, |c| c.claims);
        if coupon.quantity < claims {
            return Reply::Refused(Refusal::StockBelowCommitted { committed: claims });
        }
        let used = current.map_or(0, |c| c.used);
        self.board.note_coupon(coupon.id);
        self.coupons.insert(
            coupon.id,
            CouponState {
                coupon: coupon.clone(),
                claims,
                used,
            },
        );
        self.touched_coupons.insert(coupon.id);
        effects.push(Effect::PutCoupon(coupon.clone()));
        Reply::Coupon(coupon)
    }

    pub(crate) fn claim(
        &mut self,
        c: ClaimCoupon,
        now: Timestamp,
        effects: &mut Vec<Effect>,
    ) -> Reply {
        if let Some(key) = &c.idempotency_key {
            if let Some(&(fingerprint, id)) = self.claim_keys.get(&(c.user, key.clone())) {
                if fingerprint != c.fingerprint {
                    return Reply::Refused(Refusal::IdempotencyKeyReused);
                }
                return Reply::Claim {
                    claim: self.claims[&id].clone(),
                    replayed: true,
                };
            }
        }
        let Some(state) = self.coupons.get_mut(&c.coupon) else {
            return Reply::Refused(Refusal::UnknownCoupon);
        };
        let coupon = &state.coupon;
        if now < coupon.claim_opens_at {
            return Reply::Refused(Refusal::SaleNotOpen {
                opens_at: coupon.claim_opens_at,
            });
        }
        if now >= coupon.claim_closes_at {
            return Reply::Refused(Refusal::SaleClosed {
                closes_at: coupon.claim_closes_at,
            });
        }
        // All claimed first: in a claim rush almost every request ends here.
        if state.claims >= coupon.quantity {
            return Reply::Refused(Refusal::SoldOut);
        }
        let mine = self
            .claims_per_user
            .get(&(c.user, c.coupon))
            .copied()
            .unwrap_or(0);
        if mine >= coupon.per_user_limit {
            return Reply::Refused(Refusal::LimitReached {
                limit: coupon.per_user_limit,
                active: mine,
            });
        }
        state.claims += 1;
        let claim = Claim {
            id: ClaimId::new(self.shard, self.next_claim_seq),
            coupon: c.coupon,
            user: c.user,
            status: ClaimStatus::Claimed,
            order: None,
            idempotency_key: c.idempotency_key.clone(),
            request_fingerprint: c.fingerprint,
            created_at: now,
            updated_at: now,
        };
        self.next_claim_seq += 1;
        *self.claims_per_user.entry((c.user, c.coupon)).or_default() += 1;
        self.claims_by_user
            .entry(c.user)
            .or_default()
            .push(claim.id);
        if let Some(key) = c.idempotency_key {
            self.claim_keys
                .insert((c.user, key), (c.fingerprint, claim.id));
        }
        self.claims.insert(claim.id, claim.clone());
        self.touched_coupons.insert(c.coupon);
        effects.push(Effect::InsertClaim(claim.clone()));
        Reply::Claim {
            claim,
            replayed: false,
        }
    }

    /// Puts a claim on `order`: `Claimed → Used`. Again for the same order:
    /// a replay.
    pub(crate) fn use_claim(
        &mut self,
        id: ClaimId,
        user: UserId,
        order: OrderId,
        now: Timestamp,
        effects: &mut Vec<Effect>,
    ) -> Reply {
        let Some(claim) = self.claims.get_mut(&id).filter(|c| c.user == user) else {
            return Reply::Refused(Refusal::UnknownCoupon);
        };
        match (claim.status, claim.order) {
            (ClaimStatus::Used, Some(o)) if o == order => {
                return Reply::Claim {
                    claim: claim.clone(),
                    replayed: true,
                }
            }
            (ClaimStatus::Used, _) => return Reply::Refused(Refusal::ClaimNotUsable),
            (ClaimStatus::Claimed, _) => {}
        }
        let state = self
            .coupons
            .get_mut(&claim.coupon)
            .expect("a claim's coupon is on its shard");
        if now >= state.coupon.valid_until {
            return Reply::Refused(Refusal::ClaimNotUsable);
        }
        state.used += 1;
        self.move_claim(id, ClaimStatus::Used, Some(order), now, effects)
    }

    /// Gives a claim back from `order` (cancelled before it was paid):
    /// `Used → Claimed`. A claim not on that order is left as it is.
    pub(crate) fn return_claim(
        &mut self,
        id: ClaimId,
        order: OrderId,
        now: Timestamp,
        effects: &mut Vec<Effect>,
    ) -> Reply {
        let Some(claim) = self.claims.get_mut(&id) else {
            return Reply::Refused(Refusal::UnknownCoupon);
        };
        if claim.status != ClaimStatus::Used || claim.order != Some(order) {
            return Reply::Claim {
                claim: claim.clone(),
                replayed: true,
            };
        }
        let state = self
            .coupons
            .get_mut(&claim.coupon)
            .expect("a claim's coupon is on its shard");
        state.used -= 1;
        self.move_claim(id, ClaimStatus::Claimed, None, now, effects)
    }

    /// A claim takes its new status and order (its coupon's `used` already
    /// moved), and says so durably.
    fn move_claim(
        &mut self,
        id: ClaimId,
        status: ClaimStatus,
        order: Option<OrderId>,
        now: Timestamp,
        effects: &mut Vec<Effect>,
    ) -> Reply {
        let claim = self
            .claims
            .get_mut(&id)
            .expect("a claim being moved exists");
        (claim.status, claim.order, claim.updated_at) = (status, order, now);
        self.touched_coupons.insert(claim.coupon);
        effects.push(Effect::UpdateClaim {
            id,
            status,
            order,
            updated_at: now,
        });
        Reply::Claim {
            claim: claim.clone(),
            replayed: false,
        }
    }

    /// Rebuilds the coupons and claims of a snapshot.
    pub(crate) fn restore_coupons(&mut self, coupons: Vec<Coupon>, mut claims: Vec<Claim>) {
        for coupon in coupons {
            self.coupons.insert(
                coupon.id,
                CouponState {
                    coupon,
                    claims: 0,
                    used: 0,
                },
            );
        }
        claims.sort_by_key(|c| c.id.seq());
        for claim in claims {
            assert_eq!(
                claim.id.shard(),
                self.shard,
                "claim stored in the wrong shard"
            );
            let state = self
                .coupons
                .get_mut(&claim.coupon)
                .expect("claim of an unknown coupon");
            state.claims += 1;
            if claim.status == ClaimStatus::Used {
                state.used += 1;
            }
            *self
                .claims_per_user
                .entry((claim.user, claim.coupon))
                .or_default() += 1;
            self.claims_by_user
                .entry(claim.user)
                .or_default()
                .push(claim.id);
            if let Some(key) = &claim.idempotency_key {
                self.claim_keys.insert(
                    (claim.user, key.clone()),
                    (claim.request_fingerprint, claim.id),
                );
            }
            self.next_claim_seq = self.next_claim_seq.max(claim.id.seq() + 1);
            self.touched_coupons.insert(claim.coupon);
            self.claims.insert(claim.id, claim);
        }
        for id in self.coupons.keys() {
            self.board.note_coupon(*id);
        }
    }

    /// Conservation of every coupon touched since the last check.
    pub(crate) fn check_coupons(&mut self) {
        for id in self.touched_coupons.drain() {
            let s = &self.coupons[&id];
            assert!(
                s.used <= s.claims && s.claims <= s.coupon.quantity,
                "coupon {id} over-issued: {} claims ({} used) of {}",
                s.claims,
                s.used,
                s.coupon.quantity
            );
        }
    }

    /// Recounts claims against the counters (tests and audits).
    pub(crate) fn coupon_faults(&self) -> Result<(), String> {
        let mut claims: rustc_hash::FxHashMap<CouponId, (u32, u32)> = Default::default();
        for c in self.claims.values() {
            let e = claims.entry(c.coupon).or_default();
            e.0 += 1;
            if c.status == ClaimStatus::Used {
                e.1 += 1;
                if c.order.is_none() {
                    return Err(format!("claim {} used on no order", c.id));
                }
            }
        }
        let indexed: usize = self.claims_by_user.values().map(Vec::len).sum();
        if indexed != self.claims.len() {
            return Err(format!(
                "{indexed} claims indexed by shopper, {} claims",
                self.claims.len()
            ));
        }
        for (id, s) in &self.coupons {
            let counted = claims.get(id).copied().unwrap_or((0, 0));
            if counted != (s.claims, s.used) {
                return Err(format!(
                    "coupon {id}: counters {:?}, claims recount {counted:?}",
                    (s.claims, s.used)
                ));
            }
            if s.claims > s.coupon.quantity {
                return Err(format!("coupon {id} over-issued"));
            }
        }
        Ok(())
    }
}
