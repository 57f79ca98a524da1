//! Several etcd members forming one cluster.

use std::io;

use tokio::time::Instant;

use super::certs::TlsFiles;
use super::etcd::{Etcd, EtcdBuilder, config_for, wait_ready};
use crate::Config;

/// An etcd cluster of several [`Etcd`] members on loopback, started
/// together (each with the full `--initial-cluster`).
///
/// Dropping it kills every member and removes their data directories.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use etcdutil::testing::Cluster;
///
/// let mut cluster = Cluster::start(3).await?;
/// let config = cluster.config(); // all three endpoints
/// // Crash one member, then bring it back: it rejoins with its data.
/// cluster.member_mut(0).kill()?;
/// cluster.member_mut(0).restart().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Cluster {
    members: Vec<Etcd>,
}

impl Cluster {
    /// Starts `n` plaintext members (3 is typical) and waits until all
    /// serve clients.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let cluster = etcdutil::testing::Cluster::start(3).await?;
    /// assert_eq!(cluster.endpoints().len(), 3);
    /// # Ok(()) }
    /// ```
    pub async fn start(n: usize) -> io::Result<Cluster> {
        Cluster::start_with(n, Etcd::builder()).await
    }

    /// Starts `n` members with the options of `builder` (TLS, flags, ...)
    /// and waits until all serve clients. With TLS, all members share one
    /// set of [`TlsFiles`].
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// use etcdutil::testing::{Cluster, Etcd};
    /// let cluster = Cluster::start_with(3, Etcd::builder().tls(true)).await?;
    /// assert!(cluster.endpoints().iter().all(|e| e.starts_with("https://")));
    /// # Ok(()) }
    /// ```
    pub async fn start_with(n: usize, builder: EtcdBuilder) -> io::Result<Cluster> {
        let members = builder.start_members(n, |i| format!("member{i}")).await?;
        Ok(Cluster { members })
    }

    /// All members, in start order.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let cluster = etcdutil::testing::Cluster::start(3).await?;
    /// for m in cluster.members() {
    ///     println!("{} at {}", m.name(), m.endpoint());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn members(&self) -> &[Etcd] {
        &self.members
    }

    /// Member `i`. Panics if `i` is out of range.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let cluster = etcdutil::testing::Cluster::start(3).await?;
    /// assert_eq!(cluster.member(1).name(), "member1");
    /// # Ok(()) }
    /// ```
    pub fn member(&self, i: usize) -> &Etcd {
        &self.members[i]
    }

    /// Member `i`, to kill, pause or restart it. Panics if `i` is out of
    /// range.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let mut cluster = etcdutil::testing::Cluster::start(3).await?;
    /// cluster.member_mut(2).pause()?;
    /// cluster.member_mut(2).resume()?;
    /// # Ok(()) }
    /// ```
    pub fn member_mut(&mut self, i: usize) -> &mut Etcd {
        &mut self.members[i]
    }

    /// The client URLs of all members.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let cluster = etcdutil::testing::Cluster::start(3).await?;
    /// assert_eq!(cluster.endpoints()[0], cluster.member(0).endpoint());
    /// # Ok(()) }
    /// ```
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Etcd::endpoint).collect()
    }

    /// Settings to connect to the cluster: every member's endpoint, a 5 s
    /// dial timeout and, with TLS, the generated CA and client certificate.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let cluster = etcdutil::testing::Cluster::start(3).await?;
    /// assert_eq!(cluster.config().endpoints, cluster.endpoints());
    /// # Ok(()) }
    /// ```
    pub fn config(&self) -> Config {
        config_for(self.endpoints(), self.tls_files())
    }

    /// The certificates shared by the members of a TLS cluster.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// use etcdutil::testing::{Cluster, Etcd};
    /// let cluster = Cluster::start_with(3, Etcd::builder().tls(true)).await?;
    /// assert!(cluster.tls_files().is_some());
    /// # Ok(()) }
    /// ```
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.members.first().and_then(Etcd::tls_files)
    }

    /// Restarts the whole cluster: stops the members still running
    /// (gracefully), starts all of them at once on their ports and data
    /// dirs, and waits until all serve clients (a lone restarted member
    /// could not: it needs a quorum).
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let mut cluster = etcdutil::testing::Cluster::start(3).await?;
    /// for i in 0..3 {
    ///     cluster.member_mut(i).kill()?;
    /// }
    /// cluster.restart_all().await?;
    /// # Ok(()) }
    /// ```
    pub async fn restart_all(&mut self) -> io::Result<()> {
        for m in &mut self.members {
            m.stop().await?;
        }
        for m in &mut self.members {
            m.respawn()?;
        }
        let timeout = self
            .members
            .iter()
            .map(Etcd::start_timeout)
            .max()
            .unwrap_or_default();
        wait_ready(&mut self.members, Instant::now() + timeout)
            .await
            .map_err(|f| f.error)
    }
}
