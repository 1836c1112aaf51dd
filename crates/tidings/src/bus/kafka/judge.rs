//! The one rule by which the Kafka link judges each read of the partition — is it still the
//! partition this instance read, did a record change under it, is there a hole — kept pure,
//! apart from the I/O, so that it is tested case by case.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use rskafka::record::RecordAndOffset;

/// What one read found.
pub(super) enum Read {
    /// Records, from the offset asked for, and the partition's end.
    Records(Vec<RecordAndOffset>, u64),
    /// The offset asked for is not in the partition: its first and end offsets.
    OutOfRange(u64, u64),
}

pub(super) fn offset(o: i64) -> u64 {
    u64::try_from(o).unwrap_or(0)
}

pub(super) fn offset_arg(o: u64) -> i64 {
    i64::try_from(o).unwrap_or(i64::MAX)
}

/// A fingerprint of a record, to know it again: its value and timestamp.
pub(super) fn fingerprint(record: &RecordAndOffset) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    record.record.value.hash(&mut hasher);
    record.record.timestamp.timestamp_millis().hash(&mut hasher);
    hasher.finish()
}

/// How long reads may suggest that the partition ends before what this instance read before
/// it counts as lost: a new leader's high watermark may lag behind for a moment.
pub(super) const LOSS_GRACE: Duration = Duration::from_secs(2);
/// How long an offset below the partition's end may answer no record before it is passed as
/// holding no update. On Kafka such an offset is a transaction's marker (which the client
/// leaves out); a broker may also make a record readable a moment after a later one (Tansu
/// does, under concurrent publishes), and that record must not be skipped.
pub(super) const HOLE_GRACE: Duration = Duration::from_millis(500);

/// What one read says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The partition is the one read: take the records after what was read, and read on from
    /// at least `next_at_least`.
    Go { next_at_least: u64 },
    /// The partition ends before what was read: lost, or its end lags behind.
    Suspect,
    /// The record read at an offset is not there any more: another record is.
    Changed,
    /// Nothing at the next offset, though the partition holds more: a hole.
    Stalled,
    /// Nothing to conclude: read again.
    Again,
}

/// Judges a read from `next` — or, with `check` (the offset and fingerprint of the last
/// record read, at `next - 1`), from that record.
pub(super) fn judge(check: Option<(u64, u64)>, next: u64, read: &Read) -> Verdict {
    let go = Verdict::Go { next_at_least: 0 };
    match (read, check) {
        (Read::Records(records, end), Some((o, print))) => match records.first() {
            // Still there: the same record, or another one.
            Some(r) if offset(r.offset) == o => match fingerprint(r) == print {
                true => go,
                false => Verdict::Changed,
            },
            // Gone (compacted away): cannot be checked; what follows is read on.
            Some(_) => go,
            None if *end <= o => Verdict::Suspect,
            None => Verdict::Stalled,
        },
        (Read::Records(records, end), None) => match records.is_empty() {
            false => go,
            true if *end < next => Verdict::Suspect,
            true if *end > next => Verdict::Stalled,
            true => go,
        },
        (Read::OutOfRange(first, end), _) => {
            let from = check.map_or(next, |(o, _)| o);
            if *end < next {
                Verdict::Suspect
            } else if from < *first {
                // What this instance had not read yet left the partition (retention): read
                // on from its first offset; the skipped offsets count as a gap.
                Verdict::Go {
                    next_at_least: *first,
                }
            } else {
                // In range by now (the partition moved between the two answers).
                Verdict::Again
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rskafka::record::Record;

    fn record(at: i64, value: &str) -> RecordAndOffset {
        RecordAndOffset {
            record: Record {
                key: None,
                value: Some(value.as_bytes().to_vec()),
                headers: Default::default(),
                timestamp: rskafka::chrono::DateTime::from_timestamp_millis(1_000).unwrap(),
            },
            offset: at,
        }
    }

    fn records(from: i64, values: &[&str], end: u64) -> Read {
        let records = values
            .iter()
            .zip(from..)
            .map(|(v, at)| record(at, v))
            .collect();
        Read::Records(records, end)
    }

    const GO: Verdict = Verdict::Go { next_at_least: 0 };

    #[test]
    fn a_new_link_reads_on_only_from_the_same_record() {
        let print = fingerprint(&record(4, "d"));
        let check = Some((4, print));
        assert_eq!(judge(check, 5, &records(4, &["d", "e"], 6)), GO);
        assert_eq!(judge(check, 5, &records(4, &["d"], 5)), GO, "nothing new");
        assert_eq!(
            judge(check, 5, &records(4, &["x", "e"], 6)),
            Verdict::Changed,
            "another record at the offset read"
        );
        assert_eq!(
            judge(check, 5, &records(6, &["f"], 7)),
            GO,
            "the record read was compacted away"
        );
        assert_eq!(
            judge(check, 5, &records(0, &[], 3)),
            Verdict::Suspect,
            "the partition ends before it"
        );
        assert_eq!(judge(check, 5, &records(0, &[], 9)), Verdict::Stalled);
    }

    #[test]
    fn reads_on_judge_the_partition_by_its_end() {
        assert_eq!(judge(None, 5, &records(5, &["e"], 6)), GO);
        assert_eq!(judge(None, 5, &records(0, &[], 5)), GO, "idle");
        assert_eq!(judge(None, 5, &records(0, &[], 2)), Verdict::Suspect);
        assert_eq!(
            judge(None, 5, &records(0, &[], 8)),
            Verdict::Stalled,
            "a record the client leaves out"
        );
    }

    #[test]
    fn an_offset_out_of_range_is_retention_or_a_loss() {
        assert_eq!(
            judge(None, 5, &Read::OutOfRange(9, 12)),
            Verdict::Go { next_at_least: 9 },
            "retention took what was not read yet"
        );
        let check = Some((4, 0));
        assert_eq!(
            judge(check, 5, &Read::OutOfRange(7, 12)),
            Verdict::Go { next_at_least: 7 }
        );
        assert_eq!(judge(None, 5, &Read::OutOfRange(0, 3)), Verdict::Suspect);
        assert_eq!(judge(check, 5, &Read::OutOfRange(0, 3)), Verdict::Suspect);
        assert_eq!(judge(None, 5, &Read::OutOfRange(0, 9)), Verdict::Again);
    }
}
