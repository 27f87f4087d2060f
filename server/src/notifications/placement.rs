//! Where wanted topics go, as a pure function of the wanted set, the topics
//! each held channel carries and the platform limits: the rules are tested
//! here without sockets, Redis or clocks, and the listener only performs
//! the plan (opening, subscribing, purging what is uncovered).
//!
//! Rules: a topic stays on its channel while wanted (moving it would open a
//! gap); new topics, in order, fill held channels in order, then new
//! channels up to `max_channels`; what does not fit is uncovered. A held
//! channel left with nothing is let go, except the first (kept for the next
//! topic, so a quiet cache does not open and drop a channel each time).

use std::collections::{BTreeMap, BTreeSet};

/// The platform's limits (`notifications.max_channels`, `topics_per_channel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_channels: usize,
    pub topics_per_channel: usize,
}

/// What to do so the channels carry the wanted topics. Held channels are
/// named by their index in the slice given to [`plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Topics no longer wanted, to drop from the held channel carrying them.
    pub release: BTreeMap<usize, BTreeSet<String>>,
    /// Wanted topics newly placed on a held channel.
    pub subscribe: BTreeMap<usize, BTreeSet<String>>,
    /// Channels to open, in order, each with the topics it is to carry.
    pub open: Vec<BTreeSet<String>>,
    /// Held channels that carry nothing once released (never the first).
    pub let_go: BTreeSet<usize>,
    /// Wanted topics beyond the limits.
    pub uncovered: BTreeSet<String>,
}

/// Places `wanted` over the `held` channels (each given by the topics it
/// carries) within `limits`.
pub fn plan<'a>(
    wanted: impl IntoIterator<Item = &'a str>,
    held: &[&BTreeSet<String>],
    limits: Limits,
) -> Plan {
    let wanted: BTreeSet<&str> = wanted.into_iter().collect();
    let per = limits.topics_per_channel;
    let mut plan = Plan::default();
    // Topics each held channel keeps.
    let mut sizes = Vec::with_capacity(held.len());
    for (i, topics) in held.iter().enumerate() {
        let gone: BTreeSet<String> =
            topics.iter().filter(|t| !wanted.contains(t.as_str())).cloned().collect();
        sizes.push(topics.len() - gone.len());
        if !gone.is_empty() {
            plan.release.insert(i, gone);
        }
    }
    let is_held = |t: &str| held.iter().any(|topics| topics.contains(t));
    let mut new = wanted.iter().filter(|t| !is_held(t)).map(|t| t.to_string());
    for (i, size) in sizes.iter_mut().enumerate() {
        let add: BTreeSet<String> = new.by_ref().take(per.saturating_sub(*size)).collect();
        if !add.is_empty() {
            *size += add.len();
            plan.subscribe.insert(i, add);
        }
    }
    for _ in held.len()..limits.max_channels {
        let topics: BTreeSet<String> = new.by_ref().take(per).collect();
        if topics.is_empty() {
            break;
        }
        plan.open.push(topics);
    }
    plan.uncovered = new.collect();
    plan.let_go = sizes.iter().enumerate().skip(1).filter(|(_, n)| **n == 0).map(|(i, _)| i).collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The platform's limits: 1000 topics per channel, 19 channels.
    const PLATFORM: Limits = Limits { max_channels: 19, topics_per_channel: 1000 };

    fn limits(max_channels: usize, topics_per_channel: usize) -> Limits {
        Limits { max_channels, topics_per_channel }
    }

    fn set(topics: &[&str]) -> BTreeSet<String> {
        topics.iter().map(|t| t.to_string()).collect()
    }

    /// `count` topics that sort in numeric order.
    fn topics(from: usize, count: usize) -> Vec<String> {
        (from..from + count).map(|n| format!("v2.users.u{n:06}.routingStatus")).collect()
    }

    fn run(wanted: &[String], held: &[BTreeSet<String>], limits: Limits) -> Plan {
        let held: Vec<&BTreeSet<String>> = held.iter().collect();
        let plan = plan(wanted.iter().map(String::as_str), &held, limits);
        check(wanted, &held, limits, &plan);
        plan
    }

    /// What any plan must satisfy: every wanted topic ends up on exactly one
    /// channel or uncovered, no channel over the limit, no more channels than
    /// allowed, only unwanted topics released, kept topics not moved.
    fn check(wanted: &[String], held: &[&BTreeSet<String>], limits: Limits, plan: &Plan) {
        let wanted: BTreeSet<&String> = wanted.iter().collect();
        let mut after: Vec<BTreeSet<String>> = held.iter().map(|t| (*t).clone()).collect();
        for (i, gone) in &plan.release {
            assert!(gone.iter().all(|t| !wanted.contains(t)), "released a wanted topic");
            assert!(gone.is_subset(&after[*i]), "released a topic the channel does not carry");
            after[*i].retain(|t| !gone.contains(t));
        }
        for (i, add) in &plan.subscribe {
            assert!(add.is_disjoint(&after[*i]));
            after[*i].extend(add.iter().cloned());
        }
        for (i, topics) in after.iter().enumerate() {
            assert_eq!(plan.let_go.contains(&i), i > 0 && topics.is_empty(), "channel {i} let go");
        }
        after.extend(plan.open.iter().cloned());
        assert!(after.len() <= limits.max_channels.max(held.len()));
        assert!(after.iter().all(|t| t.len() <= limits.topics_per_channel));
        assert!(plan.open.iter().all(|t| !t.is_empty()), "opened a channel with nothing to carry");
        let mut placed: Vec<&String> = after.iter().flatten().chain(&plan.uncovered).collect();
        placed.sort();
        let before = placed.len();
        placed.dedup();
        assert_eq!(placed.len(), before, "a topic placed twice");
        assert_eq!(placed.into_iter().collect::<BTreeSet<_>>(), wanted);
        for (i, topics) in held.iter().enumerate() {
            for t in topics.iter().filter(|t| wanted.contains(t)) {
                assert!(after[i].contains(t), "{t} moved off channel {i}");
            }
        }
    }

    fn sizes(plan: &Plan) -> Vec<usize> {
        plan.open.iter().map(BTreeSet::len).collect()
    }

    #[test]
    fn nothing_wanted_and_nothing_held_plans_nothing() {
        assert_eq!(run(&[], &[], PLATFORM), Plan::default());
    }

    #[test]
    fn channels_already_carrying_the_wanted_topics_are_left_alone() {
        let wanted = topics(0, 1500);
        let held = [wanted[..1000].iter().cloned().collect(), wanted[1000..].iter().cloned().collect()];
        assert_eq!(run(&wanted, &held, PLATFORM), Plan::default());
    }

    #[test]
    fn topics_fill_one_channel_before_opening_another() {
        let plan = run(&topics(0, 5), &[], limits(19, 3));
        assert_eq!(plan.open, vec![topics(0, 3).into_iter().collect(), topics(3, 2).into_iter().collect()]);
        assert!(plan.uncovered.is_empty());
    }

    #[test]
    fn new_topics_fill_held_channels_in_order_before_a_new_one_opens() {
        let held = [set(&["a"]), set(&["b"])];
        let wanted: Vec<String> = ["a", "b", "c", "d", "e", "f"].map(String::from).to_vec();
        let plan = run(&wanted, &held, limits(19, 2));
        assert_eq!(plan.subscribe, BTreeMap::from([(0, set(&["c"])), (1, set(&["d"]))]));
        assert_eq!(plan.open, vec![set(&["e", "f"])]);
        assert!(plan.release.is_empty() && plan.uncovered.is_empty() && plan.let_go.is_empty());
    }

    #[test]
    fn at_1000_topics_per_channel_the_1001st_opens_a_second_channel() {
        let plan = run(&topics(0, 1000), &[], PLATFORM);
        assert_eq!(sizes(&plan), vec![1000]);
        let plan = run(&topics(0, 1001), &[], PLATFORM);
        assert_eq!(sizes(&plan), vec![1000, 1]);
        assert_eq!(plan.open[1], set(&[&topics(1000, 1)[0]]));
        // The same when the first channel is already held, full.
        let held = [topics(0, 1000).into_iter().collect()];
        let plan = run(&topics(0, 1001), &held, PLATFORM);
        assert!(plan.subscribe.is_empty());
        assert_eq!(plan.open, vec![topics(1000, 1).into_iter().collect()]);
    }

    #[test]
    fn twenty_five_hundred_topics_spread_over_three_channels() {
        let plan = run(&topics(0, 2500), &[], PLATFORM);
        assert_eq!(sizes(&plan), vec![1000, 1000, 500]);
    }

    #[test]
    fn beyond_19_channels_topics_are_reported_uncovered() {
        let wanted = topics(0, 19_500);
        let plan = run(&wanted, &[], PLATFORM);
        assert_eq!(sizes(&plan), vec![1000; 19]);
        assert_eq!(plan.uncovered, wanted[19_000..].iter().cloned().collect());
    }

    #[test]
    fn with_19_full_channels_held_a_new_topic_is_uncovered() {
        let held: Vec<BTreeSet<String>> =
            (0..19).map(|c| topics(c * 1000, 1000).into_iter().collect()).collect();
        let plan = run(&topics(0, 19_001), &held, PLATFORM);
        assert!(plan.open.is_empty() && plan.subscribe.is_empty());
        assert_eq!(plan.uncovered, topics(19_000, 1).into_iter().collect());
    }

    #[test]
    fn exactly_19000_topics_are_all_covered() {
        let plan = run(&topics(0, 19_000), &[], PLATFORM);
        assert_eq!(sizes(&plan), vec![1000; 19]);
        assert!(plan.uncovered.is_empty());
    }

    #[test]
    fn topics_no_longer_wanted_are_released() {
        let held = [set(&["a", "b", "c"])];
        let plan = run(&["b".to_string()], &held, PLATFORM);
        assert_eq!(plan.release, BTreeMap::from([(0, set(&["a", "c"]))]));
        assert!(plan.subscribe.is_empty() && plan.open.is_empty() && plan.let_go.is_empty());
    }

    #[test]
    fn a_topic_already_subscribed_is_not_moved() {
        // "a" sorts first and channel 0 has room, yet it stays on channel 1.
        let held = [set(&["b"]), set(&["a"])];
        let wanted: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let plan = run(&wanted, &held, limits(19, 2));
        assert!(plan.release.is_empty());
        assert_eq!(plan.subscribe, BTreeMap::from([(0, set(&["c"]))]));
    }

    #[test]
    fn releasing_frees_room_that_new_topics_reuse() {
        let held = [topics(0, 1000).into_iter().collect()];
        let mut wanted = topics(1, 999);
        wanted.push("v2.users.new.routingStatus".into());
        let plan = run(&wanted, &held, PLATFORM);
        assert_eq!(plan.release, BTreeMap::from([(0, topics(0, 1).into_iter().collect())]));
        assert_eq!(plan.subscribe, BTreeMap::from([(0, set(&["v2.users.new.routingStatus"]))]));
        assert!(plan.open.is_empty());
    }

    #[test]
    fn released_room_is_reused_before_any_channel_opens_even_at_the_channel_limit() {
        let held: Vec<BTreeSet<String>> =
            (0..19).map(|c| topics(c * 1000, 1000).into_iter().collect()).collect();
        // 10 topics of the last channel go, 10 new ones come.
        let mut wanted = topics(0, 18_990);
        wanted.extend(topics(50_000, 10));
        let plan = run(&wanted, &held, PLATFORM);
        assert_eq!(plan.release, BTreeMap::from([(18, topics(18_990, 10).into_iter().collect())]));
        assert_eq!(plan.subscribe, BTreeMap::from([(18, topics(50_000, 10).into_iter().collect())]));
        assert!(plan.open.is_empty() && plan.uncovered.is_empty());
    }

    #[test]
    fn an_empty_wanted_set_releases_everything() {
        let held = [set(&["a"]), set(&["b", "c"]), set(&["d"])];
        let plan = run(&[], &held, PLATFORM);
        assert_eq!(plan.release, BTreeMap::from([(0, set(&["a"])), (1, set(&["b", "c"])), (2, set(&["d"]))]));
        assert_eq!(plan.let_go, BTreeSet::from([1, 2]), "the first channel is kept");
        assert!(plan.subscribe.is_empty() && plan.open.is_empty());
    }

    #[test]
    fn an_emptied_channel_is_refilled_by_new_topics_rather_than_let_go() {
        let held = [set(&["a"]), set(&["b"])];
        let plan = run(&["c".to_string(), "d".to_string()], &held, limits(19, 1));
        assert_eq!(plan.subscribe, BTreeMap::from([(0, set(&["c"])), (1, set(&["d"]))]));
        assert!(plan.let_go.is_empty() && plan.open.is_empty());
    }

    #[test]
    fn a_channel_emptied_in_the_middle_is_let_go_and_the_others_keep_their_topics() {
        let held = [set(&["a"]), set(&["b"]), set(&["c"])];
        let plan = run(&["a".to_string(), "c".to_string()], &held, limits(19, 1));
        assert_eq!(plan.release, BTreeMap::from([(1, set(&["b"]))]));
        assert_eq!(plan.let_go, BTreeSet::from([1]));
    }

    #[test]
    fn every_topic_is_placed_once_within_the_limits_whatever_the_start() {
        // Many small cases, each checked against the invariants in `check`.
        for max_channels in 1..=4 {
            for per in 1..=3 {
                for held_count in 0..=max_channels {
                    for wanted_from in 0..4 {
                        for wanted_count in 0..12 {
                            // Held channels of assorted sizes, some empty.
                            let held: Vec<BTreeSet<String>> = (0..held_count)
                                .map(|c| topics(c * per, (c * 7 + wanted_from) % (per + 1)))
                                .map(|t| t.into_iter().collect())
                                .collect();
                            run(&topics(wanted_from, wanted_count), &held, limits(max_channels, per));
                        }
                    }
                }
            }
        }
    }
}
