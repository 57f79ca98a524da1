//! Ways to break the cores on purpose, so the simulator can prove that it
//! catches each one (its negative controls). The drivers always use
//! [`Sabotage::None`]; only the simulator builds cores with another value.

/// One way to break a core; [`None`](Sabotage::None) breaks nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Sabotage {
    /// Nothing broken: the real rules.
    #[default]
    None,
    /// The lease core counts a deadline from the answer's arrival instead of
    /// the request's send.
    DeadlineFromAnswer,
    /// The lease core steps down with no safety margin, so clock drift can
    /// carry it past etcd's expiry.
    ZeroMargin,
    /// The candidacy core accepts a report older than one it acted on.
    AcceptStaleReport,
    /// The candidacy core leads on its Txn's answer without the Go-key check.
    SkipGoCheck,
}
