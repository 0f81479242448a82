//! `local`: this machine, read through `sysinfo` (from /proc and statvfs on
//! Linux).
//!
//! | metric | meaning |
//! |---|---|
//! | `cpu_usage` | percent of all cores busy since the previous poll |
//! | `memory_usage` | percent of memory not available to new programs |
//! | `swap_usage` | percent of swap used (only when there is swap) |
//! | `load1`, `load5`, `load15` | load averages |
//! | `disk_used_percent{mount}` | percent of each filesystem's space not available |

use std::collections::BTreeSet;
use std::time::Instant;

use sysinfo::{Disks, MINIMUM_CPU_UPDATE_INTERVAL, System};

use super::{PollError, Reading, Source};
use crate::runtime::{Label, Metric};

/// Reads this machine.
pub struct LocalSource {
    system: System,
    disks: Disks,
    last_cpu_refresh: Instant,
}

impl LocalSource {
    /// Takes the first CPU reading, which later polls are measured against.
    pub fn new() -> Self {
        let mut system = System::new();
        system.refresh_cpu_usage();
        LocalSource {
            system,
            disks: Disks::new_with_refreshed_list(),
            last_cpu_refresh: Instant::now(),
        }
    }
}

impl Default for LocalSource {
    fn default() -> Self {
        Self::new()
    }
}

fn percent(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 * 100.0 / total as f64
    }
}

fn metric(name: &str, value: f64) -> Metric {
    Metric {
        name: name.to_string(),
        value,
        labels: Vec::new(),
    }
}

impl Source for LocalSource {
    async fn poll(&mut self) -> Result<Reading, PollError> {
        // CPU usage is a difference between two readings; too close together
        // and it means nothing.
        let since = self.last_cpu_refresh.elapsed();
        if since < MINIMUM_CPU_UPDATE_INTERVAL {
            tokio::time::sleep(MINIMUM_CPU_UPDATE_INTERVAL - since).await;
        }
        self.system.refresh_cpu_usage();
        self.last_cpu_refresh = Instant::now();
        self.system.refresh_memory();
        self.disks.refresh(true);

        let mut metrics = vec![metric(
            "cpu_usage",
            f64::from(self.system.global_cpu_usage()),
        )];
        let total = self.system.total_memory();
        let available = self.system.available_memory();
        if total == 0 {
            return Err("cannot read this machine's memory size".into());
        }
        metrics.push(metric(
            "memory_usage",
            percent(total - available.min(total), total),
        ));
        let swap = self.system.total_swap();
        if swap > 0 {
            metrics.push(metric("swap_usage", percent(self.system.used_swap(), swap)));
        }
        let load = System::load_average();
        metrics.push(metric("load1", load.one));
        metrics.push(metric("load5", load.five));
        metrics.push(metric("load15", load.fifteen));

        let mut mounts = BTreeSet::new();
        for disk in self.disks.list() {
            let total = disk.total_space();
            let mount = disk.mount_point().to_string_lossy().into_owned();
            if total == 0 || !mounts.insert(mount.clone()) {
                continue;
            }
            let used = total - disk.available_space().min(total);
            metrics.push(Metric {
                name: "disk_used_percent".into(),
                value: percent(used, total),
                labels: vec![Label {
                    name: "mount".into(),
                    value: mount,
                }],
            });
        }
        Ok(metrics.into())
    }
}
