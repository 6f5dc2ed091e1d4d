//! When decisions withdraw no address: most nodes looking down at once is more likely the
//! control plane's blindness than the nodes, and such a pause in withdrawals lasts at most its
//! limit. Read from the index's nodes and its judgement of their Leases. Pure.

use std::time::{Duration, Instant};

use hostlb_model::readiness::node_is_ready;

use crate::state::index::Index;

impl Index {
    /// Whether decisions withdraw no address now, since what makes nodes look down is more
    /// likely a control plane that was away than the nodes: while more than half the nodes look
    /// down at once (not Ready, or their kubelet silent), while this controller may be blind to
    /// renewals (`judge_leases`), and for `AFTER_BLINDNESS` after this
    /// controller regained sight of the node Leases, when the node controller, which was just
    /// as blind, marks nodes and their pods NotReady until their kubelets report again.
    /// Such a pause ends once it has lasted its limit (`bound_pause`).
    pub fn withdrawals_paused(&self) -> bool {
        self.pause_warranted() && !self.pause_ended
    }

    fn pause_warranted(&self) -> bool {
        let nodes = self.nodes.values().count();
        self.unhealthy_nodes() * 2 > nodes || self.blind || self.recovering
    }

    fn unhealthy_nodes(&self) -> usize {
        self.nodes.values().filter(|node| !(node_is_ready(node) && self.renews(node))).count()
    }

    /// Ends a pause in withdrawals once it has lasted `limit`, read at `now`: as the node
    /// controller's full-disruption mode stops believing a zone is down only while it cannot
    /// see it, nodes that have looked down that long are believed and leave the status. Returns
    /// whether it ended the pause now.
    pub fn bound_pause(&mut self, now: Instant, limit: Duration) -> bool {
        if !self.pause_warranted() {
            (self.paused_since, self.pause_ended) = (None, false);
            return false;
        }
        let since = *self.paused_since.get_or_insert(now);
        let ended = now.saturating_duration_since(since) >= limit;
        let ends_now = ended && !self.pause_ended;
        self.pause_ended = ended;
        ends_now
    }

    /// How many nodes of how many look down, when a pause in withdrawals outlasted its limit.
    pub fn pause_outlasted(&self) -> Option<(usize, usize)> {
        self.pause_ended.then(|| (self.unhealthy_nodes(), self.nodes.values().count()))
    }
}
