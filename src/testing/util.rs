//! Small helpers shared by the harness: free ports, unique names, temp dirs.

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Ports this process already handed out: never hand one out twice, so two
/// tests of the same process cannot race for the same port. Other processes
/// can still take a port between "bind :0, release" and etcd's own bind; the
/// callers retry with fresh ports when that happens.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A process-unique, hard to guess token: `<pid>-<counter>-<random hex>`.
pub(crate) fn unique_id() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(n);
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{}-{}-{:016x}", std::process::id(), n, h.finish())
}

/// `n` distinct free loopback ports, found by binding `127.0.0.1:0` and
/// releasing the sockets.
pub(crate) fn free_loopback_addrs(n: usize) -> io::Result<Vec<SocketAddr>> {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed = handed.get_or_insert_with(HashSet::new);
    let mut held = Vec::with_capacity(n);
    let mut addrs = Vec::with_capacity(n);
    // Bounded: the kernel's ephemeral range is far larger than what a test
    // process hands out, but never loop forever.
    for _ in 0..n.saturating_mul(50).max(50) {
        if addrs.len() == n {
            break;
        }
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = l.local_addr()?;
        // Keep every listener open until all are chosen so the kernel gives
        // distinct ports.
        held.push(l);
        if handed.insert(addr.port()) {
            addrs.push(addr);
        }
    }
    if addrs.len() < n {
        return Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            "could not find enough free loopback ports",
        ));
    }
    Ok(addrs)
}

/// A fresh private (0700) directory under the system temp dir, named
/// `<prefix>-<pid>-<counter>-<random>`.
pub(crate) fn private_temp_dir(prefix: &str) -> io::Result<PathBuf> {
    let base = std::env::temp_dir();
    let mut last = None;
    for _ in 0..16 {
        let dir = base.join(format!("{prefix}-{}", unique_id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("creating temp dir {}: {e}", dir.display()),
                ));
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("could not create a unique temp dir")))
}

/// Removes a directory tree, ignoring "not found".
pub(crate) fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "etcdutil::testing: could not remove temp dir");
    }
}
