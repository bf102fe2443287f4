//! Network namespaces kept between jobs ("holders"), so that a job's container does not pay
//! for a network of its own.
//!
//! Setting up and tearing down a container's network namespace (the namespace, a veth pair,
//! an address on the bridge) is the largest part of what an engine spends on a short-lived
//! container: measured here, a container that joins an existing namespace
//! (`--network container:<holder>`) starts and goes about 1.5 times as fast as one with its
//! own. So the backend keeps a few *holders*: small idle containers whose only purpose is
//! their network namespace, on the engine's bridge. Each machine's container is created in
//! one holder's namespace, and a holder serves **one machine at a time**: it is bound to a
//! machine when the machine is created and freed when the machine's container is removed,
//! which kills every process the job left. Two jobs therefore never share a namespace at the
//! same time; one after the other they share an address and nothing else (a job can change no
//! network setting: it has no capability, and `/proc/sys` is read-only).
//!
//! A `disable_network` job runs in a holder that is disconnected from the bridge, so its
//! namespace has only `lo`; the holder is connected again before a job that wants the
//! network runs in it.
//!
//! This module is the bookkeeping: which holders exist, which are free, which machine each
//! serves. The engine calls that make, switch and remove holders are the backend's
//! (`container.rs`). Holders are labelled like machines (prefix, owner) plus
//! [`super::LABEL_ROLE`], so a sweep finds those of a manager that died; `docker.reuse_network
//! = false` gives every container a network of its own, as `docker run` does.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// One holder container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its container id.
    pub id: String,
    /// The engine it lives on (its URL, as `Machine.host` names engines).
    pub engine: String,
    /// Whether it is on the bridge network now (false after a `disable_network` job).
    pub connected: bool,
}

/// The holders of one backend.
#[derive(Default)]
pub struct Holders {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Free holders, by engine URL.
    free: HashMap<String, Vec<Holder>>,
    /// Holders serving a machine, by the machine's container name.
    bound: HashMap<String, Holder>,
    /// Every holder we made and have not removed, by id, whatever its state (a holder being
    /// handed over is for a moment neither free nor bound).
    ours: HashMap<String, Holder>,
}

impl Holders {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every change is one insert or removal: a panic elsewhere leaves no half-made entry.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A free holder on `engine`, if there is one: one on the bridge first, as most jobs
    /// want the network.
    pub fn take_free(&self, engine: &str) -> Option<Holder> {
        let mut state = self.state();
        let free = state.free.get_mut(engine)?;
        let at = free
            .iter()
            .position(|h| h.connected)
            .or_else(|| free.len().checked_sub(1))?;
        Some(free.swap_remove(at))
    }

    /// Records a holder just made (not yet bound).
    pub fn made(&self, holder: &Holder) {
        self.state().ours.insert(holder.id.clone(), holder.clone());
    }

    /// Binds `holder` to the machine whose container is named `machine`.
    pub fn bind(&self, machine: &str, holder: Holder) {
        self.state().bound.insert(machine.to_string(), holder);
    }

    /// The holder serving `machine`, if any.
    pub fn of(&self, machine: &str) -> Option<Holder> {
        self.state().bound.get(machine).cloned()
    }

    /// Notes that the holder serving `machine` was connected to or disconnected from the
    /// bridge.
    pub fn set_connected(&self, machine: &str, connected: bool) {
        if let Some(holder) = self.state().bound.get_mut(machine) {
            holder.connected = connected;
        }
    }

    /// Frees the holder of `machine`, whose container is gone. Returns a holder the caller
    /// must remove when `engine` already has `keep` free ones.
    pub fn release(&self, machine: &str, keep: usize) -> Option<Holder> {
        let mut state = self.state();
        let holder = state.bound.remove(machine)?;
        let free = state.free.entry(holder.engine.clone()).or_default();
        if free.len() < keep {
            free.push(holder);
            return None;
        }
        state.ours.remove(&holder.id);
        Some(holder)
    }

    /// Forgets the holder of `machine` (or `holder` itself), which is broken or gone: the
    /// caller removes it.
    pub fn discard(&self, machine: Option<&str>, holder: Option<&Holder>) -> Option<Holder> {
        let mut state = self.state();
        let found = machine
            .and_then(|m| state.bound.remove(m))
            .or_else(|| holder.cloned())?;
        state.ours.remove(&found.id);
        for free in state.free.values_mut() {
            free.retain(|h| h.id != found.id);
        }
        Some(found)
    }

    /// Whether the container with this id is one of our holders.
    pub fn is_ours(&self, id: &str) -> bool {
        self.state().ours.contains_key(id)
    }

    /// Every holder we have, forgotten: for removal at shutdown.
    pub fn drain(&self) -> Vec<Holder> {
        let mut state = self.state();
        state.bound.clear();
        state.free.clear();
        state.ours.drain().map(|(_, h)| h).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(id: &str, connected: bool) -> Holder {
        Holder {
            id: id.into(),
            engine: "e".into(),
            connected,
        }
    }

    #[test]
    fn a_holder_serves_one_machine_at_a_time() {
        let holders = Holders::default();
        let h = holder("h1", true);
        holders.made(&h);
        holders.bind("m1", h.clone());
        assert_eq!(holders.take_free("e"), None, "bound, so not free");
        assert_eq!(holders.of("m1"), Some(h.clone()));
        assert_eq!(holders.release("m1", 4), None, "kept");
        assert_eq!(holders.of("m1"), None);
        assert_eq!(holders.take_free("e"), Some(h));
        assert_eq!(holders.take_free("e"), None);
        assert!(holders.is_ours("h1"));
    }

    #[test]
    fn connected_holders_are_taken_first_and_extra_ones_given_back() {
        let holders = Holders::default();
        for (machine, h) in [("m1", holder("off", false)), ("m2", holder("on", true))] {
            holders.made(&h);
            holders.bind(machine, h);
        }
        holders.set_connected("m1", false);
        assert_eq!(holders.release("m1", 4), None);
        assert_eq!(holders.release("m2", 4), None);
        assert_eq!(holders.take_free("e").map(|h| h.id), Some("on".into()));
        assert_eq!(holders.take_free("e").map(|h| h.id), Some("off".into()));

        let extra = holder("x", true);
        holders.made(&extra);
        holders.bind("m3", extra.clone());
        assert_eq!(holders.release("m3", 0), Some(extra), "none kept");
        assert!(!holders.is_ours("x"));
    }

    #[test]
    fn a_discarded_holder_is_never_handed_out_again() {
        let holders = Holders::default();
        let h = holder("h", true);
        holders.made(&h);
        holders.bind("m", h.clone());
        assert_eq!(holders.discard(Some("m"), None), Some(h.clone()));
        assert!(!holders.is_ours("h"));
        assert_eq!(holders.take_free("e"), None);
        assert!(holders.drain().is_empty());
    }
}
