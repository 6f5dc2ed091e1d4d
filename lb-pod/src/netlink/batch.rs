//! A batch's sequence numbers, and the kernel's answers to it collected until they say how it
//! went.

use nix::errno::Errno;

use super::Reply;
use crate::error::Error;
use crate::rule_text::step_text;
use crate::rules::Step;

/// Sequence numbers of a batch: the begin message has `first`, step `i` has `first + 1 + i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sequence {
    pub first: u32,
}

impl Sequence {
    pub fn of_step(self, index: usize) -> u32 {
        self.first.wrapping_add(1).wrapping_add(index as u32)
    }

    /// The index of the step with sequence number `seq`, if it is one.
    pub fn step_of(self, seq: u32, steps: usize) -> Option<usize> {
        let index = seq.wrapping_sub(self.first).wrapping_sub(1) as usize;
        (index < steps).then_some(index)
    }
}

/// The answers to a batch collected so far, and what they mean.
#[derive(Debug)]
pub struct Acks {
    sequence: Sequence,
    answered: Vec<bool>,
    /// (step index, or None for the batch itself, errno, message)
    errors: Vec<(Option<usize>, i32, Option<String>)>,
}

impl Acks {
    pub fn new(sequence: Sequence, steps: usize) -> Self {
        Acks { sequence, answered: vec![false; steps], errors: Vec::new() }
    }

    pub fn record(&mut self, reply: Reply) {
        let step = self.sequence.step_of(reply.seq, self.answered.len());
        if let Some(index) = step {
            self.answered[index] = true;
        } else if reply.seq != self.sequence.first {
            return; // not ours
        }
        if reply.errno != 0 {
            self.errors.push((step, reply.errno, reply.message));
        }
    }

    /// Whether more answers are worth waiting for: no when every step has been answered, and
    /// no after an error. The kernel sends a batch's answers in step order once it has
    /// processed them all, so the first error received is the first step that failed; an error
    /// for the batch itself (no privilege, a failed commit) comes before any step's answer.
    pub fn done(&self) -> bool {
        !self.errors.is_empty() || self.answered.iter().all(|a| *a)
    }

    /// Ok if every step was acknowledged without error; otherwise the first failed step.
    pub fn result(&self, steps: &[Step]) -> Result<(), Error> {
        let first = self.errors.iter().min_by_key(|(step, ..)| step.map_or(usize::MAX, |s| s));
        if let Some((step, errno, message)) = first {
            return Err(Error::Refused {
                step: step.map(|index| (index + 1, step_text(&steps[index]))),
                total: steps.len(),
                errno: Errno::from_raw(*errno),
                detail: message.clone(),
            });
        }
        match self.answered.iter().position(|a| !a) {
            Some(index) => Err(Error::Incomplete(format!(
                "no answer from the kernel for step {} of {} ({}) and the following ones",
                index + 1,
                steps.len(),
                step_text(&steps[index])
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::port_forwarding::tests::forwarding;
    use crate::rules::ruleset;

    pub(crate) const SEQ: Sequence = Sequence { first: 100 };

    #[test]
    fn acks_succeed_only_when_every_step_is_acknowledged() {
        let steps = ruleset(&forwarding(&["tcp:80:80"], &["10.0.0.1"], &[]));
        let mut acks = Acks::new(SEQ, steps.len());
        for index in 0..steps.len() - 1 {
            acks.record(Reply { seq: SEQ.of_step(index), errno: 0, message: None });
        }
        assert!(!acks.done());
        let incomplete = acks.result(&steps).unwrap_err().to_string();
        assert!(incomplete.contains(&format!("step {} of {}", steps.len(), steps.len())), "{incomplete}");
        acks.record(Reply { seq: 5, errno: 1, message: None }); // not ours
        acks.record(Reply { seq: SEQ.of_step(steps.len() - 1), errno: 0, message: None });
        assert!(acks.done());
        assert!(acks.result(&steps).is_ok());
    }

    #[test]
    fn the_first_refused_step_is_reported_with_its_errno() {
        let steps = ruleset(&forwarding(&["tcp:80:80"], &["10.0.0.1"], &[]));
        let mut acks = Acks::new(SEQ, steps.len());
        for index in 0..steps.len() {
            let errno = if index >= 6 { 22 } else { 0 };
            acks.record(Reply { seq: SEQ.of_step(index), errno, message: None });
        }
        let error = acks.result(&steps).unwrap_err();
        assert_eq!(error.exit_code(), 1);
        assert_eq!(
            error.to_string(),
            format!(
                "nftables: step 7 of {} (add chain ip hostlb postrouting {{ type nat hook postrouting priority 100; }}) \
                 refused by the kernel: EINVAL: Invalid argument",
                steps.len()
            )
        );
    }

    #[test]
    fn an_error_for_the_batch_itself_ends_the_wait_and_is_reported_as_the_batch() {
        let steps = ruleset(&forwarding(&["tcp:80:80"], &["10.0.0.1"], &[]));
        let mut acks = Acks::new(SEQ, steps.len());
        acks.record(Reply { seq: SEQ.first, errno: 1, message: None });
        assert!(acks.done());
        assert!(acks
            .result(&steps)
            .unwrap_err()
            .to_string()
            .starts_with("nftables: the kernel refused the batch: EPERM"));
    }
}
